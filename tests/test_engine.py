"""The engine and worker: states, cancels, limits, delay, locks, paths, close."""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
from instrumented import InstrumentedSource
from scripted import ScriptedSource
from waiting import wait_until

from headwater import (
    EngineClosedError,
    FieldConflictError,
    InvalidPolicyError,
    ManualClock,
    MemoryStore,
    PluginError,
    RatePolicy,
    Record,
    State,
    StoreError,
    SystemClock,
    Tried,
    UnknownDownloadError,
    UnknownSourceError,
    hookimpl,
)
from headwater._dispatch import Waiter, Watches
from headwater._records import TRANSITIONS, changed, may_transition
from headwater.testing import frozen

pytestmark = pytest.mark.timeout(60)


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("headwater-")]


# -- states ----------------------------------------------------------------------


def test_terminal_states_are_final_in_the_table():
    for state in State:
        if state.terminal:
            assert TRANSITIONS[state] == frozenset()
            assert not any(may_transition(state, other) for other in State)
    assert may_transition(State.QUEUED, State.RUNNING)
    assert may_transition(State.QUEUED, State.CANCELLED)
    assert not may_transition(State.QUEUED, State.COMPLETED)
    assert may_transition(State.RUNNING, State.QUEUED)  # a retry or a move down a chain


#: A value for every field of Record, in order, none its default.
EVERY_FIELD = (
    "1" * 32, "x", "u", "name", "user", State.RUNNING, 2.0, 3.0, 4.0, 5, 6, 7.0, 8.0, "/f", "e", 9,
    10.0, 11.0, {"k": "v"}, (Tried("a", "b"),), ("y",), 12, "skip", True, "/e",
)  # fmt: skip


def test_a_record_holds_what_it_is_made_with_by_position_or_name_and_the_defaults():
    """Record's __init__ (the engine's own over the slots, not attrs') sets every field and default."""
    fields = attrs.fields(Record)
    assert len(EVERY_FIELD) == len(fields)
    by_position = Record(*EVERY_FIELD)
    by_name = Record(**{f.name: v for f, v in zip(fields, EVERY_FIELD, strict=True)})
    for made in (by_position, by_name):
        assert tuple(getattr(made, f.name) for f in fields) == EVERY_FIELD
    least = Record("0" * 32, "s", "t", None, "s", State.QUEUED, 1.0, 1.0)
    for f in fields:
        if f.default is not attrs.NOTHING:
            assert getattr(least, f.name) == f.default, f.name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        least.state = State.RUNNING  # type: ignore[misc]
    with pytest.raises(TypeError, match="nope"):
        Record(*EVERY_FIELD[:8], nope=1)  # type: ignore[call-arg]


def test_changed_makes_what_attrs_evolve_makes():
    """Each field changed alone, and all at once, gives attrs.evolve's record; an unknown name raises."""
    record = Record("0" * 32, "s", "t", None, "s", State.QUEUED, 1.0, 1.0, dest_dir="/d")
    other = Record(*EVERY_FIELD)
    every = {a.name: getattr(other, a.name) for a in attrs.fields(Record)}
    for name, value in every.items():
        assert changed(record, **{name: value}) == attrs.evolve(record, **{name: value}), name
    assert changed(record, **every) == other
    assert changed(record) == record
    with pytest.raises(TypeError, match="nope"):
        changed(record, nope=1)


def test_outcomes_and_record_fields(make_engine):
    src = InstrumentedSource(
        "alpha", RatePolicy(concurrency=2), fields={"track_id": "t1", "username": "a_dl"}
    )
    engine = make_engine({"alpha": src})
    ids = [engine.submit("alpha", t, display_name=f"n{i}") for i, t in enumerate(("ok:a", "none", "raise"))]
    done, declined, raised = engine.wait(ids, timeout=10)
    assert done.state is State.COMPLETED and Path(done.file_path).is_file()
    assert done.progress == 100.0 and done.size == done.transferred == 10
    assert Path(done.file_path).parent == engine.dest_dir
    assert declined.state is State.FAILED and "declined" in declined.error
    assert raised.state is State.FAILED and "RuntimeError: instrumented failure" in raised.error
    assert done.extra == {"track_id": "t1"} and done.username == "a_dl" and done.display_name == "n0"
    assert done.attempts == 1 and done.started_at <= done.finished_at


