"""Odd plugins, in process: whatever a ``download_impl`` returns or raises, its source goes on (issue item 8).

These faults drive an :class:`~headwater.Engine` in the harness's own
process (no command line loads an arbitrary plugin), with a source whose
first download hands back something odd, with or without a cancel first;
the source's later downloads must still complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import attrs
from faultbox import Sandbox, sha256
from faultcheck import Case, Run, Want

from headwater import DownloadContext, Engine, Job, RatePolicy, hookimpl
from headwater._codec import plain


@attrs.frozen
class Odd:
    """What an odd ``download_impl`` hands back: ``value(dest)`` is returned, or raised if an exception."""

    name: str
    value: Callable[[Path], object]
    after_cancel: bool


class _BadPath:
    def __fspath__(self) -> str:
        raise RuntimeError("a path that cannot say what it is")


ODD_RETURNS = (
    Odd("returns a path with a NUL byte, after a cancel (issue item 8)", lambda d: str(d / "a\0b"), True),
    Odd("returns a path with a NUL byte", lambda d: str(d / "a\0b"), False),
    Odd("returns an int, after a cancel", lambda d: 42, True),
    Odd("returns bytes, after a cancel", lambda d: bytes(d / "x"), True),
    Odd("returns a path outside the destination, after a cancel", lambda d: d.parent, True),
    Odd("returns an object whose __fspath__ raises, after a cancel", lambda d: _BadPath(), True),
    Odd("returns an object whose __fspath__ raises", lambda d: _BadPath(), False),
    Odd("raises SystemExit", lambda d: SystemExit(3), False),
    Odd("raises KeyboardInterrupt after a cancel", lambda d: KeyboardInterrupt(), True),
)


class OddSource:
    """``odd`` downloads hand back the odd value; the others write ``normal-<n>.bin``."""

    def __init__(self, odd: Odd) -> None:
        self.odd = odd

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> object:
        if job.target != "odd":
            path = ctx.dest_dir / f"{job.target}.bin"
            path.write_bytes(job.target.encode())
            return path
        if self.odd.after_cancel:
            ctx.cancelled.wait(10)
        value = self.odd.value(ctx.dest_dir)
        if isinstance(value, BaseException):
            raise value
        return value


def plugin_fault(odd: Odd) -> Callable[[Sandbox], Case]:
    """A ``download_impl`` hands back ``odd``; the source's next downloads must still run (issue item 8)."""

    def run(box: Sandbox) -> Case:
        box.freeze()
        began = time.monotonic()
        engine = Engine(
            box.dest, plugins={"odd": OddSource(odd)}, policies={"odd": RatePolicy(concurrency=1)}
        )
        try:
            first = engine.submit("odd", "odd")
            while engine.get(first).state.value == "queued" and time.monotonic() - began < 5:
                time.sleep(0.005)
            if odd.after_cancel:
                engine.cancel(first)
            later = [engine.submit("odd", f"normal-{i}") for i in range(3)]
            try:
                engine.wait([first, *later], timeout=10)
                code: int | None = 0
            except TimeoutError:
                code = None
            records = [record for record in map(plain, engine.records()) if isinstance(record, dict)]
            for record in records:
                record["error"] = box.tidy(str(record["error"] or "")) or None
        finally:
            engine.close(timeout=2)
        box.runs.append(Run((odd.name,), code, "", "", time.monotonic() - began, 10.0, program="engine"))
        wants = [
            Want(f"normal-{i}", frozenset({sha256(f"normal-{i}".encode())}), True, f"normal-{i}")
            for i in range(3)
        ]
        return box.case(wants, records, "")

    return run
