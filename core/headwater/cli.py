"""The ``headwater`` command.

Results go to stdout, errors and progress bars to stderr. Exit status:

- 0: everything asked for succeeded;
- 1: a download failed, was cancelled or timed out (or ``cancel`` found one
  already ended);
- 2: bad usage or configuration (an unknown source or id, a bad option, a
  destination folder that cannot be created, a bad ``headwater.toml`` or secrets
  store, a source that needs configuration);
- 3: the journal cannot be used (it is damaged, another program's, or from a
  newer headwater), or ``cancel`` named a download another running headwater
  process owns, or the server running on the journal cannot be reached;
- 130: interrupted (Ctrl-C), 143: terminated (SIGTERM); either way the
  unfinished downloads stay in the journal for ``resume``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeVar

import attrs
import click

from headwater import __version__
from headwater._codec import plain
from headwater._config import ClusterConfig, Config, load_config, needs_cluster_extra
from headwater._errors import (
    ConfigError,
    DownloadOwnedError,
    HeadwaterError,
    ServeError,
    ServerError,
    StoreError,
    UnknownDownloadError,
    UnknownSourceError,
)
from headwater._files import EXISTING_CHOICES, Existing
from headwater._keystore import KeyStore, default_keystore
from headwater._paths import default_journal
from headwater._reader import JournalReader, Plain, PlainReader
from headwater._records import Record, State
from headwater._serve._state import ServerState, ensure_token, read_token, running_server, token_path
from headwater._status import (
    CLUSTER_RECORDS,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_JOURNAL,
    EXIT_OK,
    EXIT_USAGE,
    JOURNAL,
    STATUS_LIMIT,
    Matcher,
    Refused,
    configure_logging,
    ignore_interrupts,
    interrupted,
    listing,
    pick,
    raise_terminated,
    show,
)

# What only some commands need is imported inside them, so that a command pays for its own
# imports alone: `status` reads the journal without the engine, pluggy, httpx or rich (see
# tests/test_cli_imports.py).
if TYPE_CHECKING:
    from rich.console import Console

    from headwater._engine import Engine
    from headwater._settings import SettingInfo, SettingsLayers
    from headwater._sources import PolicyOverride, SourceInfo, SourceRegistry
    from headwater.client import Client

_T = TypeVar("_T")

#: How long ``get`` and ``resume`` give running downloads to stop after Ctrl-C or SIGTERM.
INTERRUPT_GRACE = 1.5


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within it, SIGTERM raises :class:`Terminated` in the main thread (elsewhere it changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Commands(click.Group):
    """The ``headwater`` group: a command that a Ctrl-C or SIGTERM stops ends with one line.

    While a command runs, SIGTERM raises :class:`Terminated`. A Ctrl-C or
    SIGTERM that the command does not handle itself (``get`` and ``resume``
    say what they stopped) ends it with ``Error: interrupted: ...`` (exit
    status 130) or ``Error: terminated: ...`` (143) instead of click's
    "Aborted!" (exit status 1). A journal that fails a command where the
    command does not say so itself ends it with the StoreError's message
    and exit status 3, not a traceback; a :class:`headwater._status.Refused`
    (what the listing shared with the quick ``status`` raises) ends it
    with its message and exit status.

    ``headwater plugin`` (the template's renderer, which needs the plugin
    contract and pluggy) is imported only when it is asked for or listed.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "plugin"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "plugin":
            from headwater._plugin_new import plugin

            return plugin
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        with _sigterm_interrupts():
            try:
                return super().invoke(ctx)
            except StoreError as exc:
                raise Failure(str(exc), EXIT_JOURNAL) from exc
            except Refused as exc:
                raise Failure(exc.message, exc.exit_code) from exc
            except KeyboardInterrupt as exc:
                ignore_interrupts()
                command = f"`headwater {ctx.invoked_subcommand}`" if ctx.invoked_subcommand else "headwater"
                raise _interrupted(exc, f"{command} stopped before it finished") from None


def _interrupted(exc: KeyboardInterrupt, what: str) -> Failure:
    """The error to exit with after Ctrl-C (130) or SIGTERM (143): ``interrupted: what``."""
    refused = interrupted(exc, what)
    return Failure(refused.message, refused.exit_code)


class Failure(click.ClickException):
    """An error to print on stderr (``Error: ...``) and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc, unused-ignore]  # click reads it per instance


class SourceArguments(TypedDict):
    """The configuration's arguments of :class:`~headwater.Engine` and :func:`.load_sources`."""

    policies: Mapping[str, PolicyOverride]
    load: Collection[str] | None
    block: Collection[str]
    settings_layers: SettingsLayers