def test_ids_start_with_the_time_they_were_made(make_engine):
    """32 hex digits, the first 12 the submit time in ms: ids sort by creation, as a journal wants."""
    engine = make_engine({"alpha": InstrumentedSource("alpha")})
    ids = []
    for _ in range(3):
        before = time.time_ns() // 1_000_000
        ids.append(engine.submit("alpha", "ok:a"))
        after = time.time_ns() // 1_000_000
        assert len(ids[-1]) == 32 and int(ids[-1], 16) >= 0
        assert before <= int(ids[-1][:12], 16) <= after
        while time.time_ns() // 1_000_000 == after:  # the next id is made in a later millisecond
            time.sleep(0.0005)
    assert sorted(ids) == ids and len({i[12:] for i in ids}) == 3
    engine.wait(ids, timeout=10)


def test_record_fields_cannot_override_core_fields(make_engine):
    engine = make_engine({"alpha": InstrumentedSource("alpha", fields={"state": "completed"})})
    with pytest.raises(FieldConflictError, match=r"'alpha'.*'state'.*only 'username'"):
        engine.submit("alpha", "ok:a")
    assert engine.records() == []


def test_record_fields_must_be_plain_values(make_engine):
    engine = make_engine({"alpha": InstrumentedSource("alpha", fields={"when": object()})})
    with pytest.raises(PluginError, match="'alpha'.*'when'"):
        engine.submit("alpha", "ok:a")


def test_unknown_source_names_the_known_ones(make_engine):
    engine = make_engine({"alpha": InstrumentedSource("alpha"), "beta": InstrumentedSource("beta")})
    with pytest.raises(UnknownSourceError, match="'gamma'.*alpha, beta"):
        engine.submit("gamma", "x")
    with pytest.raises(ValueError, match="non-empty"):
        engine.submit("alpha", "")


def test_aliases_resolve_everywhere(make_engine):
    src = InstrumentedSource("alpha", aliases=("alpha_dl",))
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha_dl", "block:k")
    src.wait_started(1)
    assert [r.id for r in engine.records("alpha_dl")] == [rid]
    assert engine.get(rid).source == "alpha"
    assert engine.cancel(rid, source_hint="alpha_dl") is True
    with pytest.raises(UnknownSourceError):
        engine.cancel(rid, source_hint="nope")


# -- the worker: limits and pacing ---------------------------------------------------


def test_concurrency_cap_holds_under_a_burst(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=3))
    engine = make_engine({"alpha": src})
    ids = [engine.submit("alpha", "block:wave") for _ in range(40)]
    src.wait_started(3)
    # Three are running and blocked; the other 37 are queued and cost no thread.
    assert src.running == 3
    assert len([t for t in engine_threads() if t.name.startswith("headwater-alpha-")]) == 3
    assert sum(r.state is State.QUEUED for r in engine.records()) == 37
    src.release("wave")
    records = engine.wait(ids, timeout=20)
    assert all(r.state is State.COMPLETED for r in records)
    assert src.peak == 3


def test_queued_jobs_cost_no_thread(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=2))
    engine = make_engine({"alpha": src})
    ids = [engine.submit("alpha", "block:k") for _ in range(2_000)]
    src.wait_started(2)
    assert engine.worker_stats()["alpha"][:2] == (2, 2)
    assert len(engine_threads()) == 2
    for rid in ids[2:]:
        engine.cancel(rid)
    src.release("k")
    engine.wait(ids, timeout=20)
    assert src.starts() == 2


def test_delay_holds_after_success_and_failure(make_engine):
    delay = 0.15
    src = InstrumentedSource("slow", RatePolicy(concurrency=2, delay=delay))
    engine = make_engine({"slow": src})
    ids = [engine.submit("slow", t) for t in ("raise", "ok:a", "none", "ok:b", "raise", "ok:c")]
    records = engine.wait(ids, timeout=20)
    # The engine's clock: a start may not come within `delay` of an end the
    # engine had recorded before it (a start while another download is still
    # running is concurrent, not "next").
    for later in records:
        ended_before = [r.finished_at for r in records if r.finished_at < later.started_at]
        if ended_before:
            assert later.started_at - max(ended_before) >= delay - 0.002
    assert sum(1 for r in records if any(o.finished_at < r.started_at for o in records)) >= 4


