"""Fallback chains, retries, Retry-After pauses, quotas, timeouts, set_policy, pause/resume."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from instrumented import InstrumentedSource
from scripted import ScriptedSource, TranslatingSource
from waiting import wait_until

from headwater import (
    Chain,
    DownloadContext,
    Engine,
    Job,
    RatePolicy,
    SourceSkippedWarning,
    State,
    TargetRejectedError,
    Tried,
    UnknownDownloadError,
    UnknownSourceError,
    hookimpl,
)
from headwater._clock import ManualClock, SystemClock
from headwater.testing import frozen

pytestmark = pytest.mark.timeout(60)


def drive(
    clock: ManualClock,
    done: Callable[[], bool],
    step: float = 1.0,
    limit: float = 3600.0,
    ready: Callable[[], bool] = lambda: True,
) -> float:
    """Advance ``clock`` by ``step`` until ``done()``; return the clock time it took.

    Advances only while ``ready()``; each step yields briefly so the engine's
    threads catch up. Fails if ``limit`` clock seconds pass first.
    """
    start = clock.now()
    while not done():
        assert clock.now() - start < limit, "not done within the clock limit"
        if ready():
            clock.advance(step)
        time.sleep(0.002)
    return clock.now() - start


@contextlib.contextmanager
def reading(engine, ids, readers: int = 1) -> Iterator[list[BaseException]]:
    """Threads calling ``engine.get`` on every id in a loop; yields the errors they hit.

    Threads switch far more often than usual meanwhile, so reads land inside
    chain moves.
    """
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for i in ids:
                    engine.get(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        yield errors
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        for t in threads:
            t.join()


def ended(engine, ids) -> Callable[[], bool]:
    return lambda: all(engine.get(i).state.terminal for i in ids)


# -- fallback chains -------------------------------------------------------------


def test_chain_fails_only_when_exhausted(make_engine):
    clock = SystemClock()
    a, b, c = (ScriptedSource(n, clock) for n in "abc")
    engine = make_engine({"a": a, "b": b, "c": c})
    # each source sees its own target: a permanent error on a, a decline on b
    ids = [engine.submit(["a", "b", "c"], t) for t in ("fail", "none", "ok")]
    recs = engine.wait(ids, timeout=10)
    assert [r.state for r in recs] == [State.FAILED, State.FAILED, State.COMPLETED]
    first = recs[0]
    assert [t.source for t in first.tried] == ["a", "b", "c"]
    assert all("ValueError" in t.error for t in first.tried)
    assert first.fallbacks == () and first.source == "c" and first.attempts == 3
    assert [t.source for t in recs[1].tried] == ["a", "b", "c"]
    assert all(t.error.startswith("declined") for t in recs[1].tried)
    assert recs[2].source == "a" and recs[2].tried == () and recs[2].error is None


def test_chain_two_failures_then_success(make_engine):
    clock = SystemClock()
    srcs = {
        "a": TranslatingSource("a", clock, lambda t: "fail"),
        "b": TranslatingSource("b", clock, lambda t: "none"),
        "c": TranslatingSource("c", clock, lambda t: "ok"),
    }
    engine = make_engine(srcs)
    rid = engine.submit(["a", "b", "c"], "artist - title")
    rec = engine.wait([rid], timeout=10)[0]
    assert rec.state is State.COMPLETED
    assert rec.source == "c" and rec.target == "artist - title"
    assert [t.source for t in rec.tried] == ["a", "b"]
    assert "ValueError" in rec.tried[0].error and rec.tried[1].error.startswith("declined")
    assert rec.attempts == 3 and rec.fallbacks == ()
    assert [s.starts() for s in srcs.values()] == [1, 1, 1]
    assert rec.file_path is not None and rec.file_path.endswith(".bin")


def test_chain_with_alias_and_duplicate(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock, aliases=("a_dl",))
    b = ScriptedSource("b", clock, aliases=("b_dl",))
    engine = make_engine({"a": a, "b": b})
    rid = engine.submit(["b_dl", "a", "b", "a_dl"], "fail")
    rec = engine.wait([rid], timeout=10)[0]
    assert rec.state is State.FAILED
    assert [t.source for t in rec.tried] == ["b", "a"]  # duplicates dropped keeping the first
    assert (a.starts(), b.starts()) == (1, 1)


def test_chain_unknown_names(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock)
    engine = make_engine({"a": a})
    with pytest.raises(UnknownSourceError) as info:
        engine.submit(["nope", "a", "gone"], "ok")
    assert info.value.names == ("nope", "gone")
    assert "'nope', 'gone'" in str(info.value) and "known sources: a" in str(info.value)
    assert engine.records() == []
    with pytest.warns(SourceSkippedWarning, match="'nope'"):
        rid = engine.submit(Chain(["nope", "a"], strict=False), "ok")
    assert engine.wait([rid], timeout=10)[0].state is State.COMPLETED
    with pytest.raises(UnknownSourceError):
        engine.submit(Chain(["nope"], strict=False), "ok")
    with pytest.raises(ValueError, match="at least one"):
        Chain([])


def test_chain_cancelled_midway(make_engine):
    clock = SystemClock()
    a, b, c = (ScriptedSource(n, clock) for n in "abc")
    srcs = {
        "a": a,
        "b": TranslatingSource("b", clock, lambda t: "block:b"),
        "c": c,
    }
    engine = make_engine(srcs)
    rid = engine.submit(["a", "b", "c"], "fail")
    srcs["b"].wait_started(1)
    assert engine.get(rid).source == "b"
    assert engine.cancel(rid) is True
    rec = engine.wait([rid], timeout=5)[0]
    assert rec.state is State.CANCELLED
    srcs["b"].wait_ended(1)
    assert srcs["b"].attempts[0].saw_cancel
    assert c.starts() == 0 and engine.get(rid).state is State.CANCELLED
    assert [t.source for t in rec.tried] == ["a"]


def test_cancel_racing_chain_moves_is_never_lost(make_engine):
    """Cancel right after submit while the job hops a -> b; b finishes only if never cancelled."""
    clock = SystemClock()
    a = ScriptedSource("a", clock, RatePolicy(concurrency=4))
    b = TranslatingSource("b", clock, lambda t: "block:never", policy=RatePolicy(concurrency=8))
    engine = make_engine({"a": a, "b": b})
    ids = [engine.submit(["a", "b"], "fail") for _ in range(60)]
    with reading(engine, ids) as errors:
        results = [engine.cancel(i) for i in ids]
        recs = engine.wait(ids, timeout=20)
    assert errors == []
    assert all(results)
    assert all(r.state is State.CANCELLED for r in recs)
    wait_until(lambda: engine.worker_stats()["b"][1] == 0)  # every run on b has returned
    assert all(att.end_seq is not None and att.saw_cancel for att in b.attempts)  # none outlived its cancel


def test_remove_during_chain(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock)
    b = TranslatingSource("b", clock, lambda t: "block:b")
    engine = make_engine({"a": a, "b": b})
    rid = engine.submit(["a", "b"], "fail")
    b.wait_started(1)
    final = engine.remove(rid)
    assert final.state is State.CANCELLED and final.source == "b"
    with pytest.raises(UnknownDownloadError):
        engine.get(rid)
    with pytest.raises(UnknownDownloadError):
        engine.cancel(rid)


def test_translate_target(make_engine):
    clock = SystemClock()
    search = TranslatingSource("search", clock, lambda t: "ok" if " - " in t else None)
    picky = TranslatingSource("picky", clock, lambda t: None)
    broken = TranslatingSource("broken", clock, lambda t: 1 / 0)  # type: ignore[arg-type,return-value]
    engine = make_engine({"search": search, "picky": picky, "broken": broken})
    rid = engine.submit(["picky", "broken", "search"], "artist - title")
    assert engine.get(rid).source == "search"
    rec = engine.wait([rid], timeout=10)[0]
    assert rec.state is State.COMPLETED and rec.target == "artist - title"
    assert [t.source for t in rec.tried] == ["picky", "broken"]
    assert "returned None" in rec.tried[0].error and "ZeroDivisionError" in rec.tried[1].error
    assert search.attempts[0].target == "ok"  # the source got its own target
    with pytest.raises(TargetRejectedError, match="picky: cannot take"):
        engine.submit(["picky", "search"], "no separator")
    with pytest.raises(TargetRejectedError):
        engine.submit("picky", "anything")
    assert [r.id for r in engine.records()] == [rid]


def test_later_source_declining_the_target_is_skipped(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock)
    b = TranslatingSource("b", clock, lambda t: None)
    c = ScriptedSource("c", clock)
    engine = make_engine({"a": a, "b": b, "c": c})
    rec = engine.wait([engine.submit(["a", "b", "c"], "fail")], timeout=10)[0]
    assert [(t.source, t.error.split(":")[0]) for t in rec.tried] == [
        ("a", "ValueError"),
        ("b", "cannot take the target (translate_target returned None)"),
        ("c", "ValueError"),
    ]
    assert b.starts() == 0


def test_a_move_down_the_chain_asks_no_source_after_the_taker(make_engine):
    clock = SystemClock()
    asked: list[str] = []

    def taking(name: str) -> Callable[[str], str | None]:
        def translate(target: str) -> str | None:
            asked.append(name)
            return target.replace("fail", "ok")

        return translate

    a = ScriptedSource("a", clock)
    b = TranslatingSource("b", clock, taking("b"))
    c = TranslatingSource("c", clock, taking("c"))
    engine = make_engine({"a": a, "b": b, "c": c})
    rec = engine.wait([engine.submit(["a", "b", "c"], "fail")], timeout=10)[0]
    assert rec.state is State.COMPLETED and rec.source == "b" and rec.fallbacks == ("c",)
    assert [t.source for t in rec.tried] == ["a"]
    assert asked == ["b"] and c.starts() == 0


# -- retries -------------------------------------------------------------------


def test_retries_stop_at_the_limit_with_capped_backoff(make_engine):
    clock = ManualClock()
    policy = RatePolicy(retries=3, backoff=2.0, backoff_max=5.0)
    src = ScriptedSource("a", clock, policy)
    engine = make_engine({"a": src}, clock=clock)
    rid = engine.submit("a", "flaky:100")
    # the clock moves only while the retry waits, so an attempt's end and the
    # backoff's start are the same instant
    drive(clock, ended(engine, [rid]), step=0.25, ready=lambda: engine.get(rid).state is State.QUEUED)
    rec = engine.get(rid)
    assert rec.state is State.FAILED and "ConnectionError" in rec.error
    assert rec.attempts == 4 and rec.retries == 3 and src.starts() == 4
    assert [a.attempt for a in src.attempts] == [1, 2, 3, 4]
    for n, (prev, nxt) in enumerate(zip(src.attempts, src.attempts[1:], strict=False), start=1):
        cap = min(5.0, 2.0 * 2 ** (n - 1))
        assert prev.end_seq < nxt.start_seq  # never overlaps
        assert 0 <= nxt.start_at - prev.end_at <= cap + 0.5  # a step, and one more in a race


def test_transient_then_success_and_permanent_not_retried(make_engine):
    clock = SystemClock()
    src = ScriptedSource("a", clock, RatePolicy(retries=3, backoff=0.0))
    engine = make_engine({"a": src})
    ok, perm, decl = (engine.submit("a", t) for t in ("flaky:2", "fail", "none"))
    recs = engine.wait([ok, perm, decl], timeout=10)
    assert recs[0].state is State.COMPLETED and recs[0].attempts == 3 and recs[0].retries == 2
    assert recs[1].state is State.FAILED and recs[1].attempts == 1
    assert recs[2].state is State.FAILED and recs[2].attempts == 1


def test_retry_waiting_in_backoff_can_be_cancelled(make_engine):
    clock = ManualClock()
    src = ScriptedSource("a", clock, RatePolicy(retries=5, backoff=100.0, backoff_max=100.0))
    engine = make_engine({"a": src}, clock=clock)
    rid = engine.submit("a", "flaky:100")
    src.wait_ended(1)
    wait_until(lambda: engine.get(rid).state is State.QUEUED)
    assert engine.cancel(rid) is True
    clock.advance(200)
    assert engine.wait([rid], timeout=5)[0].state is State.CANCELLED
    ok = engine.submit("a", "ok")  # the next job runs; the cancelled retry never does
    assert engine.wait([ok], timeout=5)[0].state is State.COMPLETED
    assert src.starts() == 2


# -- Retry-After -------------------------------------------------------------------


def test_retry_after_pauses_one_source_not_the_other(make_engine):
    clock = ManualClock()
    a = ScriptedSource("a", clock, RatePolicy(concurrency=2))
    b = ScriptedSource("b", clock, RatePolicy(concurrency=2))
    engine = make_engine({"a": a, "b": b}, clock=clock)
    t0 = clock.now()
    first = engine.submit("a", "retry-after:30")
    a.wait_ended(1)
    rest = [engine.submit("a", "ok") for _ in range(3)]
    bs = [engine.submit("b", "block:b") for _ in range(20)]
    b.wait_started(2)
    assert b.peak == 2  # b runs at its full concurrency while a is paused
    b.release("b")
    assert all(r.state is State.COMPLETED for r in engine.wait(bs, timeout=20))
    assert a.starts() == 1 and engine.get(first).state is State.QUEUED
    assert "retry after 30 s" in engine.get(first).error
    assert all(engine.get(i).state is State.QUEUED for i in rest)
    clock.advance(29.5)
    time.sleep(0.05)  # a thread that ignored the pause would start within this
    assert a.starts() == 1
    clock.advance(0.5)
    recs = engine.wait([first, *rest], timeout=10)
    assert all(r.state is State.COMPLETED for r in recs)
    assert recs[0].retries == 0 and recs[0].attempts == 2  # the wait used up no retry
    assert min(x.start_at for x in a.attempts[1:]) >= t0 + 30
    assert a.attempts[1].job_id == first  # it kept its place at the front


def test_retry_after_does_not_use_retries(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock, RatePolicy(retries=0))
    engine = make_engine({"a": a}, clock=clock)
    rec = engine.wait([engine.submit("a", "retry-after:0:3")], timeout=10)[0]
    assert rec.state is State.COMPLETED and rec.attempts == 4 and rec.retries == 0


def test_retry_after_longer_than_the_cap_fails_and_the_chain_moves_on(make_engine):
    clock = ManualClock()
    a = ScriptedSource("a", clock, RatePolicy(retries=3, max_retry_after=60.0))
    b = ScriptedSource("b", clock, RatePolicy(max_retry_after=120.0))  # b waits it out
    engine = make_engine({"a": a, "b": b}, clock=clock)
    alone, chained = engine.submit("a", "retry-after:120"), engine.submit(["a", "b"], "retry-after:120")
    recs = engine.wait([alone], timeout=10)
    assert recs[0].state is State.FAILED and "retry after 120 s" in recs[0].error
    assert recs[0].attempts == 1  # neither paused nor retried
    b.wait_ended(1)
    wait_until(lambda: engine.get(chained).state is State.QUEUED)
    assert engine.get(chained).source == "b"  # a did not wait; b does
    clock.advance(120)
    rec = engine.wait([chained], timeout=10)[0]
    assert rec.state is State.COMPLETED and [t.source for t in rec.tried] == ["a"]
    ok = engine.submit("a", "ok")  # the source was never paused
    assert engine.wait([ok], timeout=10)[0].state is State.COMPLETED


# -- per-minute cap ------------------------------------------------------------------


def test_per_minute_never_exceeded_across_200_jobs(make_engine):
    clock = ManualClock()
    cap = 30
    src = ScriptedSource("a", clock, RatePolicy(concurrency=4, per_minute=cap))
    engine = make_engine({"a": src}, clock=clock)
    ids = [engine.submit("a", "ok") for _ in range(200)]
    drive(clock, ended(engine, ids), step=2.0)
    starts = sorted(a.start_at for a in src.attempts)
    assert len(starts) == 200
    for i in range(len(starts) - cap):
        assert starts[i + cap] - starts[i] >= 60.0, f"{cap + 1} starts within 60 s at {i}"
    # and the quota is used: some 60 s window holds a full quota of starts
    assert any(starts[i + cap - 1] - starts[i] < 60.0 for i in range(len(starts) - cap + 1))


# -- timeouts and the stall watchdog -------------------------------------------------


def test_hung_plugin_times_out(make_engine):
    clock = ManualClock()
    src = ScriptedSource("a", clock, RatePolicy(timeout=5.0))
    engine = make_engine({"a": src}, clock=clock)
    rid = engine.submit("a", "hang:h")
    src.wait_started(1)
    clock.advance(4.9)
    time.sleep(0.05)  # a watchdog firing early would do so within this
    assert engine.get(rid).state is State.RUNNING
    clock.advance(0.2)
    rec = engine.wait([rid], timeout=5)[0]
    assert rec.state is State.FAILED and rec.error == "timed out after 5 s"
    assert engine.worker_stats()["a"][1] == 1  # the hung thread keeps its slot
    src.release("h")
    src.wait_ended(1)
    wait_until(lambda: list(engine.dest_dir.iterdir()) == [])  # what it landed late is removed
    assert engine.get(rid).state is State.FAILED


def test_close_lists_a_timed_out_download_whose_plugin_still_hangs(make_engine):
    clock = ManualClock()
    src = ScriptedSource("a", clock, RatePolicy(timeout=5.0))
    engine = make_engine({"a": src}, clock=clock)
    rid = engine.submit("a", "hang:h")
    src.wait_started(1)
    clock.advance(5.1)
    assert engine.wait([rid], timeout=5)[0].state is State.FAILED  # ended; its thread still runs
    stuck = engine.close(timeout=0.3)
    assert [(r.id, r.state) for r in stuck] == [(rid, State.FAILED)]
    src.release("h")
    src.wait_ended(1)


def test_stalled_plugin_caught_by_watchdog(make_engine):
    clock = ManualClock()
    src = ScriptedSource("a", clock, RatePolicy(stall_timeout=3.0, timeout=100.0))
    engine = make_engine({"a": src}, clock=clock)
    rid = engine.submit("a", "stall:s")
    src.wait_started(1)
    clock.advance(2)
    src.poke("s")
    wait_until(lambda: engine.get(rid).transferred == 1)
    clock.advance(2)  # 4 s running, 2 s since the last progress
    time.sleep(0.05)
    assert engine.get(rid).state is State.RUNNING
    clock.advance(1.5)
    rec = engine.wait([rid], timeout=5)[0]
    assert rec.state is State.FAILED and rec.error == "stalled: no progress for 3 s"
    src.wait_ended(1)
    assert src.attempts[0].saw_cancel


def test_timed_out_source_falls_back_in_a_chain(make_engine):
    clock = ManualClock()
    a = TranslatingSource("a", clock, lambda t: "hang:a", policy=RatePolicy(timeout=10.0))
    b = ScriptedSource("b", clock)
    engine = make_engine({"a": a, "b": b}, clock=clock)
    rid = engine.submit(["a", "b"], "ok")
    a.wait_started(1)
    clock.advance(11)
    rec = engine.wait([rid], timeout=5)[0]
    assert rec.state is State.COMPLETED and rec.source == "b"
    assert rec.tried == (Tried("a", "timed out after 10 s"),)
    a.release("a")


# -- policy changes at run time ------------------------------------------------------------


def test_set_policy_raises_and_lowers_concurrency_under_a_burst(make_engine):
    clock = SystemClock()
    src = ScriptedSource("a", clock, RatePolicy(concurrency=2))
    engine = make_engine({"a": src})
    ids = [engine.submit("a", f"block:k{i}") for i in range(8)]
    src.wait_started(2)
    assert src.running == 2 and engine.worker_stats()["a"][2] == 6
    engine.set_policy("a", RatePolicy(concurrency=4))
    src.wait_started(4)
    assert src.running == 4 and src.peak == 4
    assert engine.sources()[0].policy == RatePolicy(concurrency=4)
    engine.set_policy("a", RatePolicy(concurrency=1))
    held = [a.target.split(":")[1] for a in src.attempts]
    src.reset_peak()
    for key in held:
        src.release(key)
    src.wait_started(5)
    src.wait_ended(4)
    src.reset_peak()
    assert src.running == 1
    for i in range(5, 9):
        src.wait_started(i)
        assert src.running == 1
        src.release(src.attempts[i - 1].target.split(":")[1])
    recs = engine.wait(ids, timeout=10)
    assert all(r.state is State.COMPLETED for r in recs)
    assert src.starts() == 8 and len({a.job_id for a in src.attempts}) == 8  # none lost, none run twice
    assert src.peak == 1


def test_set_policy_adds_a_quota_and_a_timeout_at_run_time(make_engine):
    clock = ManualClock()
    src = ScriptedSource("a", clock, RatePolicy(concurrency=2))
    engine = make_engine({"a": src}, clock=clock)
    engine.set_policy("a", RatePolicy(concurrency=2, per_minute=1, timeout=5.0))
    first, second = engine.submit("a", "hang:x"), engine.submit("a", "ok")
    src.wait_started(1)
    time.sleep(0.05)
    assert src.starts() == 1  # the quota holds the second
    clock.advance(6)
    assert engine.wait([first], timeout=5)[0].error == "timed out after 5 s"
    clock.advance(60)
    assert engine.wait([second], timeout=5)[0].state is State.COMPLETED
    src.release("x")
    with pytest.raises(TypeError):
        engine.set_policy("a", {"concurrency": 3})  # type: ignore[arg-type]
    with pytest.raises(UnknownSourceError):
        engine.set_policy("zzz", RatePolicy())


# -- pause and resume ------------------------------------------------------------------------


def test_pause_and_resume_one_source(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock)
    b = ScriptedSource("b", clock)
    engine = make_engine({"a": a, "b": b}, idle_timeout=0.05)
    running = engine.submit("a", "block:r")
    a.wait_started(1)
    engine.pause("a")
    assert engine.paused() == ["a"]
    queued = [engine.submit("a", "ok") for _ in range(3)]
    other = engine.submit("b", "ok")
    assert engine.wait([other], timeout=5)[0].state is State.COMPLETED  # b is not paused
    a.release("r")
    assert engine.wait([running], timeout=5)[0].state is State.COMPLETED  # running ones finish
    wait_until(lambda: engine.worker_stats()["a"][0] == 0)  # the idle thread ended instead
    assert a.starts() == 1 and all(engine.get(i).state is State.QUEUED for i in queued)
    engine.resume("a")
    assert engine.paused() == []
    assert all(r.state is State.COMPLETED for r in engine.wait(queued, timeout=5))


def test_pause_all_covers_sources_not_used_yet(make_engine):
    clock = SystemClock()
    a = ScriptedSource("a", clock)
    b = ScriptedSource("b", clock)
    engine = make_engine({"a": a, "b": b})
    engine.pause()
    assert engine.paused() == ["a", "b"]
    ids = [engine.submit("a", "ok"), engine.submit("b", "ok")]
    assert (
        engine.worker_stats()["a"][0] == 0 and engine.worker_stats()["b"][0] == 0
    )  # no thread to start them
    assert engine.cancel(ids[0]) is True  # a paused queue still cancels
    engine.resume("b")
    assert engine.wait([ids[1]], timeout=5)[0].state is State.COMPLETED
    assert engine.paused() == ["a"] and a.starts() == 0
    engine.resume()
    with pytest.raises(UnknownSourceError):
        engine.pause("nope")


def test_readers_always_find_a_download_that_moves(make_engine):
    """get, cancel and wait never report a chain download unknown while it hops shards."""
    clock = SystemClock()
    srcs = {n: ScriptedSource(n, clock, RatePolicy(concurrency=4)) for n in "abcd"}
    engine = make_engine(srcs)
    ids = [engine.submit(list("abcd"), "fail") for _ in range(300)]
    with reading(engine, ids, readers=2) as errors:
        recs = engine.wait(ids, timeout=30)
    assert errors == []
    assert all(r.state is State.FAILED and len(r.tried) == 4 for r in recs)


def test_cancel_that_waited_out_a_move_follows_the_download(make_engine):
    """A cancel that looked the download up on a, then waited for a's lock while
    the download moved to b, finds it on b and cancels it there."""
    clock = SystemClock()
    a = ScriptedSource("a", clock)
    b = TranslatingSource("b", clock, lambda t: "block:never")
    engine = make_engine({"a": a, "b": b})
    with frozen(engine, "b"):  # the move will hold a still, then wait here for b
        rid = engine.submit(["a", "b"], "fail")
        a.wait_ended(1)
        while not _frozen_elsewhere(engine, "a", 0.05):  # not held by the mover (yet)
            pass
        outcome: list[object] = []
        canceller = threading.Thread(target=lambda: outcome.append(_try(engine.cancel, rid)))
        canceller.start()
        time.sleep(0.05)  # let the cancel find the download on a and wait for a's lock
    canceller.join(5)
    assert outcome == [True]
    assert engine.wait([rid], timeout=5)[0].state is State.CANCELLED
    assert engine.get(rid).source == "b"


class _ProgressThenDrop:
    """A source whose every attempt reports half its bytes, then loses the connection."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        ctx.progress(5, 10)
        raise ConnectionError("dropped halfway")