@attrs.define
class App:
    """What every subcommand shares: the configuration (read on first use) and the journal."""

    config_path: Path | None
    journal: Path
    keystore: KeyStore = attrs.field(factory=KeyStore)
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise Failure(str(exc), EXIT_USAGE) from exc
        return self._config

    def source_arguments(self) -> SourceArguments:
        """How the configuration says to load the sources (policies, which ones, settings layers)."""
        from headwater._settings import SettingsLayers
        from headwater._sources import PolicyOverride

        config = self.config
        return SourceArguments(
            policies={name: PolicyOverride(changes) for name, changes in config.policies.items()},
            load=config.load,
            block=config.block,
            settings_layers=SettingsLayers(
                keystore=self.keystore, config=config.settings, config_path=config.path
            ),
        )

    def engine(
        self,
        dest: Path | None,
        *,
        journaled: bool = True,
        clustered: bool = False,
        settings: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Engine:
        """An engine over the configured sources; ``journaled``: with a journal session (nothing resumed).

        ``clustered``: on the cluster ``[cluster]`` names, if it names one,
        instead of the journal (``journaled`` is then not used). ``settings``
        is given to the engine as its highest layer of settings, above the
        environment, the secrets store and the configuration.
        """
        from headwater._engine import Engine
        from headwater._journal import SQLiteStore

        config = self.config
        cluster = config.cluster if clustered else None
        try:
            store = SQLiteStore(self.journal) if journaled and cluster is None else None
        except StoreError as exc:
            raise Failure(str(exc), EXIT_JOURNAL) from exc
        try:
            with contextlib.redirect_stdout(sys.stderr):  # what plugins print while loading
                return Engine(
                    _made_folder(dest or config.destination or Path.cwd()),
                    store=store,
                    hold=cluster is None,
                    settings=settings,
                    cluster=cluster,
                    **self.source_arguments(),
                )
        except ImportError as exc:  # the cluster extra is missing: the message says so
            raise Failure(str(exc), EXIT_USAGE) from exc
        except UnknownSourceError as exc:
            where = f" (config file {config.path})" if config.path else ""
            raise Failure(f"{exc}{where}", EXIT_USAGE) from exc
        except StoreError as exc:
            raise Failure(str(exc), EXIT_JOURNAL) from exc
        except (HeadwaterError, TypeError) as exc:
            on = "" if cluster is None else f"cannot use the cluster ({cluster.shown()}): "
            raise Failure(f"{on}{exc}", EXIT_USAGE) from exc


def _made_folder(folder: Path) -> Path:
    """``folder`` (``~`` expanded), created if missing; Failure (exit 2) naming it and why if it cannot be."""
    folder = folder.expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        for path in (folder, *folder.parents):  # the nearest that exists: a file in the way?
            if path.exists():
                if not path.is_dir():
                    why = f"{path} is a file, not a folder"
                break
        raise Failure(f"cannot create the destination folder {folder}: {why}", EXIT_USAGE) from None
    return folder


def _seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse a number of seconds that is not finite and above 0 (``-1``, ``0``, ``nan``, ``inf``)."""
    if value is not None and not 0 < value < math.inf:
        raise click.BadParameter(f"must be a finite number of seconds above 0, got {value:g}")
    return value


def _info_json(info: SourceInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "aliases": list(info.aliases),
        "policy": attrs.asdict(info.policy) if info.policy else None,
        "distribution": info.distribution,
        "version": info.version,
        "status": info.status,
        "error": info.error,
        "rule": info.rule,
        "settings": [{**attrs.asdict(s), "places": list(s.places)} for s in info.settings],
        "problems": [{"field": p.field, "problem": p.message} for p in info.problems],
    }


def _setting_line(setting: SettingInfo) -> str:
    """``token (str, secret, required): the API token; set in environment variable HEADWATER_X_TOKEN``."""
    traits = [setting.type, *(["secret"] if setting.secret else [])]
    traits.append("required" if setting.required else f"default {json.dumps(setting.default)}")
    line = f"{setting.name} ({', '.join(traits)})" + (f": {setting.help}" if setting.help else "")
    if setting.origin is None:
        return line + "; not set"
    if setting.secret:
        return line + f"; set in {setting.origin}"
    return line + f"; {json.dumps(setting.value)} from {setting.origin}"


def _print_version(verbose: int) -> None:
    click.echo(f"headwater {__version__}")
    if not verbose:
        return
    from headwater._discovery import discover

    found = discover()
    click.echo("installed source plugins:" if found else "installed source plugins: none")
    for cand in found:
        dist = f"{cand.distribution}-{cand.version}" if cand.distribution else "(no distribution)"
        line = f"  {cand.name}: {dist}"
        click.echo(line + (f"  [broken: {cand.error}]" if cand.error else ""))


@click.group(
    cls=_Commands, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option("--version", is_flag=True, help="Print the version and exit; with -v also the source plugins.")
@click.option(
    "-v", "--verbose", count=True, help="Log more to stderr (-vv: debug); with --version, list plugins."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read this headwater.toml instead of the one in the user config folder.",
)
@click.pass_context
def main(ctx: click.Context, version: bool, verbose: int, config_path: Path | None) -> None:
    """headwater: download from any source through one engine."""
    if version:
        _print_version(verbose)
        ctx.exit(EXIT_OK)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(EXIT_OK)
    configure_logging(verbose)
    ctx.obj = App(config_path, default_journal(), KeyStore(default_keystore()))


def _app() -> App:
    app = click.get_current_context().find_object(App)
    return app if app is not None else App(None, default_journal())


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_dest_option = click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder the files land in (default: the config's destination, else the current folder).",
)
_quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars: one plain line per download."
)
_timeout_option = click.option(
    "--timeout", type=float, default=None, callback=_seconds, help="Give up after this many seconds."
)


@main.command()
@_json_option
def sources(as_json: bool) -> None:
    """List installed sources, their aliases, policies and settings, and broken ones with their error.

    A source that needs configuration is listed with each setting that is
    missing or invalid and where it can be set. Secret values are never shown.
    """
    engine = _app().engine(Path.cwd(), journaled=False)
    try:
        infos = engine.sources(include_broken=True)
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps([_info_json(i) for i in infos], indent=2))
        return
    alias_width = max([20, *(len(",".join(i.aliases)) for i in infos)])
    for info in infos:
        dist = f"{info.distribution} {info.version}" if info.distribution else "-"
        if info.error is not None:
            click.echo(f"{info.name:<16} broken  {dist}: {info.error}")
            continue
        if info.problems:
            click.echo(f"{info.name:<16} needs configuration  {dist}:")
            for problem in info.problems:
                click.echo(f"    {problem}")
        else:
            assert info.policy is not None
            policy = f"concurrency={info.policy.concurrency} delay={info.policy.delay:g}"
            aliases = ",".join(info.aliases) or "-"
            click.echo(f"{info.name:<16} ok      {aliases:<{alias_width}} {policy:<28} {dist}")
        for setting in info.settings:
            click.echo(f"    setting {_setting_line(setting)}")


@main.command()
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--via",
    default="",
    metavar="A,B,...",
    help="Fallback sources, tried in order when SOURCE fails or cannot take a target.",
)
@_dest_option
@click.option(
    "--existing",
    type=click.Choice(EXISTING_CHOICES),
    default=None,
    help="When a file already has the name: land as 'name (1).ext' (rename), keep it and fetch "
    "nothing (skip), or replace it (overwrite). Default: the source's policy (rename).",
)
@_timeout_option
@_quiet_option
@_json_option
def get(
    source: str,
    targets: tuple[str, ...],
    via: str,
    dest: Path | None,
    existing: Existing | None,
    timeout: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Download TARGETS from SOURCE (a name or alias), wait, and print where each file went.

    Ctrl-C (or SIGTERM) stops the running downloads without cancelling them:
    they and the queued ones stay in the journal, partial files kept, for
    `headwater resume`.
    """
    chain = [source, *(name.strip() for name in via.split(",") if name.strip())]
    try:
        through = _server()
    except KeyboardInterrupt as exc:
        ignore_interrupts()
        raise _interrupted(exc, _nothing_queued(len(targets))) from None
    if through is not None:
        _get_through(*through, chain, targets, dest, existing, timeout, quiet, as_json)
        return
    if _app().config.cluster is not None:
        _get_in_cluster(chain, targets, dest, existing, timeout, as_json)
        return
    with _journaled_engine(dest) as engine:
        ids: list[str] = []
        try:
            for target in targets:
                ids.append(engine.submit(chain if len(chain) > 1 else source, target, existing=existing))
            engine.flush()
        except StoreError as exc:
            raise Failure(str(exc), EXIT_JOURNAL) from exc
        except (HeadwaterError, ValueError) as exc:  # a target refused: say what was queued before it
            message = f"{exc}; before it, {_queued_so_far(engine, ids, len(targets))}" if ids else str(exc)
            raise Failure(message, EXIT_USAGE) from exc
        except KeyboardInterrupt as exc:
            ignore_interrupts()
            if not ids:
                raise _interrupted(exc, _nothing_queued(len(targets))) from None
            raise _interrupted(
                exc, f"stopped while queueing: {_queued_so_far(engine, ids, len(targets))}"
            ) from None
        records = _watch(engine, ids, quiet=quiet, as_json=as_json, timeout=timeout)
    _finish(records, as_json)


def _nothing_queued(given: int) -> str:
    return f"stopped before any of the {given} download(s) was queued; nothing is in the journal"


def _queued_so_far(engine: Engine, ids: Sequence[str], given: int) -> str:
    """What a ``get`` of ``given`` targets that stops after queueing ``ids`` leaves; closes ``engine``.

    The downloads already queued (some may be running) are stopped, not
    cancelled, so they stay in the journal, as the message says.
    """
    engine.close(timeout=INTERRUPT_GRACE, interrupt=True)
    unfinished = sum(1 for i in ids if not engine.get(i).state.terminal)
    return (
        f"{len(ids)} of {given} download(s) queued, {unfinished} of them unfinished, which stay in the "
        f"journal (run `headwater resume` to continue them); the other {given - len(ids)} were not queued"
    )


@main.command()
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for downloads whose record names none (journals of older versions); "
    "every other download lands where its `get` sent it.",
)
@_timeout_option
@_quiet_option
@_json_option
def resume(dest: Path | None, timeout: float | None, quiet: bool, as_json: bool) -> None:
    """Run the downloads headwater processes that have ended left unfinished in the journal.

    Those left queued, and those that were running when their process was
    interrupted or died; each lands in the folder its `get` sent it to.
    Downloads of headwater processes still running are left to them.
    With a [cluster] in headwater.toml it stops with exit status 2: the
    cluster's scheduler resumes its downloads by itself.
    """
    through = _server()
    if through is not None:
        _resume_through(*through, timeout, quiet, as_json)
        return
    cluster = _app().config.cluster
    if cluster is not None:
        raise Failure(
            f"nothing for `headwater resume` to do on the cluster ({cluster.shown()}): its scheduler "
            "runs every unfinished download, one whose worker died included, while a `headwater worker` "
            "runs (`headwater status` follows them)",
            EXIT_USAGE,
        )
    with _journaled_engine(dest) as engine:
        ids = engine.start_held()
        if not ids:
            if as_json:
                click.echo("[]")
            else:
                click.echo("nothing to resume", err=True)
            return
        records = _watch(engine, ids, quiet=quiet, as_json=as_json, timeout=timeout)
    _finish(records, as_json)