def test_delay_with_one_slot_holds_on_the_plugins_clock(make_engine):
    delay = 0.1
    src = InstrumentedSource("slow", RatePolicy(concurrency=1, delay=delay))
    engine = make_engine({"slow": src})
    engine.wait([engine.submit("slow", t) for t in ("raise", "ok:a", "none", "ok:b")], timeout=20)
    events = src.events
    for end, start in zip(events[1::2], events[2::2], strict=False):
        assert (end.kind, start.kind) == ("end", "start")
        assert start.at - end.at >= delay


def test_invalid_policies_are_refused():
    with pytest.raises(InvalidPolicyError, match="concurrency"):
        RatePolicy(concurrency=0)
    with pytest.raises(InvalidPolicyError, match="delay"):
        RatePolicy(delay=-1)
    with pytest.raises(InvalidPolicyError, match="delay"):
        RatePolicy(delay=float("nan"))


def test_a_plugin_with_a_bad_policy_is_left_out(make_engine):
    class BadPolicy:
        @hookimpl
        def download_impl(self, job, ctx):
            return None

        @hookimpl
        def rate_policy(self):
            return RatePolicy(concurrency=0)

    engine = make_engine({"bad": BadPolicy(), "alpha": InstrumentedSource("alpha")})
    assert [s.name for s in engine.sources()] == ["alpha"]
    (broken,) = [s for s in engine.sources(include_broken=True) if s.status == "broken"]
    assert broken.name == "bad" and "concurrency" in broken.error


def test_user_policy_overrides_the_plugins(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1), aliases=("a",))
    engine = make_engine({"alpha": src}, policies={"a": RatePolicy(concurrency=4)})
    assert engine.sources()[0].policy == RatePolicy(concurrency=4)
    ids = [engine.submit("alpha", "block:k") for _ in range(4)]
    src.wait_started(4)
    src.release("k")
    engine.wait(ids, timeout=10)
    assert src.peak == 4


def test_threads_end_when_idle(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=2))
    engine = make_engine({"alpha": src}, idle_timeout=0.05)
    before = set(threading.enumerate())
    engine.wait([engine.submit("alpha", "ok:a"), engine.submit("alpha", "ok:b")], timeout=10)
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("headwater-alpha-")]
    for thread in workers:
        thread.join(5)
        assert not thread.is_alive()
    assert engine.worker_stats()["alpha"][0] == 0
    # and work arriving later starts a thread again
    assert engine.wait([engine.submit("alpha", "ok:c")], timeout=10)[0].state is State.COMPLETED


def test_the_delay_is_measured_on_the_engines_clock(make_engine):
    clock = ManualClock(start=1e6)  # far from time.monotonic, whichever way
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1, delay=60))
    engine = make_engine({"alpha": src}, clock=clock)
    assert engine.wait([engine.submit("alpha", "ok:1")], timeout=10)[0].state is State.COMPLETED
    second = engine.submit("alpha", "ok:2")
    with pytest.raises(TimeoutError):  # none of the 60 s have passed on the engine's clock
        engine.wait([second], timeout=0.3)
    clock.advance(59)
    with pytest.raises(TimeoutError):
        engine.wait([second], timeout=0.1)
    clock.advance(1)
    assert engine.wait([second], timeout=10)[0].state is State.COMPLETED


# -- locks -------------------------------------------------------------------------


def test_a_held_source_lock_does_not_delay_another_source(make_engine):
    a, b = InstrumentedSource("alpha"), InstrumentedSource("beta")
    engine = make_engine({"alpha": a, "beta": b})
    first = engine.submit("alpha", "block:k")
    a.wait_started(1)
    with frozen(engine, "alpha"):  # as if alpha were stuck
        ids = [engine.submit("beta", f"ok:{i}") for i in range(20)]
        records = engine.wait(ids, timeout=10)
        assert all(r.state is State.COMPLETED for r in records)
        assert engine.get(ids[0]).state is State.COMPLETED
    a.release("k")
    engine.wait([first], timeout=10)


