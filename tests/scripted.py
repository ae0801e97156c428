"""A scripted source for the resilience tests: failures, pauses, hangs and stalls on demand.

Each job's behaviour is chosen by its target, and the plugin records every
attempt (start and end, on the engine's clock and in one global order) so
tests can assert on real interleavings.

Targets:
    ``ok``: land a file and return it.
    ``none``: decline (return None).
    ``fail``: raise ValueError (a permanent error).
    ``flaky:N``: raise ConnectionError on the first N attempts of the job, then land a file.
    ``retry-after:S:N``: raise RetryAfter(S) on the first N attempts (default 1), then land a file.
    ``block:KEY``: wait until ``release(KEY)`` or the cancel; land a file when released.
    ``hang:KEY``: wait until ``release(KEY)`` ignoring the cancel, then land a file.
    ``stall:KEY``: report one more byte on each ``poke(KEY)`` until cancelled.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs
from instrumented import InstrumentedSource

from headwater import DownloadContext, Job, RatePolicy, RetryAfter, hookimpl
from headwater._clock import Clock

_order = itertools.count()


@attrs.define
class Attempt:
    job_id: str
    target: str
    attempt: int
    start_seq: int
    start_at: float
    end_seq: int | None = None
    end_at: float | None = None
    saw_cancel: bool = False


class ScriptedSource(InstrumentedSource):
    """An instrumented source (gates, policy, aliases) with the scripted targets above."""

    def __init__(
        self,
        name: str,
        clock: Clock,
        policy: RatePolicy | None = None,
        aliases: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, policy, aliases)
        self._clock = clock
        self.changed = self.started
        self.attempts: list[Attempt] = []
        self.tries: Counter[str] = Counter()

    # -- test controls ---------------------------------------------------------

    def poke(self, key: str) -> None:
        """Let a ``stall:KEY`` download report one more byte."""
        self.gate(key).set()

    def starts(self) -> int:
        return len(self.attempts)  # no lock: wait_started calls it holding the lock

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.changed:
            ok = self.changed.wait_for(predicate, timeout)
        assert ok, f"{self.name}: condition not reached in {timeout} s ({len(self.attempts)} starts)"

    def wait_ended(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` attempts have returned (fail the test otherwise)."""
        self.wait_for(lambda: sum(1 for a in self.attempts if a.end_seq is not None) >= count, timeout)

    def reset_peak(self) -> None:
        with self.lock:
            self.peak = self.running

    # -- hooks -----------------------------------------------------------------

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        with self.changed:
            self.tries[job.id] += 1
            tries = self.tries[job.id]
            self.running += 1
            self.peak = max(self.peak, self.running)
            # ctx.started: the clock time the engine decided to start at
            record = Attempt(job.id, job.target, job.attempt, next(_order), ctx.started)
            self.attempts.append(record)
            self.changed.notify_all()
        try:
            return self._behave(job, ctx, tries)
        finally:
            with self.changed:
                self.running -= 1
                record.end_seq = next(_order)
                record.end_at = self._clock.now()
                record.saw_cancel = ctx.cancelled.is_set()
                self.changed.notify_all()

    def _behave(self, job: Job, ctx: DownloadContext, tries: int) -> Path | None:
        kind, _, arg = job.target.partition(":")
        if kind == "none":
            return None
        if kind == "fail":
            raise ValueError(f"scripted permanent failure of {job.target}")
        if kind == "flaky" and tries <= int(arg):
            raise ConnectionError(f"scripted transient failure {tries} of {job.target}")
        if kind == "retry-after":
            seconds, _, times = arg.partition(":")
            if tries <= int(times or 1):
                raise RetryAfter(float(seconds), "scripted 429")
        if kind == "block":
            gate = self.gate(arg)
            while not gate.wait(0.005):
                if ctx.cancelled.is_set():
                    return None
        if kind == "hang":
            self.gate(arg).wait(30)
        if kind == "stall":
            gate, sent = self.gate(arg), 0
            while not ctx.cancelled.is_set():
                if gate.wait(0.005):
                    gate.clear()
                    sent += 1
                    ctx.progress(sent, 100)
            return None
        path = ctx.dest_dir / f"{self.name}-{job.id}-{tries}.bin"
        path.write_bytes(b"x" * 10)
        ctx.progress(10, 10)
        return path


class TranslatingSource(ScriptedSource):
    """A scripted source that maps targets with ``translate`` (None: cannot take it)."""

    def __init__(self, name: str, clock: Clock, translate: Callable[[str], str | None], **kw: object) -> None:
        super().__init__(name, clock, **kw)  # type: ignore[arg-type]
        self._translate = translate

    @hookimpl
    def translate_target(self, target: str) -> str | None:
        return self._translate(target)
