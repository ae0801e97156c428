"""An engine holds its queued and running downloads; the ended ones it reads from its store."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pytest
from instrumented import InstrumentedSource

from headwater import ChangeKind, Engine, MemoryStore, Record, SQLiteStore, State
from headwater._ended import WINDOW, Ended
from headwater._errors import UnknownDownloadError

T0 = 1_700_000_000.0


def _ended(i: int, source: str = "a", state: State = State.COMPLETED) -> Record:
    made = T0 + i
    return Record(f"{i:032x}", source, f"t{i}", None, source, state, made, made, file_path=f"/d/{i}")


def _seed(path: Path, records: list[Record]) -> None:
    """Write ``records`` to the journal at ``path``, as an engine that ran them would have."""
    seed = SQLiteStore(path)
    try:
        seed.commit(records)
    finally:
        seed.close()


class CountingStore(SQLiteStore):
    """A journal that counts the reads of ended records the engine makes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[str] = []

    def load(self) -> list[Record]:
        self.reads.append("load")
        return super().load()

    def get(self, download_id: str) -> Record | None:
        self.reads.append(f"get {download_id}")
        return super().get(download_id)

    def scan(
        self, *, states: Collection[State] | None = None, sources: Collection[str] | None = None
    ) -> Iterator[Record]:
        self.reads.append("scan")
        return super().scan(states=states, sources=sources)

    def page_at(
        self,
        place: tuple[float, str] | None,
        *,
        oldest_first: bool = False,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[Record]:
        self.reads.append("page_at")
        return super().page_at(place, oldest_first=oldest_first, states=states, sources=sources, limit=limit)


def test_opening_a_journal_reads_none_of_its_ended_records(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    history = [_ended(i) for i in range(50)]
    _seed(path, history)
    store = CountingStore(path)
    with Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=store) as engine:
        assert store.reads == []
        assert engine.get(history[7].id) == history[7]
        assert store.reads == [f"get {history[7].id}"]
        assert engine.records() == history
        assert store.reads[-1] == "scan"


def test_an_ended_download_leaves_the_engine_for_its_store(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "j.sqlite3")
    with Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=store) as engine:
        ids = [engine.submit("a", f"ok:f{i}") for i in range(WINDOW + 2)]
        ended = engine.wait(ids, timeout=60)
        assert {r.state for r in ended} == {State.COMPLETED}
        store.reads.clear()
        assert engine.get(ids[-1]) == ended[-1]  # among the latest: in memory
        assert store.reads == []
        assert engine.get(ids[0]) == ended[0]  # older than the window: read from the journal
        assert store.reads == [f"get {ids[0]}"]
        assert engine.records("a") == ended


def test_every_call_answers_for_a_download_that_ended_before_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=SQLiteStore(path)) as engine:
        done, failed = engine.wait([engine.submit("a", "ok:x"), engine.submit("a", "raise")], timeout=10)
    assert (done.state, failed.state) == (State.COMPLETED, State.FAILED)
    with Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=SQLiteStore(path)) as engine:
        assert engine.get(done.id) == done
        assert engine.wait([failed.id, done.id], timeout=0) == [failed, done]
        assert engine.cancel(done.id) is False and engine.get(done.id) == done
        assert engine.records() == [done, failed]
        changes = engine.subscribe()
        assert engine.remove(done.id) == done
        assert [(c.kind, c.record) for c in changes.get(0)] == [(ChangeKind.REMOVED, done)]
        for call in (engine.get, engine.remove, engine.cancel):
            with pytest.raises(UnknownDownloadError):
                call(done.id)
        assert engine.records() == [failed]
    store = SQLiteStore(path)
    try:
        assert store.get(done.id) is None and store.get(failed.id) == failed
    finally:
        store.close()


def test_records_of_sources_not_loaded_stay_in_the_journal_unseen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    mine, by_alias, gone = _ended(1), _ended(2, source="al"), _ended(3, source="gone")
    _seed(path, [mine, by_alias, gone])
    source = InstrumentedSource("a", aliases=("al",))
    with Engine(tmp_path / "d", plugins={"a": source}, store=SQLiteStore(path)) as engine:
        assert engine.get(by_alias.id) == by_alias
        with pytest.raises(UnknownDownloadError):
            engine.get(gone.id)
        with pytest.raises(UnknownDownloadError):
            engine.remove(gone.id)
        assert engine.records() == [mine, by_alias]
        assert engine.records("al") == [mine, by_alias]
    store = SQLiteStore(path)
    try:
        assert store.get(gone.id) == gone
    finally:
        store.close()