@contextmanager
def _journaled_engine(dest: Path | None) -> Iterator[Engine]:
    """An engine on the journal that takes nothing over by itself (``start_held`` does).

    It is closed with ``interrupt``: nothing is ever cancelled by stopping,
    and a Ctrl-C or SIGTERM (see :class:`_Commands`) that the body or
    :func:`_watch` did not handle exits with 130 or 143, as does one while
    the engine opens (saying that nothing was queued).
    """
    try:
        engine = _app().engine(dest)
    except KeyboardInterrupt as exc:
        ignore_interrupts()
        raise _interrupted(
            exc, "stopped while opening the journal and loading the sources; nothing was queued"
        ) from None
    try:
        yield engine
    except KeyboardInterrupt as exc:
        ignore_interrupts()
        engine.close(timeout=INTERRUPT_GRACE, interrupt=True)
        raise _interrupted(exc, "unfinished downloads stay in the journal for `headwater resume`") from None
    finally:
        engine.close(interrupt=True)


def _watch(
    engine: Engine, ids: list[str], *, quiet: bool, as_json: bool, timeout: float | None
) -> list[Record]:
    """Follow ``ids`` to their end; on Ctrl-C, SIGTERM or timeout, stop them (nothing cancelled) and exit."""
    from headwater._display import follow

    console, report = _reporter(quiet=quiet, as_json=as_json)
    try:
        records = follow(engine, ids, report, console=console, timeout=timeout)
    except (KeyboardInterrupt, TimeoutError) as exc:
        ignore_interrupts()
        running = sum(1 for i in ids if engine.get(i).state is State.RUNNING)
        engine.close(timeout=INTERRUPT_GRACE, interrupt=True)
        unfinished = sum(1 for i in ids if not engine.get(i).state.terminal)
        what = f"stopped {running} running download(s)"
        if unfinished:
            what += f"; {unfinished} unfinished stay in the journal: run `headwater resume` to continue them"
        else:
            what += f"; all {len(ids)} had ended (`headwater status` shows how)"
        if isinstance(exc, KeyboardInterrupt):
            raise _interrupted(exc, what) from None
        raise Failure(f"{exc}: {what}", EXIT_FAILED) from None
    if console is not None:
        for record in records:
            _result_line(record)
    return records


