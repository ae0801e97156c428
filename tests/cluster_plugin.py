"""The cluster tests' source, ``clustered``: steered by its target, logging every start and end to a file.

Used in-process (``plugins={"clustered": cluster_plugin}``) and installed for
worker processes (:func:`install`). Everything goes through the folder named
by the environment variable ``HW_CLUSTER_DIR``: each start and end is a line
appended to ``events.log`` (``start|end <id> <attempt> <pid> <time.time()>``,
one ``O_APPEND`` write each, so lines of several processes never mix), and
gates are files in ``gates/`` that the test creates.

Targets:
    ``ok:NAME``: write NAME through a PartFile and land it.
    ``wait:GATE:NAME``: write half of NAME to its ``.part``, log ``part``,
        then wait for the gate file GATE (or a cancel: the ``.part`` is
        removed, or kept on an interrupt, and DownloadCancelled raised),
        then land it.
    ``stubborn:GATE:NAME``: as ``wait`` but ignores cancels; it lands NAME
        once GATE exists and logs ``stubborn-landed``.
    ``nap:SECONDS:NAME``: sleep SECONDS, then as ``ok``.
    ``landkill:NAME``: as ``ok``, then on attempt 1 SIGKILL its own process
        (a worker dying between the landing and the end's write).
    ``fail``: raise RuntimeError (not transient).
    ``flaky``: raise TransientError.
    ``pause:SECONDS``: raise RetryAfter(SECONDS).
    ``describe:NAME``: ``ctx.describe(display_name="described NAME", color="red")``, then as ``ok``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from headwater import DownloadCancelled, PartFile, RatePolicy, RetryAfter, TransientError, hookimpl

DIR_ENV = "HW_CLUSTER_DIR"


def folder() -> Path:
    return Path(os.environ[DIR_ENV])


def log(kind: str, job: object) -> None:
    line = f"{kind} {job.id} {job.attempt} {os.getpid()} {time.time():.6f}\n"  # type: ignore[attr-defined]
    fd = os.open(folder() / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _land(ctx: object, name: str, part: PartFile | None = None) -> Path:
    if part is None:
        part = PartFile(ctx.dest_dir, ctx.dest_dir / name, existing=ctx.existing)  # type: ignore[attr-defined]
    part.write(b"y" * 1000)
    return part.land()


@hookimpl
def download_impl(job, ctx):  # type: ignore[no-untyped-def]
    log("start", job)
    kind, _, rest = job.target.partition(":")
    try:
        if kind == "ok":
            return _land(ctx, rest)
        if kind == "describe":
            ctx.describe(display_name=f"described {rest}", color="red")
            return _land(ctx, rest)
        if kind == "nap":
            seconds, _, name = rest.partition(":")
            time.sleep(float(seconds))
            return _land(ctx, name)
        if kind == "landkill":  # attempt 1 lands its file, then its worker dies before the end is written
            landed = _land(ctx, rest)
            if job.attempt == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return landed
        if kind == "fail":
            raise RuntimeError("broken")
        if kind == "flaky":
            raise TransientError("flaky: try again")
        if kind == "pause":
            raise RetryAfter(float(rest), "busy: come back later")
        gate, _, name = rest.partition(":")
        part = PartFile(ctx.dest_dir, ctx.dest_dir / name, existing=ctx.existing)
        part.write(b"x" * 1000)
        log("part", job)
        opened = folder() / "gates" / gate
        while not opened.exists():
            if kind == "wait" and ctx.cancelled.is_set():
                if ctx.interrupted.is_set():
                    part.close()
                else:
                    part.discard()
                raise DownloadCancelled("stopped")
            time.sleep(0.005)
        landed = _land(ctx, name, part)
        if kind == "stubborn":
            log("stubborn-landed", job)
        return landed
    finally:
        log("end", job)


@hookimpl
def rate_policy():  # type: ignore[no-untyped-def]
    return RatePolicy(concurrency=2, retries=1, backoff=0.05)


def events() -> list[tuple[str, str, int, int, float]]:
    """The lines of ``events.log``: (kind, id, attempt, pid, time)."""
    path = folder() / "events.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        kind, download_id, attempt, pid, at = line.split()
        found.append((kind, download_id, int(attempt), int(pid), float(at)))
    return found


def open_gate(name: str) -> None:
    (folder() / "gates").mkdir(parents=True, exist_ok=True)
    (folder() / "gates" / name).touch()


#: The sources :func:`install` makes of this module: each its own copy (pluggy registers a module once).
NAMES = ("clustered", "clustered_fast", "clustered_paced", "clustered_capped")


def install(target: Path) -> Path:
    """Make ``target`` hold this module as the installed sources :data:`NAMES`; return it."""
    from child_env import install_plugin

    for name in NAMES:
        install_plugin(target, f"{name}_source", Path(__file__).read_text(), name, f"{name}src")
    return target
