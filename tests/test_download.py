"""One download, one state: start, cancel, end and expiry are check-and-sets on the download."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from headwater import DownloadContext, Job, Record, State
from headwater._context import Flag
from headwater._download import Download, Phase


def context() -> DownloadContext:
    return DownloadContext(Path("."), logging.getLogger("test"), lambda: 0.0, 0.0)


def queued(download_id: str) -> Download:
    """A download just submitted (its QUEUED record, its first job the record's own)."""
    return Download(Record(download_id, "src", "t", None, "src", State.QUEUED, 0.0, 0.0))


def race(first: Callable[[], bool], second: Callable[[], bool]) -> tuple[bool, bool]:
    """Run both at once (released by one barrier) and return their answers."""
    barrier = threading.Barrier(2)
    answers: list[bool] = [False, False]

    def run(i: int, call: Callable[[], bool]) -> None:
        barrier.wait()
        answers[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return answers[0], answers[1]


def test_a_start_after_a_cancel_is_refused() -> None:
    d = queued("id1")
    assert d.cancel() is True
    assert d.start(context()) is False
    assert (d.phase, d.ctx) == (Phase.CANCELLED, None)
    assert d.cancel() is False


def test_a_cancel_of_a_running_download_sets_its_context() -> None:
    d, ctx = queued("id1"), context()
    assert d.start(ctx) and d.phase is Phase.RUNNING
    assert d.cancel() is True
    assert ctx.cancelled.is_set()
    assert d.end(ctx) is False  # the cancel won: the outcome is not the caller's to write


def test_an_end_belongs_to_its_own_attempt_only() -> None:
    d, first, second = queued("id1"), context(), context()
    assert d.start(first)
    assert d.expire(first) is True and first.cancelled.is_set()
    assert d.again(Job("id1", "other", "t", attempt=2)) is True
    assert d.start(second)
    assert d.end(first) is False  # the expired attempt returns late: not its to end
    assert d.end(second) is True
    assert d.cancel() is True  # ENDED, outcome not settled yet (a move down a chain): a cancel wins
    assert d.again(Job("id1", "third", "t", attempt=3)) is False


@pytest.mark.parametrize("rounds", [300])
def test_start_against_cancel_exactly_one_wins(rounds: int) -> None:
    for _ in range(rounds):
        d = queued("id")
        started, cancelled = race(lambda d=d: d.start(context()), d.cancel)  # type: ignore[misc]
        assert cancelled, "a cancel of a queued or running download always succeeds"
        # If the start won, the cancel found it RUNNING and set its context; if the cancel won, it never ran.
        assert d.phase is Phase.CANCELLED
        if started:
            assert d.ctx is not None and d.ctx.cancelled.is_set()
        else:
            assert d.ctx is None


@pytest.mark.parametrize("rounds", [300])
def test_end_against_cancel_exactly_one_wins(rounds: int) -> None:
    for _ in range(rounds):
        d, ctx = queued("id"), context()
        assert d.start(ctx)
        ended, cancelled = race(lambda d=d, ctx=ctx: d.end(ctx), d.cancel)  # type: ignore[misc]
        if ended and cancelled:  # the end won, then the cancel came while the outcome was unsettled
            assert d.phase is Phase.CANCELLED and not ctx.cancelled.is_set()
        else:
            assert cancelled and not ended and ctx.cancelled.is_set()


@pytest.mark.parametrize("rounds", [300])
def test_end_against_expiry_exactly_one_wins(rounds: int) -> None:
    for _ in range(rounds):
        d, ctx = queued("id"), context()
        assert d.start(ctx)
        ended, expired = race(lambda d=d, ctx=ctx: d.end(ctx), lambda d=d, ctx=ctx: d.expire(ctx))  # type: ignore[misc]
        assert ended != expired
        assert ctx.cancelled.is_set() is expired


def test_the_job_is_the_records_until_it_starts_then_fixed_until_the_next_attempt() -> None:
    d, ctx = queued("id1"), context()
    assert d.job == Job("id1", "src", "t")  # a queued download holds no job: its record's first
    assert d.start(ctx)
    d.record = attrs.evolve(d.record, state=State.RUNNING, display_name="described")  # ctx.describe
    assert d.job == Job("id1", "src", "t")  # the running attempt's job stays what it started with
    assert d.end(ctx)
    assert d.again(Job("id1", "src", "t", attempt=2))
    assert (d.job.attempt, d.ctx) == (2, None)


@pytest.mark.parametrize("rounds", [200])
def test_a_contexts_cancelled_flag_wakes_a_waiter_that_raced_its_set(rounds: int) -> None:
    """``ctx.cancelled`` makes its condition on first use: a wait and a set racing to make it agree on one."""
    for _ in range(rounds):
        ctx = context()
        assert isinstance(ctx.cancelled, threading.Event) and not ctx.cancelled.is_set()
        woke, _ = race(lambda c=ctx: c.cancelled.wait(10), lambda c=ctx: c.cancelled.set() or True)
        assert woke and ctx.cancelled.is_set()
    ctx = context()
    assert not ctx.interrupted.wait(0.001)
    ctx.interrupted.set()
    ctx.interrupted.clear()
    assert not ctx.interrupted.is_set()


def test_a_flag_keeps_to_attributes_of_its_own_not_events_private_ones() -> None:
    """Flag does not depend on how CPython's Event is made: it overrides each public method of Event,
    and using them all leaves none of the attributes ``Event.__init__`` makes (``_flag``, ``_cond``)."""
    public = {name for name in vars(threading.Event) if not name.startswith("_") and name != "isSet"}
    assert public <= set(vars(Flag)), public - set(vars(Flag))
    flag = Flag()
    assert not flag.wait(0.001) and "unset" in repr(flag)
    flag.set()
    assert flag.is_set() and flag.wait(0) and "set" in repr(flag)
    flag.clear()
    assert not flag.is_set()
    assert set(vars(threading.Event())).isdisjoint(vars(flag)), vars(flag)