def _reporter(*, quiet: bool, as_json: bool) -> tuple[Console | None, Callable[[Record], None]]:
    """The console to draw bars on (None: none), and what to print as each download ends."""
    from rich.console import Console

    err = Console(stderr=True)
    console = err if err.is_terminal and not quiet and not as_json else None

    def report(record: Record) -> None:
        if as_json:
            return
        if console is not None:
            mark = "[green]done[/]" if record.state is State.COMPLETED else f"[red]{record.state.value}[/]"
            console.print(f"{mark} {record.name}", highlight=False)
        else:
            _result_line(record)

    return console, report


def _result_line(record: Record) -> None:
    if record.state is State.COMPLETED:
        kept = " (already there, not downloaded)" if record.skipped else ""
        click.echo(f"{record.name} -> {record.file_path}{kept}")
    else:
        why = _why_not_completed(record)
        click.echo(f"{record.name}: {record.state.value}" + (f": {why}" if why else ""), err=True)


def _why_not_completed(record: Record) -> str | None:
    """The error of ``record``; for a failed fallback chain, each source's reason (``source: error; ...``)."""
    if record.state is State.FAILED and len(record.tried) > 1:
        return "; ".join(f"{tried.source}: {tried.error}" for tried in record.tried)
    return record.error


def _finish(records: Sequence[Record], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([plain(r) for r in records], indent=2))
    failed = sum(1 for r in records if r.state is not State.COMPLETED)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


@main.command()
@click.argument("ids", nargs=-1)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in State]),
    help="Only downloads in this state (repeatable).",
)
@click.option(
    "--source", "sources", multiple=True, help="Only downloads on this source, by its name (repeatable)."
)
@click.option(
    "--before",
    metavar="ID",
    help="Only downloads made before this one (an id, or its start or end): the next, older page.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help=f"List at most this many downloads, latest first (default {STATUS_LIMIT}).",
)
@click.option("--all", "show_all", is_flag=True, help="List every download, latest first.")
@_json_option
def status(
    ids: tuple[str, ...],
    states: tuple[str, ...],
    sources: tuple[str, ...],
    before: str | None,
    limit: int | None,
    show_all: bool,
    as_json: bool,
) -> None:
    """Show downloads in the journal, latest first: the latest 100, or those IDS name.

    With a [cluster] in headwater.toml, the cluster's records instead.
    IDS: ids, or unique starts or ends of ids. Works while another headwater
    process is running downloads. Reads only the downloads it shows, so it
    is as quick with a million in the journal as with ten.
    """
    if ids and (before or limit or show_all):
        raise click.UsageError("IDS name the downloads to show: --before, --limit and --all page the list")
    if show_all and limit:
        raise click.UsageError("--all lists every download: leave out --limit")
    through = _server()
    cluster = _cluster_records() if through is None else None
    reader: _Plained | PlainReader
    if cluster is not None:
        reader = _Plained(cluster, cluster)
    elif through is None:
        reader = PlainReader(_app().journal)
    else:
        reader = _Plained(_ServerPages(through[0]), _Named(through[0]))
    try:
        where = JOURNAL if cluster is None else CLUSTER_RECORDS
        listing(reader, reader, ids, states, sources, before, limit, show_all, as_json, where)
    finally:
        if cluster is not None:
            cluster.close()


