"""Conditional writes (RecordStore.commit_if): a row changes only from the state and attempt its writer saw.

The same contract for MemoryStore, SQLiteStore and PostgresStore (the
PostgreSQL cases skip, saying so, when the server on 127.0.0.1:5432 is not
reachable). Racing writers are threads, and processes, released together
by a barrier; exactly one of them may win.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path

import attrs
import pytest

from headwater import MemoryStore, Record, RecordStore, SQLiteStore, State, Swap
from headwater._cluster._pgstore import PostgresStore

pytest_plugins = ["pg_fixtures"]

SPAWN = multiprocessing.get_context("spawn")

#: How to open one more store on the same records, in this process or another: (kind, where, schema).
Opener = tuple[str, str, str]


def open_store(opener: Opener) -> RecordStore:
    kind, where, schema = opener
    if kind == "sqlite":
        return SQLiteStore(where)
    return PostgresStore(where, schema=schema)


@attrs.define
class Stores:
    """A first store, and how to open more on the same records (None: it cannot be shared)."""

    first: RecordStore
    opener: Opener | None


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    opener: Opener | None = None
    if request.param == "memory":
        first: RecordStore = MemoryStore()
    else:
        if request.param == "sqlite":
            opener = ("sqlite", str(tmp_path / "j.sqlite3"), "")
        else:
            opener = ("postgres", request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema"))
        first = open_store(opener)
    try:
        yield Stores(first, opener)
    finally:
        first.close()


def _queued(name: str) -> Record:
    return Record(name, "a", f"t-{name}", None, "u", State.QUEUED, 1.0, 1.0)


def _then(record: Record, state: State, **changes: object) -> Record:
    """``record`` moved to ``state`` a moment later; a start counts an attempt."""
    attempts = record.attempts + (state is State.RUNNING)
    return attrs.evolve(record, state=state, updated_at=record.updated_at + 1, attempts=attempts, **changes)


def _cancelled(record: Record) -> Record:
    return _then(record, State.CANCELLED)


def _ended(store: RecordStore, record: Record) -> Record | None:
    return store.get(record.id)


# -- one writer: what applies -------------------------------------------------------------


def test_a_write_applies_only_from_the_state_and_attempt_its_writer_saw(stores: Stores) -> None:
    store = stores.first
    queued = _queued("a")
    store.add(queued)
    first = _then(queued, State.RUNNING)
    assert store.commit_if([Swap.over(queued, first)]) == [True]
    assert store.commit_if([Swap.over(queued, first)]) == [False]  # it is RUNNING now
    requeued = _then(first, State.QUEUED, retries=1)
    assert store.commit_if([Swap.over(first, requeued)]) == [True]
    second = _then(requeued, State.RUNNING)
    assert store.commit_if([Swap.over(requeued, second)]) == [True]
    # The first attempt's worker, late: its completion is refused (an older attempt).
    late = _then(first, State.COMPLETED)
    assert store.commit_if([Swap.over(first, late)]) == [False]
    done = _then(second, State.COMPLETED)
    assert store.commit_if([Swap.over(second, done)]) == [True]
    assert _ended(store, done) == done


def test_a_cancel_wins_over_any_unfinished_state_and_a_late_end_after_it_is_refused(stores: Stores) -> None:
    store = stores.first
    queued, running = _queued("q"), _queued("r")
    store.add(queued)
    store.add(running)
    started = _then(running, State.RUNNING)
    assert store.commit_if([Swap.over(running, started)]) == [True]
    # The canceller saw an older state of each; a cancel does not care.
    assert store.commit_if([Swap.cancel(_cancelled(queued)), Swap.cancel(_cancelled(running))]) == [
        True,
        True,
    ]
    assert store.commit_if([Swap.over(started, _then(started, State.COMPLETED))]) == [False]
    assert _ended(store, running) == _cancelled(running)
    # Nothing moves a record out of an end, not even another cancel.
    assert store.commit_if([Swap.cancel(_then(_cancelled(queued), State.CANCELLED))]) == [False]


def test_answers_come_in_the_order_asked_and_each_write_is_judged_on_its_own(stores: Stores) -> None:
    store = stores.first
    records = [_queued(name) for name in ("m", "c", "x", "a")]
    for record in records:
        store.add(record)
    swaps = [
        Swap.over(records[0], _then(records[0], State.RUNNING)),
        Swap.over(
            _then(records[1], State.RUNNING), _then(records[1], State.COMPLETED)
        ),  # not RUNNING: refused
        Swap.cancel(_cancelled(records[2])),
        Swap(_then(records[3], State.RUNNING), State.QUEUED, attempts=5),  # wrong attempts: refused
    ]
    assert store.commit_if(swaps) == [True, False, True, False]
    assert store.commit_if([]) == []


def test_a_record_that_is_not_there_is_never_written(stores: Stores) -> None:
    if isinstance(stores.first, MemoryStore):
        pytest.skip(
            "MemoryStore keeps nothing of a record only added, so it cannot tell (its docstring says so)"
        )
    store = stores.first
    ghost = _queued("ghost")
    assert store.commit_if([Swap.over(ghost, _then(ghost, State.RUNNING))]) == [False]
    assert store.commit_if([Swap.cancel(_cancelled(ghost))]) == [False]
    store.add(ghost)
    store.commit([_cancelled(ghost)])
    store.delete(ghost.id)
    assert store.commit_if([Swap.cancel(_cancelled(ghost))]) == [False]  # removed: not brought back
    assert store.get(ghost.id) is None


def test_a_call_naming_one_record_twice_is_refused(stores: Stores) -> None:
    record = _queued("a")
    with pytest.raises(ValueError, match="id was given twice"):
        stores.first.commit_if([Swap.cancel(_cancelled(record)), Swap.cancel(_cancelled(record))])


def test_only_a_cancel_may_apply_from_any_state() -> None:
    with pytest.raises(ValueError, match="only a cancel applies from any state"):
        Swap(_queued("a"), None)


# -- racing writers ------------------------------------------------------------------------


def _race_threads(store: RecordStore, count: int, write: Callable[[int], Swap]) -> list[bool]:
    """``count`` threads, released together, each committing its own ``write(i)``; their answers."""
    barrier = threading.Barrier(count)
    answers: list[bool | None] = [None] * count

    def run(i: int) -> None:
        swap = write(i)
        barrier.wait()
        answers[i] = store.commit_if([swap])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert None not in answers, "a writer never answered"
    return [bool(a) for a in answers]


def _claim(record: Record, i: int) -> Swap:
    """Writer ``i`` starts ``record`` (its mark in ``username``), from QUEUED."""
    return Swap.over(record, _then(record, State.RUNNING, username=f"writer-{i}"))


@pytest.mark.timeout(120)
def test_of_threads_starting_one_download_at_once_exactly_one_wins(stores: Stores) -> None:
    store = stores.first
    records = [_queued(f"r{n}") for n in range(20)]
    for record in records:
        store.add(record)
    for record in records:
        answers = _race_threads(store, 8, lambda i, record=record: _claim(record, i))
        assert answers.count(True) == 1, answers
        winner = answers.index(True)
        done = _then(_claim(record, winner).record, State.COMPLETED)
        # The winner's write is the row: only its completion (the state it saw) applies.
        loser = (winner + 1) % 8
        assert store.commit_if([Swap.over(_claim(record, loser).record, done)]) == [True]
        assert _ended(store, record).username == f"writer-{winner}"  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_a_cancel_racing_completions_of_two_attempts_ends_the_download_once(stores: Stores) -> None:
    store = stores.first
    for n in range(20):
        record = _queued(f"c{n}")
        store.add(record)
        first = _then(record, State.RUNNING)
        second = _then(_then(first, State.QUEUED), State.RUNNING)
        assert store.commit_if([Swap.over(record, first)]) == [True]
        assert store.commit_if([Swap.over(first, _then(first, State.QUEUED))]) == [True]
        assert store.commit_if([Swap.over(_then(first, State.QUEUED), second)]) == [True]
        writes = [
            Swap.over(first, _then(first, State.COMPLETED)),  # a dead worker's attempt: always refused
            Swap.over(second, _then(second, State.COMPLETED)),
            Swap.cancel(_cancelled(record)),
        ]
        answers = _race_threads(store, 3, writes.__getitem__)
        assert answers[0] is False and answers[1:].count(True) == 1, answers
        ended = _ended(store, record)
        assert ended is not None
        assert ended.state is (State.COMPLETED if answers[1] else State.CANCELLED)


def _racer(
    opener: Opener, name: str, i: int, barrier: Barrier, answers: multiprocessing.Queue[tuple[int, bool]]
) -> None:
    store = open_store(opener)
    try:
        swap = _claim(_queued(name), i)
        barrier.wait()
        answers.put((i, store.commit_if([swap])[0]))
    finally:
        store.close()


@pytest.mark.timeout(180)
def test_of_processes_starting_one_download_at_once_exactly_one_wins(stores: Stores) -> None:
    if stores.opener is None:
        pytest.skip("a MemoryStore lives in one process")
    record = _queued("shared")
    stores.first.add(record)
    stores.first.flush()
    count = 4
    barrier = SPAWN.Barrier(count)
    answers: multiprocessing.Queue[tuple[int, bool]] = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_racer, args=(stores.opener, record.id, i, barrier, answers))
        for i in range(count)
    ]
    for process in processes:
        process.start()
    got = dict(answers.get(timeout=120) for _ in range(count))
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert sorted(got.values()) == [False] * (count - 1) + [True], got
    winner = next(i for i, won in got.items() if won)
    done = _then(_claim(record, winner).record, State.COMPLETED)
    assert stores.first.commit_if([Swap.over(_claim(record, winner).record, done)]) == [True]
    assert stores.first.get(record.id) == done
