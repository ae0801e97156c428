"""Nothing a plugin returns or raises stops its source's worker.

A plugin hands the engine whatever the test chooses, at a moment the test
chooses: ``download_impl`` waits on a gate, so a cancel can land while it
runs, and only then returns (or raises). After each odd outcome the same
source must still run a later download, with its slot free and its waiters
woken.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from waiting import wait_until

from headwater import (
    DownloadContext,
    Engine,
    Job,
    MemoryStore,
    RatePolicy,
    Record,
    RetryAfter,
    State,
    TransientError,
    hookimpl,
)
from headwater._clock import ManualClock, SystemClock
from headwater._discovery import ONE_LINE_MAX
from headwater._worker import SourceWorker, Verdict

pytestmark = pytest.mark.timeout(60)


class NoPath:
    """An os.PathLike whose ``__fspath__`` raises."""

    def __fspath__(self) -> str:
        raise RuntimeError("no path here")


class Unprintable(Exception):
    """An exception that cannot be turned into text."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def bad_retry_after() -> RetryAfter:
    """A RetryAfter whose ``seconds`` a plugin spoiled after building it."""
    exc = RetryAfter(1.0, "HTTP 429")
    exc.seconds = "soon"  # type: ignore[assignment]
    return exc


class Odd:
    """Targets ``ok`` land a file; any other target waits for ``go``, then returns or raises ``outcome``.

    ``outcome`` is called with the context when it is time, so a value can
    depend on the destination folder. ``inside`` is set when a gated
    download is running.
    """

    def __init__(
        self, outcome: Callable[[DownloadContext], object], policy: RatePolicy | None = None
    ) -> None:
        self.outcome = outcome
        self.policy = RatePolicy(concurrency=1) if policy is None else policy
        self.inside = threading.Event()
        self.go = threading.Event()

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> object:
        if job.target == "ok":
            path = ctx.dest_dir / f"ok-{job.id}.bin"
            path.write_bytes(b"ok")
            return path
        self.inside.set()
        assert self.go.wait(10)
        result = self.outcome(ctx)
        if isinstance(result, BaseException):
            raise result
        return result

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        return self.policy


OUTSIDE = "outside.txt"  # a file beside the destination folder, which nothing may delete

OUTCOMES: dict[str, Callable[[DownloadContext], object]] = {
    "nul byte": lambda ctx: str(ctx.dest_dir / "a\0b.bin"),
    "bytes path": lambda ctx: bytes(ctx.dest_dir / "x.bin"),
    "int": lambda ctx: 42,
    "fspath raises": lambda ctx: NoPath(),
    "a directory": lambda ctx: ctx.dest_dir / "sub",
    "the destination itself": lambda ctx: ctx.dest_dir,
    "outside dest": lambda ctx: ctx.dest_dir.parent / OUTSIDE,
    "huge string": lambda ctx: "a" * 1_000_000,
    "unprintable exception": lambda ctx: Unprintable(),
    "RetryAfter with spoiled seconds": lambda ctx: bad_retry_after(),
    "SystemExit": lambda ctx: SystemExit(3),
    "transient, unprintable": lambda ctx: type("Odd", (TransientError, Unprintable), {})(),
}


def workers_idle(engine: Engine, name: str, timeout: float = 10.0) -> None:
    """Wait until no download of ``name`` counts as running in its worker."""
    wait_until(
        lambda: not engine.worker_stats()[name][1],
        timeout,
        lambda: f"worker of {name} still counts a download running",
    )


def runs_again(engine: Engine, name: str) -> None:
    """Once no download of ``name`` counts as running, a download of ``name`` still runs to its end."""
    workers_idle(engine, name)
    again = engine.wait([engine.submit(name, "ok")], timeout=10)[0]
    assert again.state is State.COMPLETED, again.error


@pytest.mark.parametrize("cancel", [False, True], ids=["ended", "cancelled"])
@pytest.mark.parametrize("kind", list(OUTCOMES))
def test_an_odd_outcome_never_stops_the_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, cancel: bool
) -> None:
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    outside = tmp_path / OUTSIDE
    outside.write_text("keep me")
    src = Odd(OUTCOMES[kind])
    engine = Engine(dest, plugins={"odd": src})
    try:
        odd = engine.submit("odd", "odd")
        assert src.inside.wait(10)
        if cancel:
            assert engine.cancel(odd)  # lands while download_impl runs
        queued = engine.submit("odd", "ok")  # concurrency 1: runs only once the odd one is settled
        src.go.set()
        ended = engine.wait([odd], timeout=10)[0]  # the waiter is woken
        assert ended.state is (State.CANCELLED if cancel else State.FAILED)
        if not cancel:
            assert ended.error and len(ended.error) <= ONE_LINE_MAX, "the error is one short line"
            assert ended.tried and ended.tried[-1].source == "odd"
        later = engine.wait([queued], timeout=10)[0]
        assert later.state is State.COMPLETED, later.error
        runs_again(engine, "odd")
    finally:
        src.go.set()
        engine.close(timeout=5)
    assert outside.read_text() == "keep me"
    assert (dest / "sub").is_dir()
    # Only a step of the engine's own that broke on the value logs an error (with
    # its traceback); after a cancel, what the plugin returned is quietly left alone.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    broke = not cancel and kind == "RetryAfter with spoiled seconds"
    assert len(errors) == broke and all(e.startswith("ending download") for e in errors)