class _Plained:
    """A running server's or a cluster's records as :func:`headwater._status.listing` reads them: plain."""

    def __init__(self, pages: _ServerPages | _ClusterRecords, named: Matcher[Record]) -> None:
        self._pages = pages
        self._named = named

    def match(self, key: str) -> tuple[int, Plain | None]:
        count, record = self._named.match(key)
        return count, None if record is None else _plain(record)

    def records(
        self,
        *,
        states: Collection[str] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Plain]:
        wanted = None if states is None else {State(s) for s in states}
        found = self._pages.records(states=wanted, sources=sources, before=before, limit=limit)
        return map(_plain, found)


def _plain(record: Record) -> Plain:
    """``record`` as its plain JSON values (a JSON object)."""
    values = plain(record)
    assert isinstance(values, dict)
    return values


@main.command()
@click.argument("ids", nargs=-1, required=True)
@_json_option
def cancel(ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel unfinished downloads in the journal (IDS: ids, or unique starts or ends of ids).

    Downloads that headwater processes which have ended (interrupted,
    killed, crashed) left queued or running are cancelled here. One that a
    headwater process still running owns is refused, naming the process
    (exit status 3): stop it (Ctrl-C keeps its downloads resumable), then
    cancel. Exit status 1 if one had already ended. With a [cluster] in
    headwater.toml, the cluster's downloads, wherever they run.
    """
    through = _server()
    if through is not None:
        _cancel_through(through[0], ids, as_json)
        return
    cluster = _cluster_records()
    if cluster is not None:
        _cancel_in_cluster(cluster, ids, as_json)
        return
    reader = JournalReader(_app().journal)
    try:
        picked = pick(reader, ids)
    except StoreError as exc:
        raise Failure(str(exc), EXIT_JOURNAL) from exc
    results: list[tuple[str, bool, str | None]] = []  # id, cancelled by this call, why it was refused
    with _journaled_engine(None) as engine:
        for record in picked:
            try:
                results.append((record.id, engine.cancel(record.id), None))
            except (DownloadOwnedError, UnknownDownloadError) as exc:
                results.append((record.id, False, str(exc)))
            except StoreError as exc:
                raise Failure(str(exc), EXIT_JOURNAL) from exc
    try:  # as journaled, now that the engine is closed
        final = {i: r for i, _, _ in results if (r := reader.get(i)) is not None}
    except StoreError as exc:
        raise Failure(str(exc), EXIT_JOURNAL) from exc
    if as_json:
        click.echo(json.dumps([plain(final[i]) for i, _, _ in results if i in final], indent=2))
    for download_id, cancelled, refused in results:
        if refused is not None:
            click.echo(f"not cancelled: {refused}", err=True)
        elif not as_json:
            state = "cancelled" if cancelled else f"already {final[download_id].state.value}"
            click.echo(f"{download_id}: {state}")
    if any(refused for _, _, refused in results):
        sys.exit(EXIT_JOURNAL)
    sys.exit(EXIT_OK if all(cancelled for _, cancelled, _ in results) else EXIT_FAILED)


@main.command()
@_json_option
def clean(as_json: bool) -> None:
    """Remove ended downloads (completed, failed, cancelled) from the journal; files stay.

    With a [cluster] in headwater.toml, from the cluster's records instead.
    """
    through = _server()
    if through is not None:
        removed: Iterable[Record] = _call_server(through[0].clear)
        _cleaned(removed, as_json, JOURNAL)
        return
    app = _app()
    if app.config.cluster is not None:
        with app.engine(None, clustered=True) as engine:
            _cleaned(_remove_ended(engine), as_json, CLUSTER_RECORDS)
        return
    with _journaled_engine(None) as engine:
        _cleaned(_remove_ended(engine), as_json, JOURNAL)


def _remove_ended(engine: Engine) -> Iterator[Record]:
    """Remove the ended downloads, a page of a thousand at a time, latest first; yield each removed."""
    ended = [s for s in State if s.terminal]
    after: tuple[float, str] | None = None
    while page := engine.page(states=ended, after=after, limit=1000):
        for record in page:
            yield engine.remove(record.id)
        after = (page[-1].created_at, page[-1].id)


def _cleaned(removed: Iterable[Record], as_json: bool, where: str) -> None:
    """Print the records ``removed`` (from ``where``) as they come (``--json``: as an array), or how many."""
    if as_json:
        show(map(_plain, removed), as_json=True)
        return
    count = sum(1 for _ in removed)
    click.echo(f"removed {count} ended download(s) from {where}")


@main.group()
def keys() -> None:
    """Keep source settings (tokens, passwords) in the secrets store instead of headwater.toml.

    The store is secrets.json in HEADWATER_HOME or the user data folder,
    readable by you alone (mode 0600).
    """


def _source_info(source: str, settings: Mapping[str, Mapping[str, object]] | None = None) -> SourceInfo:
    """The loaded source ``source`` names (a name or alias), with ``settings`` as its highest layer."""
    engine = _app().engine(Path.cwd(), journaled=False, settings=settings)
    try:
        infos = engine.sources(include_broken=True)
    finally:
        engine.close()
    for info in infos:
        if source == info.name or source in info.aliases:
            if info.error is not None:
                raise Failure(f"source {info.name!r} is broken: {info.error}", EXIT_USAGE)
            return info
    known = [i.name for i in infos if i.error is None]
    raise Failure(str(UnknownSourceError(source, known, [i.name for i in infos if i.error])), EXIT_USAGE)


def _read_secret(prompt: str) -> str:
    """A value from the terminal without echo, or all of stdin (less one line end) when it is not one."""
    if sys.stdin.isatty():
        value: str = click.prompt(prompt, hide_input=True, prompt_suffix=": ")
    else:
        value = sys.stdin.read()
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value:
        raise Failure("an empty value; nothing stored", EXIT_USAGE)
    return value


@keys.command("set")
@click.argument("source")
@click.argument("field")
def keys_set(source: str, field: str) -> None:
    """Store setting FIELD of SOURCE (a name or alias); the value is read without echo.

    On a terminal it is prompted for; otherwise it is all of standard input
    (less a final line end). A value the setting cannot take is refused
    (exit status 2) and nothing is stored.
    """
    info = _source_info(source)
    declared = [s.name for s in info.settings]
    if field not in declared:
        listing = ", ".join(declared) if declared else "it declares none"
        raise Failure(f"source {info.name!r} has no setting {field!r}; its settings: {listing}", EXIT_USAGE)
    value = _read_secret(f"{info.name} {field}")
    checked = _source_info(info.name, {info.name: {field: value}})
    refused = [str(p) for p in checked.problems if p.field == field]
    if refused:
        raise Failure(f"not stored: {'; '.join(refused)}", EXIT_USAGE)
    try:
        _app().keystore.set(info.name, field, value)
    except ConfigError as exc:
        raise Failure(str(exc), EXIT_USAGE) from exc
    click.echo(f"stored {field} of {info.name} in {_app().keystore.path}", err=True)


@keys.command("list")
@_json_option
def keys_list(as_json: bool) -> None:
    """List the settings the secrets store holds a value for (never the values)."""
    try:
        names = _app().keystore.names()
    except ConfigError as exc:
        raise Failure(str(exc), EXIT_USAGE) from exc
    if as_json:
        click.echo(json.dumps([{"source": s, "field": f} for s, f in names], indent=2))
        return
    if not names:
        click.echo("the secrets store is empty", err=True)
    for source, field in names:
        click.echo(f"{source} {field}")


@keys.command("remove")
@click.argument("source")
@click.argument("field")
def keys_remove(source: str, field: str) -> None:
    """Forget the stored value of FIELD of SOURCE (the source's name, as `keys list` shows it)."""
    try:
        removed = _app().keystore.remove(source, field)
    except ConfigError as exc:
        raise Failure(str(exc), EXIT_USAGE) from exc
    if not removed:
        raise Failure(f"the secrets store holds no {field} of {source} (`headwater keys list`)", EXIT_USAGE)
    click.echo(f"removed {field} of {source}", err=True)


@main.command()
@click.option(
    "--threads",
    type=click.IntRange(1, 512),
    default=8,
    show_default=True,
    help="Downloads this worker runs at once.",
)
@_dest_option
def worker(threads: int, dest: Path | None) -> None:
    """Run the cluster's downloads (``[cluster]`` in headwater.toml) in this process until Ctrl-C or SIGTERM.

    Dramatiq's worker takes the downloads the cluster's scheduler sends; the
    same sources must be installed on every worker host, and the files land
    in the folder each download names (shared by every host). Stopping puts
    the downloads it runs back in the queue for another worker.
    """
    app = _app()
    config = app.config
    if config.cluster is None:
        where = config.path or "headwater.toml"
        raise Failure(f"`headwater worker` needs a [cluster] table (broker, postgres) in {where}", EXIT_USAGE)
    try:
        from headwater._cluster._work import WorkerProcess
    except ImportError as exc:
        raise Failure(needs_cluster_extra("headwater worker", exc), EXIT_USAGE) from exc
    folder = _made_folder(dest or config.destination or Path.cwd())
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what plugins print while loading
            running = WorkerProcess(config.cluster, folder, threads=threads, registry=_cluster_sources(app))
    except StoreError as exc:
        raise Failure(str(exc), EXIT_JOURNAL) from exc
    except (HeadwaterError, ValueError, OSError) as exc:
        raise Failure(f"cannot start the worker on {config.cluster.shown()}: {exc}", EXIT_USAGE) from exc
    except Exception as exc:  # redis-py's errors: the broker cannot be reached
        raise Failure(f"cannot start the worker on {config.cluster.shown()}: {exc}", EXIT_USAGE) from exc
    click.echo(
        f"headwater: worker {os.getpid()} on {config.cluster.shown()}, {threads} threads; "
        f"files land in {folder} unless a download names its folder",
        err=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ignore_interrupts()
    finally:
        running.stop()
    click.echo("headwater: worker stopped", err=True)


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; other than loopback only with a token configured (`headwater token`).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on (0: any free one).",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests for this host name (a reverse proxy's, the machine's own); repeatable.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let pages from this origin (https://host[:port]) call the API; repeatable; never '*'.",
)
@_dest_option
def serve(
    host: str, port: int, allow_hosts: tuple[str, ...], cors_origins: tuple[str, ...], dest: Path | None
) -> None:
    """Run one engine on the journal and serve the API, the event stream and the web page.

    The journal's unfinished downloads start at once. While it runs, `get`,
    `status`, `cancel`, `resume` and `clean` in any shell go through it.
    With a [cluster] in headwater.toml, it serves the cluster's downloads
    instead (run by `headwater worker` processes). Ctrl-C (or SIGTERM) stops it.
    """
    try:
        from headwater._serve import run as serving
        from headwater._serve._security import Security, check_bind, check_cors_origins, host_allow_list
        from headwater._serve._state import remove_state, write_state
    except ImportError as exc:
        raise Failure(
            f"headwater serve needs the serve extra ({exc.name} is missing): pip install 'headwater[serve]'",
            EXIT_USAGE,
        ) from exc
    app = _app()
    journal = app.journal.resolve()
    other = running_server(journal)
    if other is not None:
        raise Failure(f"a server already runs on this journal: {other.url} (pid {other.pid})", EXIT_USAGE)
    tokens = token_path(journal)
    try:
        check_bind(host, read_token(tokens) is not None, str(tokens))
        origins = check_cors_origins(cors_origins)
        token = ensure_token(tokens)
        sock = serving.bind(host, port)
    except ServeError as exc:
        raise Failure(str(exc), EXIT_USAGE) from exc
    port = sock.getsockname()[1]
    security = Security(token, host_allow_list(host, port, allow_hosts), origins)
    engine = app.engine(dest, clustered=True)
    records = f"journal {journal}" if app.config.cluster is None else f"cluster: {app.config.cluster.shown()}"
    try:
        engine.start_held()  # first: the server's view subscribes, then reads every record
        asgi, live = serving.build(engine, security, app.config.policies)
        url = serving.url_of(sock)
        state = ServerState(url, os.getpid(), str(tokens), str(journal), str(engine.dest_dir))
        write_state(journal, state)
        click.echo(f"headwater: serving {url} ({records}; files land in {engine.dest_dir})", err=True)
        click.echo(f"headwater: log in with the token in {tokens} (`headwater token` prints it)", err=True)
        serving.serve_forever(asgi, live, sock)
    finally:
        remove_state(journal, os.getpid())
        engine.close()
        sock.close()
    click.echo("headwater: server stopped", err=True)


@main.command()
@click.option(
    "--new", is_flag=True, help="Replace the token (a running server keeps the old one until restarted)."
)
def token(new: bool) -> None:
    """Print the API token of `headwater serve`, making it first if there is none.

    It is kept beside the journal, readable by you alone (mode 0600).
    """
    try:
        click.echo(ensure_token(token_path(_app().journal), new=new))
    except ServeError as exc:
        raise Failure(str(exc), EXIT_USAGE) from exc


# -- through a running server ----------------------------------------------------------
#
# When `headwater serve` runs on this journal, these commands ask it instead of
# opening the journal themselves, so that one queue serves every shell.


def _server() -> tuple[Client, ServerState] | None:
    """A client of the server running on the journal (and its state), or None; says so on stderr."""
    state = running_server(_app().journal)
    if state is None:
        return None
    try:
        token = state.token()
    except ServeError as exc:
        raise Failure(str(exc), EXIT_JOURNAL) from exc
    click.echo(f"headwater: through the server at {state.url} (pid {state.pid})", err=True)
    from headwater.client import Client

    return Client(state.url, token), state


def _call_server(call: Callable[[], _T]) -> _T:
    """``call()``, its errors as Failures: 2 for what the server refused, 3 for no answer."""
    try:
        return call()
    except ServerError as exc:
        usage = exc.status is not None and 400 <= exc.status < 500
        raise Failure(str(exc), EXIT_USAGE if usage else EXIT_JOURNAL) from exc
    except UnknownDownloadError as exc:
        raise Failure(str(exc), EXIT_USAGE) from exc


def _get_through(
    client: Client,
    state: ServerState,
    chain: list[str],
    targets: tuple[str, ...],
    dest: Path | None,
    existing: Existing | None,
    timeout: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    if dest is not None and dest.expanduser().resolve() != Path(state.dest_dir):
        raise Failure(
            f"the server at {state.url} lands files in {state.dest_dir}; --dest cannot change that: "
            "leave --dest out, or stop the server",
            EXIT_USAGE,
        )
    source = chain if len(chain) > 1 else chain[0]
    ids = _call_server(lambda: client.submit_many(source, targets, existing=existing))
    _finish(_watch_through(client, state, ids, quiet=quiet, as_json=as_json, timeout=timeout), as_json)


def _resume_through(
    client: Client, state: ServerState, timeout: float | None, quiet: bool, as_json: bool
) -> None:
    ids = [r.id for r in _call_server(lambda: client.records(states=(State.QUEUED, State.RUNNING)))]
    if not ids:
        click.echo("[]" if as_json else "nothing to resume", err=not as_json)
        return
    click.echo(f"headwater: the server runs the unfinished downloads; following {len(ids)}", err=True)
    _finish(_watch_through(client, state, ids, quiet=quiet, as_json=as_json, timeout=timeout), as_json)


def _watch_through(
    client: Client, state: ServerState, ids: list[str], *, quiet: bool, as_json: bool, timeout: float | None
) -> list[Record]:
    """Follow the server's ``ids`` to their end; on Ctrl-C or timeout they go on in the server."""
    from headwater._display import follow
    from headwater.client import Watch

    console, report = _reporter(quiet=quiet, as_json=as_json)
    try:
        with _call_server(Watch(client, ids).start) as watch:
            records = follow(watch, ids, report, console=console, timeout=timeout)
    except (KeyboardInterrupt, TimeoutError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        why = "interrupted" if interrupted else str(exc)
        raise Failure(
            f"{why}: the downloads go on in the server at {state.url}; `headwater cancel ID` stops one",
            EXIT_INTERRUPTED if interrupted else EXIT_FAILED,
        ) from None
    except UnknownDownloadError as exc:
        raise Failure(f"{exc}: it was removed while this command followed it", EXIT_FAILED) from None
    except ServerError as exc:
        raise Failure(f"{exc}; the server's downloads are in its journal", EXIT_JOURNAL) from None
    if console is not None:
        for record in records:
            _result_line(record)
    return records


class _ClusterRecords:
    """The records of the cluster ``[cluster]`` names, as ``status`` and ``cancel`` read them."""

    def __init__(self, config: ClusterConfig) -> None:
        from headwater._cluster._pgstore import PostgresStore

        self.config = config
        self.store = PostgresStore(config.postgres, schema=config.schema)

    def match(self, key: str) -> tuple[int, Record | None]:
        return self.store.match(key)

    def records(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Record]:
        found = self.store.records(states=states, sources=sources, before=before)
        return found if limit is None else itertools.islice(found, limit)

    def close(self) -> None:
        self.store.close()


def _cluster_sources(app: App) -> SourceRegistry:
    """The sources a cluster's process loads: as an engine of the command line loads them."""
    from headwater._sources import load_sources

    return load_sources(**app.source_arguments())


def _get_in_cluster(
    chain: list[str],
    targets: tuple[str, ...],
    dest: Path | None,
    existing: Existing | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """``get`` on the cluster ``[cluster]`` names: queued there, waited for, each result printed.

    Ctrl-C, SIGTERM or the timeout stop the waiting, not the downloads: they
    go on in the cluster (`headwater status` follows them).
    """
    with _app().engine(dest, clustered=True) as engine:
        ids: list[str] = []
        try:
            for target in targets:
                ids.append(engine.submit(chain if len(chain) > 1 else chain[0], target, existing=existing))
            records = engine.wait(ids, timeout=timeout)
        except StoreError as exc:
            raise Failure(str(exc), EXIT_JOURNAL) from exc
        except (HeadwaterError, ValueError) as exc:  # a target refused
            queued = f"; before it, {len(ids)} of {len(targets)} were queued in the cluster" if ids else ""
            raise Failure(f"{exc}{queued}", EXIT_USAGE) from exc
        except (KeyboardInterrupt, TimeoutError) as exc:
            ignore_interrupts()
            what = f"{len(ids)} download(s) go on in the cluster (`headwater status` follows them)"
            if isinstance(exc, KeyboardInterrupt):
                raise _interrupted(exc, what) from None
            raise Failure(f"{exc}: {what}", EXIT_FAILED) from None
    if not as_json:
        for record in records:
            _result_line(record)
    _finish(records, as_json)


def _cluster_records() -> _ClusterRecords | None:
    """The records of the cluster headwater.toml names, open; None without a ``[cluster]`` table."""
    config = _app().config.cluster
    if config is None:
        return None
    try:
        return _ClusterRecords(config)
    except ImportError as exc:
        raise Failure(needs_cluster_extra("a [cluster]", exc), EXIT_USAGE) from exc
    except StoreError as exc:
        raise Failure(str(exc), EXIT_JOURNAL) from exc


def _cancel_in_cluster(cluster: _ClusterRecords, ids: tuple[str, ...], as_json: bool) -> None:
    """``cancel`` on a cluster: each download cancelled in its records, and its worker told."""
    from headwater._cluster._engine import cancel
    from headwater._cluster._setup import redis_client

    client = redis_client(cluster.config.broker)
    try:
        picked = pick(cluster, ids, CLUSTER_RECORDS)
        results = [(r.id, cancel(cluster.store, client, cluster.config.cancel_channel, r.id)) for r in picked]
        final = cluster.store.fetch([i for i, _ in results])
    except StoreError as exc:
        raise Failure(str(exc), EXIT_JOURNAL) from exc
    finally:
        client.close()
        cluster.close()
    if as_json:
        click.echo(json.dumps([plain(final[i]) for i, _ in results if i in final], indent=2))
    else:
        for download_id, cancelled in results:
            state = "cancelled" if cancelled else f"already {final[download_id].state.value}"
            click.echo(f"{download_id}: {state}")
    sys.exit(EXIT_OK if all(cancelled for _, cancelled in results) else EXIT_FAILED)


class _Named:
    """A running server's downloads as a :class:`Matcher`: each key looked up by the server.

    The count stops at 2: two means two or more.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def match(self, key: str) -> tuple[int, Record | None]:
        found = _call_server(functools.partial(self._client.match, key, 2))
        return len(found), (found[0] if len(found) == 1 else None)


class _ServerPages:
    """A running server's downloads, latest first, read a page at a time as ``status`` prints them."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def records(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Record]:
        """As :meth:`JournalReader.records`: filtered, older than ``before``, at most ``limit``."""
        one_source = next(iter(sources)) if sources is not None and len(sources) == 1 else None
        cursor, seen, passed = None, 0, before is None
        while True:
            page, cursor = _call_server(
                functools.partial(
                    self._client.page, states=states or (), source=one_source, limit=500, cursor=cursor
                )
            )
            for record in page:
                if not passed:
                    passed = record.id == before
                    continue
                if sources is not None and record.source not in sources:
                    continue
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield record
            if cursor is None:
                return


def _cancel_through(client: Client, ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel in the server, running downloads included; print and exit as `cancel` does."""
    picked = pick(_Named(client), ids)
    cancelled = {r.id: _call_server(functools.partial(client.cancel, r.id)) for r in picked}
    final = [_call_server(functools.partial(client.get, r.id)) for r in picked]
    if as_json:
        click.echo(json.dumps([plain(r) for r in final], indent=2))
    else:
        for record in final:
            outcome = "cancelled" if cancelled[record.id] else f"already {record.state.value}"
            click.echo(f"{record.id}: {outcome}")
    sys.exit(EXIT_OK if all(cancelled.values()) else EXIT_FAILED)


if __name__ == "__main__":
    main()