class HeldEnd(MemoryStore):
    """A store whose commit of a terminal record waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.committing = threading.Event()
        self.proceed = threading.Event()

    def commit(self, records: Sequence[Record]) -> None:
        if any(r.state.terminal for r in records):
            self.committing.set()
            assert self.proceed.wait(10), "the test never let the commit go"
        super().commit(records)


def test_a_download_is_found_while_its_end_is_being_committed(tmp_path: Path) -> None:
    store = HeldEnd()
    with Engine(tmp_path, plugins={"a": InstrumentedSource("a")}, store=store) as engine:
        rid = engine.submit("a", "ok:x")
        try:
            assert store.committing.wait(10)
            assert engine.get(rid).state is State.RUNNING  # not yet committed: still the engine's
            with pytest.raises(TimeoutError):
                engine.wait([rid], timeout=0.01)
        finally:
            store.proceed.set()
        (record,) = engine.wait([rid], timeout=10)
        assert record.state is State.COMPLETED and engine.get(rid) == record == store.get(rid)


def test_pages_merge_the_unfinished_downloads_with_the_ended_ones_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    history = [_ended(i, state=(State.COMPLETED, State.FAILED)[i % 2]) for i in range(40)]
    _seed(path, history)
    store = CountingStore(path)
    with Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=store) as engine:
        engine.pause("a")  # nothing starts: the new ones stay queued
        queued = [engine.get(engine.submit("a", f"ok:{i}")) for i in range(5)]
        everything = [*history, *queued]
        assert engine.records() == everything
        for oldest_first, expected in [(False, everything[::-1]), (True, everything)]:
            walked: list[Record] = []
            page = engine.page(oldest_first=oldest_first, limit=6)
            while page:
                walked += page
                after = (page[-1].created_at, page[-1].id)
                page = engine.page(after=after, oldest_first=oldest_first, limit=6)
            assert walked == expected
        store.reads.clear()
        assert engine.page(states={State.QUEUED}, limit=3) == queued[:1:-1]
        assert store.reads == []  # unfinished ones only: the store is not read
        failed = [r for r in history if r.state is State.FAILED]
        assert engine.page(states={State.FAILED, State.QUEUED}, limit=7) == [*queued[::-1], *failed[::-1][:2]]
        assert engine.page(sources={"nosuch"}) == []


def test_a_page_skips_the_records_of_sources_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    history = [_ended(i, source="gone" if i % 4 else "a") for i in range(40)]
    _seed(path, history)
    with Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=SQLiteStore(path)) as engine:
        mine = [r for r in history if r.source == "a"][::-1]
        assert engine.page(limit=4) == mine[:4]
        assert engine.page(after=(mine[3].created_at, mine[3].id), limit=100) == mine[4:]


class CountingMemory(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def get(self, download_id: str) -> Record | None:
        self.gets.append(download_id)
        return super().get(download_id)


def test_records_waited_for_are_kept_beyond_the_window_until_the_wait_ends() -> None:
    store = CountingMemory()
    ended = Ended(store, {"a"}.__contains__, window=2)
    records = [_ended(i) for i in range(5)]
    ended.pin([r.id for r in records[:4]])
    ended.pin([records[0].id])  # a second wait for the first
    for record in records:
        store.commit([record])
        ended.keep(record)
    assert [ended.get(r.id) for r in records] == records
    assert store.gets == []  # the last two in the window, the first three pinned
    ended.forget(records[1].id)  # removed while waited for
    store.delete(records[1].id)
    assert ended.get(records[1].id) is None
    ended.unpin([r.id for r in records[:4]])
    store.gets.clear()
    assert ended.get(records[0].id) == records[0] and store.gets == []  # still pinned once
    assert ended.get(records[2].id) == records[2] and store.gets == [records[2].id]
    ended.unpin([records[0].id])
    assert ended.get(records[0].id) == records[0] and store.gets[-1] == records[0].id