class Refuser:
    """A fallback whose ``translate_target`` raises what its target names."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        return None

    @hookimpl
    def translate_target(self, target: str) -> str:
        raise {"exit": SystemExit(2), "interrupt": KeyboardInterrupt()}.get(target, Unprintable())


@pytest.mark.parametrize("target", ["exit", "unprintable", "interrupt"])
def test_a_fallback_whose_translate_target_misbehaves_does_not_stop_the_first_source(
    tmp_path: Path, target: str
) -> None:
    """Moving down a chain runs the next source's ``translate_target`` on the worker thread."""
    src = Odd(lambda ctx: None)  # declines the gated target: the chain moves on
    src.go.set()
    engine = Engine(tmp_path / "dest", plugins={"odd": src, "refuser": Refuser()})
    try:
        record = engine.wait([engine.submit(["odd", "refuser"], target)], timeout=10)[0]
        assert record.state is State.FAILED
        errors = {t.source: t.error for t in record.tried}
        if target == "interrupt":  # its boundary lets a KeyboardInterrupt through: the move fails
            assert errors == {"odd": "could not end the download: KeyboardInterrupt"}
        else:
            assert errors["refuser"].startswith("translate_target raised")
            assert errors["odd"] == "declined: download_impl returned None"
        ok = engine.wait([engine.submit("odd", "ok")], timeout=10)[0]
        assert ok.state is State.COMPLETED, ok.error
    finally:
        engine.close(timeout=5)


def test_a_fallback_that_breaks_a_timed_out_move_does_not_stop_the_watchdog(tmp_path: Path) -> None:
    clock = ManualClock()
    src = Odd(lambda ctx: None, RatePolicy(concurrency=2, timeout=5.0))
    engine = Engine(tmp_path / "dest", plugins={"odd": src, "refuser": Refuser()}, clock=clock)
    try:
        chained = engine.submit(["odd", "refuser"], "interrupt")  # hangs on odd until the timeout
        assert src.inside.wait(10)
        clock.advance(5)
        record = engine.wait([chained], timeout=10)[0]
        assert record.state is State.FAILED and "KeyboardInterrupt" in record.error
        src.inside.clear()
        alone = engine.submit("odd", "hang")
        assert src.inside.wait(10)
        clock.advance(5)
        record = engine.wait([alone], timeout=10)[0]  # the watchdog still ends downloads
        assert record.state is State.FAILED and record.error == "timed out after 5 s"
    finally:
        src.go.set()
        engine.close(timeout=5)


class BrokenOnce(MemoryStore):
    """A store whose ``commit`` raises a RuntimeError (no StoreError) at its ``nth`` RUNNING write."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self._left = nth

    def commit(self, records: Sequence[Record]) -> None:
        if any(r.state is State.RUNNING for r in records):
            self._left -= 1
            if self._left == 0:
                raise RuntimeError("the store broke its contract")
        super().commit(records)


@pytest.mark.parametrize("nth", [1, 2], ids=["alone", "with the end before it"])
def test_a_store_that_raises_on_the_running_write_does_not_stop_the_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, nth: int
) -> None:
    """A RecordStore's failure is a journal write that failed, whatever it raises: logged, kept in memory.

    ``nth`` 1: the first start's RUNNING write raises, on its own; 2: the
    second's, committed with the first's end (concurrency 1, the second
    queued while the first runs).
    """
    src = Odd(lambda ctx: None)  # the gated download declines: FAILED
    engine = Engine(tmp_path / "dest", plugins={"odd": src}, store=BrokenOnce(nth))
    try:
        first = engine.submit("odd", "gated")
        assert src.inside.wait(10)
        second = engine.submit("odd", "ok")
        src.go.set()
        records = engine.wait([first, second], timeout=10)
        assert [r.state for r in records] == [State.FAILED, State.COMPLETED], records
        runs_again(engine, "odd")
    finally:
        src.go.set()
        engine.close(timeout=5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "kept in memory only" in errors[0].getMessage()
    assert errors[0].exc_info is not None, "a store that breaks its contract is logged with its traceback"


@pytest.mark.parametrize("step", ["begin", "execute", "settle"])
def test_a_worker_thread_goes_on_when_a_step_raises(step: str) -> None:
    """The worker's guard: an item whose ``step`` raises frees its slot, the thread goes on.

    Concurrency 1: a slot kept by the broken item, or a thread that died of
    it, would start nothing more. (A ``settle`` that raises ends the attempt
    all the same.)
    """
    lock = threading.RLock()
    ran: list[str] = []
    all_ran = threading.Event()

    class Unit:
        """Steps whose token and outcome are the job's target; the ``step`` of "bad" raises."""

        def begin(self, item: Job, now: float) -> str:
            if step == "begin" and item.target == "bad":
                raise RuntimeError("begin broke its contract")
            return item.target

        def execute(self, item: Job, token: str) -> str:
            if step == "execute" and token == "bad":
                raise RuntimeError("execute broke its contract")
            return token

        def settle(self, item: Job, token: str, outcome: str) -> Verdict:
            if step == "settle" and token == "bad":
                raise RuntimeError("settle broke its contract")
            ran.append(outcome)
            if len(ran) == 2:
                all_ran.set()
            return Verdict()

        def batch(self) -> contextlib.nullcontext[None]:
            return contextlib.nullcontext()

    worker: SourceWorker[Job, str, str] = SourceWorker(
        "unit", lock, RatePolicy(concurrency=1), Unit(), 5.0, SystemClock()
    )
    with lock:
        for target in ("bad", "good", "also good"):
            worker.put(Job(target, "unit", target))
    assert all_ran.wait(10), f"only {ran} ran"
    with lock:
        assert ran == ["good", "also good"]
        assert (worker.running, worker.threads, worker.queued) == (0, 1, 0)
        worker.close()