def test_a_download_moved_down_its_chain_starts_over_with_no_progress(make_engine):
    """The failed source's progress (kept by its retry) does not follow the download to the next source."""
    b = InstrumentedSource("b", RatePolicy(concurrency=1))
    engine = make_engine({"a": _ProgressThenDrop(), "b": b}, policies={"a": RatePolicy(retries=1, backoff=0)})
    busy = engine.submit("b", "block:busy")  # the moved download waits QUEUED behind it
    b.wait_started(1)
    rid = engine.submit(["a", "b"], "block:k")
    wait_until(
        lambda: engine.get(rid).source == "b", 10, lambda: f"the download never moved to b: {engine.get(rid)}"
    )
    record = engine.get(rid)  # QUEUED for as long as b's one slot is busy's
    assert record.state is State.QUEUED, record
    assert (record.progress, record.transferred, record.size) == (0.0, 0, None)
    b.release("busy")
    b.release("k")
    assert engine.wait([busy, rid], timeout=10)[1].state is State.COMPLETED


def _frozen_elsewhere(engine: Engine, source: str, within: float) -> bool:
    """Whether another thread holds ``source`` frozen: a freeze from here does not get in ``within`` s."""
    entered = threading.Event()

    def probe() -> None:
        with frozen(engine, source):
            entered.set()

    threading.Thread(target=probe, name="test-probe", daemon=True).start()
    return not entered.wait(within)


def _try(call: Callable[[str], object], arg: str) -> object:
    try:
        return call(arg)
    except Exception as exc:
        return exc
