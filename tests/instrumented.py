"""Instrumented sources: plugins whose every download the test steers.

Each job's behaviour is chosen by its target (``"ok:name"``, ``"none"``,
``"raise"``, ``"block:key"``, ``"ignore-cancel:key"``, ``"flaky:N:key"``,
``"retry-after:S:key"``, ``"fail-on:NAMES:TARGET"``), and the plugin records
what happened (starts, ends, peak concurrency) on the monotonic clock or the
engine's, so tests can assert on real interleavings rather than sleeps.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import attrs

from headwater import Clock, DownloadContext, Job, RatePolicy, RetryAfter, hookimpl


@attrs.define
class Event:
    kind: str  # "start" or "end"
    job_id: str
    target: str
    at: float
    paused_for: float | None = None  # an end by RetryAfter: the seconds it asked for


class InstrumentedSource:
    """A source whose downloads block on gates the test opens.

    Targets:
        ``ok:NAME``: write NAME (in dest_dir) and return it.
        ``none``: return None (decline).
        ``raise``: raise RuntimeError.
        ``block:KEY``: wait until ``release(KEY)`` (or the cancel), then write and return.
        ``ignore-cancel:KEY``: wait until ``release(KEY)`` ignoring cancel, then land a file.
        ``flaky:N:KEY``: report half the bytes, then raise ConnectionError, on attempts 1 to N
            (``job.attempt``); land a file on later ones.
        ``retry-after:S:KEY``: raise RetryAfter(S) on attempt 1; land a file on later ones.
        ``outside:KEY``: as ``block:KEY``, but write the file beside ``dest_dir`` (in
            ``outside_path``) and return that, cancelled or not.
        ``fail-on:A+B:TARGET``: on the sources named (``-`` for none) report half the bytes,
            then raise ConnectionError (on every attempt); behave as TARGET on the others
            (a fallback chain's target).

    Event times come from ``clock`` (default: the monotonic clock).
    """

    def __init__(
        self,
        name: str,
        policy: RatePolicy | None = None,
        aliases: tuple[str, ...] = (),
        fields: dict[str, object] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._now = time.monotonic if clock is None else clock.now
        self._policy = policy
        self._aliases = aliases
        self._fields = fields
        self.lock = threading.Lock()
        self.events: list[Event] = []
        self.running = 0
        self.peak = 0
        self.started = threading.Condition(self.lock)
        self.contexts: dict[str, DownloadContext] = {}  # job id -> the context of its latest start
        self._gates: dict[str, threading.Event] = {}

    # -- test controls ---------------------------------------------------------

    def gate(self, key: str) -> threading.Event:
        with self.lock:
            return self._gates.setdefault(key, threading.Event())

    def release(self, key: str) -> None:
        self.gate(key).set()

    def release_all(self) -> None:
        with self.lock:
            gates = list(self._gates.values())
        for g in gates:
            g.set()

    def wait_started(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` downloads have started (fail the test otherwise)."""
        with self.started:
            ok = self.started.wait_for(lambda: self.starts() >= count, timeout)
        assert ok, f"{self.name}: only {self.starts()} of {count} downloads started"

    def starts(self) -> int:
        return sum(1 for e in self.events if e.kind == "start")

    def started_targets(self) -> list[str]:
        with self.lock:
            return [e.target for e in self.events if e.kind == "start"]

    def snapshot(self) -> list[Event]:
        """A copy of the start and end events so far, in the order they happened."""
        with self.lock:
            return list(self.events)

    def outside_path(self, dest_dir: Path, job_id: str) -> Path:
        """Where an ``outside:`` download of ``job_id`` writes its file: beside ``dest_dir``, not in it."""
        return dest_dir.parent / f"{dest_dir.name}-outside" / f"{self.name}-{job_id}.bin"

    def landed_path(self, dest_dir: Path, job_id: str) -> Path:
        """Where a download of ``job_id`` lands its file (whether or not it did)."""
        return dest_dir / f"{self.name}-{job_id}.bin"

    # -- hooks -----------------------------------------------------------------

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        with self.started:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.contexts[job.id] = ctx
            self.events.append(Event("start", job.id, job.target, self._now()))
            self.started.notify_all()
        paused_for = None
        try:
            return self._behave(job, job.target, ctx)
        except RetryAfter as exc:
            paused_for = exc.seconds
            raise
        finally:
            with self.started:
                self.running -= 1
                self.events.append(Event("end", job.id, job.target, self._now(), paused_for))
                self.started.notify_all()

    def _behave(self, job: Job, target: str, ctx: DownloadContext) -> Path | None:
        kind, _, arg = target.partition(":")
        if kind == "fail-on":
            names, _, rest = arg.partition(":")
            if self.name in names.split("+"):
                ctx.progress(5, 10)
                raise ConnectionError(f"instrumented drop of {job.target} on {self.name}")
            return self._behave(job, rest, ctx)
        if kind == "flaky":
            times, _, _ = arg.partition(":")
            if job.attempt <= int(times):
                ctx.progress(5, 10)
                raise ConnectionError(f"instrumented drop of {job.target}, attempt {job.attempt}")
        if kind == "retry-after":
            seconds, _, _ = arg.partition(":")
            if job.attempt == 1:
                raise RetryAfter(float(seconds))
        if kind == "none":
            return None
        if kind == "raise":
            raise RuntimeError(f"instrumented failure of {job.target}")
        if kind == "outside":
            gate = self.gate(arg)
            while not gate.wait(0.01) and not ctx.cancelled.is_set():
                pass
            outside = self.outside_path(ctx.dest_dir, job.id)
            outside.parent.mkdir(exist_ok=True)
            outside.write_bytes(b"not the engine's")
            return outside
        if kind == "block":
            gate = self.gate(arg)
            while not gate.wait(0.01):
                if ctx.cancelled.is_set():
                    return None
        elif kind == "ignore-cancel":
            self.gate(arg).wait(30)
        path = self.landed_path(ctx.dest_dir, job.id)
        path.write_bytes(b"x" * 10)
        ctx.progress(10, 10)
        return path

    @hookimpl
    def rate_policy(self) -> RatePolicy | None:
        return self._policy

    @hookimpl
    def aliases(self) -> tuple[str, ...]:
        return self._aliases

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object] | None:
        return self._fields