def test_a_frozen_source_starts_and_ends_nothing_but_what_the_freezing_thread_does(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1))
    engine = make_engine({"alpha": src})
    running = engine.submit("alpha", "block:r")
    src.wait_started(1)
    queued = engine.submit("alpha", "ok:q")
    with frozen(engine, "alpha") as view:
        src.release("r")
        with src.started:  # download_impl has returned its file ...
            assert src.started.wait_for(lambda: len(src.events) >= 2, 10)
        with pytest.raises(TimeoutError):  # ... but the download cannot end, nor the next start
            engine.wait([running], timeout=0.2)
        assert [(r.id, r.state) for r in view.records()] == [(running, State.RUNNING), (queued, State.QUEUED)]
        assert engine.cancel(queued)  # the freezing thread still acts
        assert view.state(queued) is State.CANCELLED
    assert engine.wait([running], timeout=10)[0].state is State.COMPLETED
    assert src.started_targets() == ["block:r"]


# -- cancel ------------------------------------------------------------------------


def test_cancel_while_queued_never_starts(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src})
    first = engine.submit("alpha", "block:k")
    src.wait_started(1)
    queued = engine.submit("alpha", "ok:never")
    assert engine.cancel(queued) is True
    assert engine.get(queued).state is State.CANCELLED
    src.release("k")
    after = engine.submit("alpha", "ok:after")
    engine.wait([first, queued, after], timeout=10)
    assert "ok:never" not in src.started_targets()
    assert engine.cancel(queued) is False  # already ended


def test_cancel_while_running_is_immediate_and_final(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha", "block:k")
    src.wait_started(1)
    assert engine.cancel(rid) is True
    # CANCELLED at once, while download_impl is still inside its loop
    assert engine.get(rid).state is State.CANCELLED
    follower = engine.submit("alpha", "ok:next")
    engine.wait([follower], timeout=10)  # runs after the cancelled one returned (concurrency 1)
    record = engine.get(rid)
    assert record.state is State.CANCELLED and record.error is None and record.file_path is None


def test_a_file_landed_after_cancel_is_deleted(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha", "ignore-cancel:k")
    src.wait_started(1)
    assert engine.cancel(rid) is True
    src.release("k")  # the plugin ignores the cancel and lands its file anyway
    follower = engine.submit("alpha", "ok:next")
    engine.wait([follower], timeout=10)
    landed = engine.dest_dir / f"alpha-{rid}.bin"
    assert not landed.exists()
    assert engine.get(rid).state is State.CANCELLED


def test_a_landed_file_is_gone_before_the_next_download_of_its_source_starts(make_engine):
    """The file is deleted while the download still holds its source's one slot."""
    seen: list[bool] = []
    landed: list[Path] = []

    class Looking(InstrumentedSource):
        @hookimpl
        def download_impl(self, job, ctx):
            if job.target == "look":
                seen.append(landed[0].exists())  # the cancelled download's file, as this one starts
                return None
            return super().download_impl(job, ctx)

    src = Looking("alpha", RatePolicy(concurrency=1))
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha", "ignore-cancel:k")
    landed.append(src.landed_path(engine.dest_dir, rid))
    src.wait_started(1)
    assert engine.cancel(rid) is True
    follower = engine.submit("alpha", "look")
    src.release("k")  # the plugin ignores the cancel and lands its file anyway
    engine.wait([follower], timeout=10)
    assert seen == [False]


class FullDisk(MemoryStore):
    """A store whose every state commit fails, as on a full disk: the engine keeps each record in memory only.

    A terminal record the store refused stays on its shard (the only copy), so
    only the download's own check-and-sets keep a cancel standing.
    """

    def commit(self, records: Sequence[Record]) -> None:
        raise StoreError("cannot write the journal: database or disk is full")


def test_a_cancel_after_the_end_changes_nothing_when_the_store_cannot_write(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src}, store=FullDisk())
    rid = engine.submit("alpha", "ok:x")
    assert engine.wait([rid], timeout=10)[0].state is State.COMPLETED  # kept on its shard, not committed
    assert engine.cancel(rid) is False
    assert engine.get(rid).state is State.COMPLETED


def test_a_download_cancelled_while_queued_never_starts_when_the_store_cannot_write(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1))
    engine = make_engine({"alpha": src}, store=FullDisk())
    first = engine.submit("alpha", "block:k")
    src.wait_started(1)
    queued = engine.submit("alpha", "ok:queued")
    assert engine.cancel(queued) is True
    follower = engine.submit("alpha", "ok:next")
    src.release("k")
    engine.wait([first, follower], timeout=10)  # one slot, first in first out: the cancelled one came between
    assert src.started_targets() == ["block:k", "ok:next"]
    assert engine.get(queued).state is State.CANCELLED


