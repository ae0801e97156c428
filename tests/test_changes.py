"""The engine's change feed (Engine.subscribe): what is fed, in which order, overflow and closing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from instrumented import InstrumentedSource

from headwater import Change, ChangeKind, Engine, RatePolicy, State, Subscription, SubscriptionOverflow

pytestmark = pytest.mark.timeout(60)


def drain(subscription: Subscription, until: Callable[[list[Change]], bool]) -> list[Change]:
    """Every change until ``until`` holds for them (10 s at most)."""
    found: list[Change] = []
    for _ in range(100):
        found += subscription.get(0.1)
        if until(found):
            return found
    raise AssertionError(f"the feed stopped at {[(c.kind, c.record.state) for c in found]}")


def states_of(changes: list[Change], download_id: str) -> list[str]:
    return [
        "removed" if c.kind is ChangeKind.REMOVED else c.record.state.value
        for c in changes
        if c.record.id == download_id
    ]


def test_a_download_is_fed_queued_running_completed_then_removed(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine({"inst": InstrumentedSource("inst")})
    with engine.subscribe() as subscription:
        download_id = engine.submit("inst", "ok:a")
        changes = drain(subscription, lambda f: states_of(f, download_id)[-1:] == ["completed"])
        assert states_of(changes, download_id) == ["queued", "running", "completed"]
        completed = changes[-1].record
        assert completed == engine.get(download_id) and completed.file_path is not None
        engine.remove(download_id)
        (removed,) = subscription.get(1)
        assert removed.kind is ChangeKind.REMOVED and removed.record == completed


def test_cancel_and_a_chain_move_are_fed_in_order(make_engine: Callable[..., Engine]) -> None:
    first, second = InstrumentedSource("first"), InstrumentedSource("second")
    engine = make_engine({"first": first, "second": second})
    with engine.subscribe() as subscription:
        moved = engine.submit(["first", "second"], "raise")
        cancelled = engine.submit("first", "block:hold")
        first.wait_started(2)
        engine.cancel(cancelled)
        changes = drain(
            subscription,
            lambda f: (
                states_of(f, moved)[-1:] == ["failed"] and states_of(f, cancelled)[-1:] == ["cancelled"]
            ),
        )
    assert states_of(changes, moved) == ["queued", "running", "queued", "running", "failed"]
    assert [c.record.source for c in changes if c.record.id == moved] == [
        "first",
        "first",
        "second",
        "second",
        "second",
    ]
    assert states_of(changes, cancelled) == ["queued", "running", "cancelled"]


def test_each_downloads_changes_keep_their_order_under_concurrency(tmp_path: Path) -> None:
    """Eight threads submit to four sources at once; every download's changes arrive in its own order."""
    sources = {f"s{n}": InstrumentedSource(f"s{n}", RatePolicy(concurrency=3)) for n in range(4)}
    with Engine(tmp_path, plugins=sources) as engine, engine.subscribe() as subscription:
        start = threading.Barrier(8)
        ids: list[str] = []
        lock = threading.Lock()

        def submit(worker: int) -> None:
            start.wait()
            for n in range(25):
                download_id = engine.submit(f"s{(worker + n) % 4}", f"ok:{worker}-{n}")
                with lock:
                    ids.append(download_id)

        threads = [threading.Thread(target=submit, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        changes = drain(
            subscription, lambda f: sum(c.record.state is State.COMPLETED for c in f) == len(ids) == 200
        )
    for download_id in ids:
        assert states_of(changes, download_id) == ["queued", "running", "completed"]


def test_an_overflow_drops_the_queue_and_says_so_once(make_engine: Callable[..., Engine]) -> None:
    source = InstrumentedSource("inst")
    engine = make_engine({"inst": source})
    engine.pause("inst")
    with engine.subscribe(maxsize=5) as subscription:
        ids = [engine.submit("inst", f"ok:{n}") for n in range(6)]  # one more than it holds
        assert subscription.wait(1)
        with pytest.raises(SubscriptionOverflow):
            subscription.get(0)
        assert subscription.get(0) == []  # the queue was dropped; the error came once
        later = engine.submit("inst", "ok:later")  # changes after the overflow are fed again
        (change,) = subscription.get(1)
        assert change.record.id == later
        # The documented way back: read the records afresh.
        assert {r.id for r in engine.records("inst")} == {*ids, later}


def test_close_wakes_a_waiting_reader_and_engine_close_closes_all(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine({"inst": InstrumentedSource("inst")})
    subscription = engine.subscribe()
    woke = threading.Event()

    def reader() -> None:
        subscription.get(None)  # waits until a change or the close
        woke.set()

    thread = threading.Thread(target=reader)
    thread.start()
    engine.close()
    thread.join(5)
    assert woke.is_set() and subscription.closed
    assert subscription.get(None) == []  # a closed subscription never waits
    assert engine.subscribe().closed  # after close, subscriptions are closed from the start


def test_a_closed_subscription_receives_nothing_and_costs_the_engine_nothing(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine({"inst": InstrumentedSource("inst")})
    subscription = engine.subscribe()
    subscription.close()
    download_id = engine.submit("inst", "ok:a")
    engine.wait([download_id], timeout=10)
    assert subscription.get(0) == []
