"""The ``headwater`` command.

Exit status: 0 when everything asked for succeeded; 1 when a download failed
or was cancelled; 2 for bad usage (an unknown source, a bad option); 130
when interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import attrs
import click

from headwater import __version__
from headwater.engine import Engine
from headwater.errors import HeadwaterError
from headwater.plugin_new import plugin
from headwater.records import State
from headwater.sources import SourceInfo

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _info_json(info: SourceInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "aliases": list(info.aliases),
        "policy": attrs.asdict(info.policy) if info.policy else None,
        "distribution": info.distribution,
        "version": info.version,
        "status": info.status,
        "error": info.error,
    }


@click.group()
@click.version_option(__version__, prog_name="headwater")
def main() -> None:
    """headwater: download from any source through one engine."""


main.add_command(plugin)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sources(as_json: bool) -> None:
    """List installed sources, their aliases and policies, and broken ones with their error."""
    engine = Engine(dest_dir=Path.cwd())
    try:
        infos = engine.sources(include_broken=True)
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps([_info_json(i) for i in infos], indent=2))
        return
    for info in infos:
        dist = f"{info.distribution} {info.version}" if info.distribution else "-"
        if info.error is None:
            assert info.policy is not None
            policy = f"concurrency={info.policy.concurrency} delay={info.policy.delay:g}"
            aliases = ",".join(info.aliases) or "-"
            click.echo(f"{info.name:<16} ok      {aliases:<20} {policy:<28} {dist}")
        else:
            click.echo(f"{info.name:<16} broken  {dist}: {info.error}")


@main.command()
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--dest",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder the files land in.",
)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def get(source: str, targets: tuple[str, ...], dest: Path, timeout: float | None) -> None:
    """Download TARGETS from SOURCE (a name or alias), wait, and print where each file went."""
    with Engine(dest_dir=dest) as engine:
        try:
            ids = [engine.submit(source, t) for t in targets]
        except HeadwaterError as exc:
            raise click.UsageError(str(exc)) from exc
        try:
            records = engine.wait(ids, timeout=timeout)
        except TimeoutError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted; cancelling", err=True)
            sys.exit(EXIT_INTERRUPTED)
    failed = 0
    for record in records:
        if record.state is State.COMPLETED:
            click.echo(f"{record.target} -> {record.file_path}")
        else:
            failed += 1
            click.echo(f"{record.target}: {record.state.value}: {record.error or ''}".rstrip(": "), err=True)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)