def test_a_cancel_stands_when_the_store_cannot_write_and_the_plugin_lands_a_file_anyway(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1))
    engine = make_engine({"alpha": src}, store=FullDisk())
    rid = engine.submit("alpha", "ignore-cancel:k")
    src.wait_started(1)
    assert engine.cancel(rid) is True
    follower = engine.submit("alpha", "ok:next")
    src.release("k")
    engine.wait([follower], timeout=10)  # one slot: the cancelled attempt's end came first
    assert engine.get(rid).state is State.CANCELLED
    assert not src.landed_path(engine.dest_dir, rid).exists()


def test_cancel_racing_completion_leaves_one_terminal_state(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=4))
    engine = make_engine({"alpha": src})
    cancelled: set[str] = set()
    records = []
    for _ in range(30):
        ids = [engine.submit("alpha", "ok:x") for _ in range(4)]
        cancelled |= {rid for rid in ids if engine.cancel(rid)}
        records += engine.wait(ids, timeout=10)
    assert engine.close(timeout=10) == []  # every download_impl has returned
    for record in records:
        landed = engine.dest_dir / f"alpha-{record.id}.bin"
        if record.id in cancelled:
            assert record.state is State.CANCELLED and not landed.exists()
        else:
            assert record.state is State.COMPLETED and landed.exists()
            assert record.file_path == str(landed)


def test_unknown_ids(make_engine):
    engine = make_engine({"alpha": InstrumentedSource("alpha")})
    for call in (engine.get, engine.cancel, engine.remove):
        with pytest.raises(UnknownDownloadError, match="'nope'"):
            call("nope")
    with pytest.raises(UnknownDownloadError):
        engine.wait(["nope"])


def test_remove_cancels_and_forgets(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha", "block:k")
    src.wait_started(1)
    final = engine.remove(rid)
    assert final.state is State.CANCELLED
    with pytest.raises(UnknownDownloadError):
        engine.get(rid)
    assert engine.records() == []
    done = engine.submit("alpha", "ok:a")
    engine.wait([done], timeout=10)
    assert engine.remove(done).state is State.COMPLETED
    assert len(list(engine.dest_dir.glob("alpha-*.bin"))) == 1  # a completed file stays


def test_wait_times_out(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha", "block:k")
    with pytest.raises(TimeoutError, match="1 of 1"):
        engine.wait([rid], timeout=0.05)
    src.release("k")
    assert engine.wait([rid], timeout=10)[0].state is State.COMPLETED


def test_wait_returns_as_soon_as_a_running_download_is_cancelled(make_engine):
    src = InstrumentedSource("alpha")
    engine = make_engine({"alpha": src})
    rid = engine.submit("alpha", "ignore-cancel:k")  # download_impl goes on after the cancel
    src.wait_started(1)
    waited: list[State] = []
    waiter = threading.Thread(target=lambda: waited.append(engine.wait([rid], timeout=30)[0].state))
    waiter.start()
    time.sleep(0.1)  # a head start to block in wait (were it late, the test could only pass)
    assert engine.cancel(rid)
    waiter.join(5)
    returned_before_download_impl = not waiter.is_alive()
    src.release("k")
    waiter.join(10)
    assert returned_before_download_impl, "wait returned only when download_impl did, not at the cancel"
    assert waited == [State.CANCELLED]


def test_a_wait_for_many_waits_on_for_one_retried_while_the_others_ended(make_engine):
    """A wait wakes once it has heard of every id; a retry is heard of too, so it reads again and waits on."""
    clock = ManualClock()
    src = ScriptedSource("a", clock, RatePolicy(concurrency=3, retries=1, backoff=100.0, backoff_max=100.0))
    engine = make_engine({"a": src}, clock=clock)
    engine.pause("a")
    ids = [engine.submit("a", t) for t in ("block:x", "flaky:1", "block:y")]
    got: list[list[Record]] = []
    waiter = threading.Thread(target=lambda: got.append(engine.wait(ids, timeout=30)))
    waiter.start()
    time.sleep(0.1)  # a head start to block in wait before the retry (were it late, the test could only pass)
    engine.resume("a")
    src.wait_ended(1)  # the flaky one's first attempt
    wait_until(lambda: engine.get(ids[1]).state is State.QUEUED)  # its retry waits out its backoff
    src.release("x")
    src.release("y")
    wait_until(lambda: engine.get(ids[0]).state.terminal and engine.get(ids[2]).state.terminal)
    waiter.join(0.3)
    assert waiter.is_alive(), "wait returned while a download was still in its retry's backoff"
    clock.advance(200)
    waiter.join(10)
    assert [r.state for r in got[0]] == [State.COMPLETED] * 3


def test_a_wait_registering_while_a_notify_takes_its_ids_list_hears_of_it() -> None:
    """A notify (a retry, say) that pops an id's list between a wait's two registration steps is heard."""
    watches = Watches()

    class NotifiedBetween(dict[str, list[Waiter]]):
        def setdefault(self, key: str, default: list[Waiter]) -> list[Waiter]:  # type: ignore[override]
            got = super().setdefault(key, default)
            watches.notify(key)  # runs after the lookup, before the wait appends itself
            return got

    watches.table = NotifiedBetween()
    waiter = watches.for_ids(["a", "b"])
    assert waiter.pending == set() and waiter.event.is_set()
    watches.table = {}
    other = watches.for_ids(["a", "b"])
    watches.notify("a")
    assert other.pending == {"b"} and not other.event.is_set()
    watches.notify("b")
    assert other.event.is_set()


def test_close_ends_a_wait_for_a_queued_download(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1))
    engine = make_engine({"alpha": src})
    running = engine.submit("alpha", "ignore-cancel:k")
    src.wait_started(1)
    queued = engine.submit("alpha", "ok:q")
    raised: list[EngineClosedError] = []

    def wait() -> None:
        try:
            engine.wait([running, queued], timeout=30)
        except EngineClosedError as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)  # a head start to block in wait (were it late, the test could only pass)
    engine.close(timeout=0.2)
    waiter.join(5)
    returned = not waiter.is_alive()
    src.release("k")
    assert returned, "wait went on after the engine closed"
    assert len(raised) == 1 and queued in str(raised[0])


def test_a_cancelled_download_returning_a_file_outside_the_destination_leaves_that_file(
    make_engine, tmp_path: Path
):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the engine's to delete")
    started = threading.Event()

    class ReturnsOutside:
        @hookimpl
        def download_impl(self, job, ctx):
            started.set()
            ctx.cancelled.wait(10)
            return outside

    engine = make_engine({"out": ReturnsOutside()})
    rid = engine.submit("out", "x")
    assert started.wait(10)
    assert engine.cancel(rid)
    assert engine.close(timeout=10) == []  # download_impl has returned and its end is handled
    assert engine.get(rid).state is State.CANCELLED
    assert outside.read_text() == "not the engine's to delete"


def test_an_ended_download_leaves_no_reference_cycle(make_engine):
    """A download's objects (its Download, context, events) are freed as it ends, by reference counts.

    A cycle among them (the context's describe callback holding the
    Download) left about twenty objects a download for the cyclic garbage
    collector, whose runs then doubled the engine's CPU per download.
    """
    engine = make_engine({"alpha": Returns(lambda ctx: ctx.dest_dir / "f")})  # keeps no context
    (engine.dest_dir / "f").write_bytes(b"x")
    engine.wait([engine.submit("alpha", "warm")], timeout=10)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage
    try:
        ids = [engine.submit("alpha", f"f{i}") for i in range(20)]
        records = engine.wait(ids, timeout=10)
        gc.collect()
        cyclic = sorted({type(o).__name__ for o in gc.garbage} & {"Download", "DownloadContext"})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert all(r.state is State.COMPLETED for r in records)
    assert cyclic == []


# -- progress ----------------------------------------------------------------------


class Progressing:
    def __init__(self) -> None:
        self.reported = threading.Event()
        self.go = threading.Event()
        self.ctx = None

    @hookimpl
    def download_impl(self, job, ctx):
        self.ctx = ctx
        ctx.progress(25, 100)
        self.reported.set()
        self.go.wait(10)
        path = ctx.dest_dir / "p.bin"
        path.write_bytes(b"y" * 100)
        return path


def test_progress_shows_while_running_and_late_reports_are_dropped(make_engine):
    plugin = Progressing()
    engine = make_engine({"p": plugin})
    rid = engine.submit("p", "t")
    assert plugin.reported.wait(10)
    running = engine.get(rid)
    assert running.state is State.RUNNING
    assert (running.transferred, running.size, running.progress) == (25, 100, 25.0)
    plugin.go.set()
    done = engine.wait([rid], timeout=10)[0]
    plugin.ctx.progress(5, 100)  # a late report after the end
    assert engine.get(rid) == done and done.transferred == 100


def test_bad_progress_values_fail_the_download(make_engine):
    class Bad:
        @hookimpl
        def download_impl(self, job, ctx):
            ctx.progress(-1)

    engine = make_engine({"bad": Bad()})
    record = engine.wait([engine.submit("bad", "t")], timeout=10)[0]
    assert record.state is State.FAILED and "transferred must be an int >= 0" in record.error


# -- paths -------------------------------------------------------------------------


class Returns:
    def __init__(self, make_path):
        self.make_path = make_path

    @hookimpl
    def download_impl(self, job, ctx):
        return self.make_path(ctx)


def test_a_path_outside_dest_fails_and_is_never_deleted(make_engine, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    engine = make_engine({"out": Returns(lambda ctx: outside)})
    record = engine.wait([engine.submit("out", "t")], timeout=10)[0]
    assert record.state is State.FAILED and "outside the destination folder" in record.error
    assert outside.read_text() == "keep me"


def test_a_symlink_leading_out_of_dest_fails(make_engine, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("keep me")

    def link(ctx):
        path = ctx.dest_dir / "innocent.txt"
        path.symlink_to(outside)
        return path

    engine = make_engine({"link": Returns(link)})
    record = engine.wait([engine.submit("link", "t")], timeout=10)[0]
    assert record.state is State.FAILED and "outside the destination folder" in record.error
    assert outside.exists()


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda ctx: "missing.bin", "no regular file"),
        (lambda ctx: ctx.dest_dir, "outside the destination folder"),
        (lambda ctx: 42, "str or os.PathLike"),
    ],
)
def test_bad_returns_fail_clearly(make_engine, make_path, message):
    engine = make_engine({"r": Returns(make_path)})
    record = engine.wait([engine.submit("r", "t")], timeout=10)[0]
    assert record.state is State.FAILED and message in record.error


def test_a_relative_path_is_taken_inside_dest(make_engine):
    def relative(ctx):
        (ctx.dest_dir / "rel.bin").write_bytes(b"z")
        return "rel.bin"

    engine = make_engine({"r": Returns(relative)})
    record = engine.wait([engine.submit("r", "t")], timeout=10)[0]
    assert record.state is State.COMPLETED and record.file_path == str(engine.dest_dir / "rel.bin")


# -- close -------------------------------------------------------------------------


def test_close_returns_in_time_with_a_hung_plugin(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=2))
    engine = make_engine({"alpha": src})
    hung = engine.submit("alpha", "ignore-cancel:forever")
    src.wait_started(1)
    queued = [engine.submit("alpha", "block:never") for _ in range(3)]
    src.wait_started(2)
    t0 = time.monotonic()
    stuck = engine.close(timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    assert [r.id for r in stuck] == [hung]
    assert engine.get(hung).state is State.CANCELLED
    states = [engine.get(q).state for q in queued]
    assert states.count(State.CANCELLED) == 1 and states.count(State.QUEUED) == 2
    with pytest.raises(EngineClosedError):
        engine.submit("alpha", "ok:a")
    src.release_all()


def test_the_engine_draws_no_number_from_the_random_modules_shared_instance(make_engine) -> None:
    """Ids and retry backoffs come from the engine's own generator: a host's seed stays its own."""
    random.seed(20261202)
    expected = [random.random() for _ in range(3)]
    random.seed(20261202)
    source = ScriptedSource("s", SystemClock(), RatePolicy(retries=1, backoff=0.001))
    engine = make_engine({"s": source})
    ids = [engine.submit("s", "flaky:1"), engine.submit("s", "ok")]
    assert [(r.state, r.retries) for r in engine.wait(ids, timeout=30)] == [
        (State.COMPLETED, 1),
        (State.COMPLETED, 0),
    ]
    assert [random.random() for _ in range(3)] == expected
