"""Ended records read from the store on demand: get, pages latest first, streams; and the read-only reader."""

from __future__ import annotations

import itertools
import sqlite3
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path

import attrs
import pytest
from instrumented import InstrumentedSource

from headwater import (
    DownloadContext,
    Engine,
    Job,
    MemoryStore,
    Record,
    RecordStore,
    SQLiteStore,
    State,
    _codec,
    _schema,
    hookimpl,
)
from headwater._errors import UnknownDownloadError
from headwater._reader import CHUNK, JournalReader, read_records

T0 = 1_700_000_000.0
ENDED = (State.COMPLETED, State.FAILED, State.CANCELLED)


def _record(i: int, *, state: State = State.COMPLETED, source: str = "a", at: float | None = None) -> Record:
    """Record ``i``: made at ``T0 + i`` unless ``at`` says otherwise; its id sorts as ``i`` does."""
    made = T0 + i if at is None else at
    return Record(f"{i:032x}", source, f"t{i}", None, source, state, made, made, file_path=f"/d/{i}")


def _mixed(count: int) -> list[Record]:
    """``count`` records, states and sources cycling; every fifth made in the second of the one before."""
    states = itertools.cycle([State.COMPLETED, State.FAILED, State.QUEUED, State.CANCELLED, State.RUNNING])
    sources = itertools.cycle(["a", "b", "c"])
    return [
        _record(i, state=next(states), source=next(sources), at=T0 + i - (i % 5 == 4)) for i in range(count)
    ]


def _latest_first(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    made: RecordStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "j.sqlite3")
    try:
        yield made
    finally:
        made.close()


def _fill(store: RecordStore, records: list[Record]) -> None:
    """Journal ``records`` as an engine does: added when submitted, committed when they change."""
    for record in records:
        store.add(attrs.evolve(record, state=State.QUEUED))
    store.commit([r for r in records if r.state is not State.QUEUED])
    store.flush()


def test_get_answers_for_ended_records_only(store: RecordStore) -> None:
    done, failed, queued, running = (
        _record(0),
        _record(1, state=State.FAILED),
        _record(2, state=State.QUEUED),
        _record(3, state=State.RUNNING),
    )
    _fill(store, [done, failed, queued, running])
    assert store.get(done.id) == done and store.get(failed.id) == failed
    assert store.get(queued.id) is None and store.get(running.id) is None  # the engine holds those
    assert store.get("f" * 32) is None
    store.delete(done.id)
    assert store.get(done.id) is None


def test_matching_names_ended_records_by_id_or_its_start_or_end(store: RecordStore) -> None:
    records = _mixed(40)  # ids: 30 zeros, then two hex digits of i
    _fill(store, records)
    ended = _latest_first([r for r in records if r.state.terminal])
    first, latest = ended[-1], ended[0]
    assert store.matching(first.id) == [first]  # the id itself, though it is the start of every other
    assert store.matching(latest.id[-2:]) == [latest]  # its end
    key = "0" * 30 + "1"  # the start of 16 ids, the end of one
    named = store.matching(key, limit=100)
    assert named == [r for r in ended if r.id[30] == "1" or r.id == "0" * 31 + "1"] and len(named) > 2
    assert store.matching("0" * 12) == ended[:2]  # every id starts so: the latest two
    unfinished = next(r for r in records if not r.state.terminal)
    assert store.matching(unfinished.id) == [] and store.matching(unfinished.id[-2:]) == []
    assert store.matching("nosuch") == []


def test_pages_walk_every_ended_record_once_latest_first(store: RecordStore) -> None:
    records = _mixed(60)
    _fill(store, records)
    ended = _latest_first([r for r in records if r.state.terminal])
    assert store.page(limit=1000) == ended
    walked: list[Record] = []
    page = store.page(limit=7)
    while page:
        walked += page
        page = store.page(before=page[-1].id, limit=7)
    assert walked == ended  # records made in the same second are ordered by id, and none is skipped


def test_pages_filter_by_state_and_source(store: RecordStore) -> None:
    records = _mixed(60)
    _fill(store, records)
    for states, sources in [
        ({State.FAILED}, None),
        ({State.FAILED, State.CANCELLED}, None),
        (None, {"b"}),
        (None, {"a", "c"}),
        ({State.COMPLETED, State.CANCELLED}, {"a", "b"}),
    ]:
        expected = _latest_first(
            [
                r
                for r in records
                if r.state.terminal
                and (states is None or r.state in states)
                and (sources is None or r.source in sources)
            ]
        )
        assert store.page(states=states, sources=sources, limit=1000) == expected
        assert store.page(states=states, sources=sources, limit=4) == expected[:4]
        assert store.page(states=states, sources=sources, before=expected[3].id, limit=4) == expected[4:8]
        assert list(store.scan(states=states, sources=sources)) == expected
    assert store.page(states={State.QUEUED, State.RUNNING}) == []  # unfinished ones are not the store's
    assert store.page(sources=set()) == [] and store.page(sources={"nosuch"}) == []


def test_pages_at_a_place_walk_both_ways_from_any_place(store: RecordStore) -> None:
    records = _mixed(60)
    _fill(store, records)
    ended = _latest_first([r for r in records if r.state.terminal])
    for oldest_first, expected in [(False, ended), (True, ended[::-1])]:
        walked: list[Record] = []
        page = store.page_at(None, oldest_first=oldest_first, limit=7)
        while page:
            walked += page
            page = store.page_at((page[-1].created_at, page[-1].id), oldest_first=oldest_first, limit=7)
        assert walked == expected
    # A place no record holds: between two records made in the same second, by id.
    middle = (ended[10].created_at, ended[10].id + "0")
    assert store.page_at(middle, limit=3) == ended[10:13]
    assert store.page_at(middle, oldest_first=True, limit=3) == ended[9:6:-1]
    failed_b = [r for r in ended if r.state is State.FAILED and r.source == "b"]
    place = (failed_b[1].created_at, failed_b[1].id)
    assert store.page_at(place, states={State.FAILED}, sources={"b"}, limit=100) == failed_b[2:]
    assert store.page_at(place, oldest_first=True, states={State.FAILED}, sources={"b"}) == failed_b[:1]
    assert store.page_at(None, states={State.QUEUED}) == [] and store.page_at(None, limit=0) == []


def test_a_page_before_an_unknown_record_is_refused(store: RecordStore) -> None:
    _fill(store, [_record(0)])
    with pytest.raises(UnknownDownloadError):
        store.page(before="f" * 32)


def test_scan_streams_everything_across_chunks(store: RecordStore) -> None:
    at = [T0 + i // 7 for i in range(2 * CHUNK + 50)]  # ties across chunk boundaries
    records = [_record(i, state=ENDED[i % 3], at=at[i]) for i in range(len(at))]
    _fill(store, records)
    assert list(store.scan()) == _latest_first(records)
    failed = _latest_first([r for r in records if r.state is State.FAILED])
    assert list(store.scan(states={State.FAILED})) == failed


def test_scanning_a_journal_holds_a_chunk_not_the_journal(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "j.sqlite3")
    try:
        records = [_record(i, state=ENDED[i % 3]) for i in range(12 * CHUNK)]
        store.commit(records)
        del records

        def peak(read: Callable[[], Iterable[Record]]) -> int:
            tracemalloc.start()
            try:
                for _ in read():
                    pass
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        loaded = peak(store.load)
        streamed = peak(store.scan)
        reader = peak(JournalReader(store.path).records)
        assert streamed < loaded / 4 and reader < loaded / 4, (streamed, reader, loaded)
    finally:
        store.close()


class _Refuses:
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        raise ValueError("not here")


class _Lands:
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        (ctx.dest_dir / "landed").write_bytes(b"x")
        return ctx.dest_dir / "landed"


def test_a_chain_move_changes_the_source_the_journal_files_a_record_under(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    plugins = {"first": _Refuses(), "second": _Lands()}
    with Engine(tmp_path / "dest", plugins=plugins, store=SQLiteStore(path)) as engine:
        plain = engine.submit("second", "t")
        moved = engine.submit(["first", "second"], "t")
        assert [r.source for r in engine.wait([plain, moved], timeout=10)] == ["second", "second"]
    store = SQLiteStore(path)
    try:
        assert [r.id for r in store.page(sources={"second"})] == [moved, plain]
        assert store.page(sources={"first"}) == []
    finally:
        store.close()
    assert [r.id for r in JournalReader(path).records(sources={"second"})] == [moved, plain]


def test_an_engine_on_a_memory_store_leaves_its_ended_records_there(tmp_path: Path) -> None:
    store = MemoryStore()
    with Engine(tmp_path, plugins={"a": InstrumentedSource("a")}, store=store) as engine:
        done = engine.submit("a", "ok:x")
        (record,) = engine.wait([done], timeout=10)
        assert store.get(done) == record and store.page() == [record]


# -- the schema ----------------------------------------------------------------------


def _schema_2_journal(path: Path, rows: list[tuple[str, str, str, float, str]]) -> None:
    """A schema 2 journal holding ``rows``: (id, source column, state, created_at, data)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for step in (1, 2):
            for statement in _schema.MIGRATIONS[step]:
                conn.execute(statement)
        conn.executemany("INSERT INTO records VALUES (?1, ?2, ?3, ?4, ?4, ?5, 'gone')", rows)
        conn.execute(f"PRAGMA application_id = {_schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 2")
        conn.execute("COMMIT")


def _row(record: Record, source_column: str | None = None) -> tuple[str, str, str, float, str]:
    source = record.source if source_column is None else source_column
    return (record.id, source, record.state.value, record.created_at, _codec.encode(record))


def test_an_older_journal_gains_the_indexes_and_its_moved_records_their_source(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    records = _mixed(30)
    moved = attrs.evolve(records[0], source="second")  # schema 2 kept "a" in the source column
    bad = ("bad", "a", "completed", T0 + 100, "{not json")
    _schema_2_journal(path, [_row(moved, source_column="a"), *map(_row, records[1:]), bad])
    unmigrated = _latest_first(records[1:] + [moved])[:5]
    assert list(JournalReader(path).records(limit=6)) == unmigrated  # read-only: no migration, same answers
    store = SQLiteStore(path)
    try:
        assert store.page(sources={"second"}) == [moved]
        assert store.page(sources={"a"}, limit=1000) == _latest_first(
            [r for r in records[1:] if r.state.terminal and r.source == "a"]
        )
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (_schema.SCHEMA_VERSION,)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"records_by_time", "records_by_state", "records_by_source"} <= names
        assert conn.execute("SELECT source, data FROM records WHERE id = 'bad'").fetchone() == (
            "a",
            "{not json",
        )


def test_pages_read_through_the_indexes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "j.sqlite3")
    store.close()
    with closing(sqlite3.connect(tmp_path / "j.sqlite3")) as conn:

        def plan(where: str, *params: object) -> str:
            query = f"SELECT id FROM records WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 100"
            return " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))

        below = "(created_at, id) < (?, ?)"
        assert "records_by_time" in plan(below, 1.0, "x")
        assert "records_by_state" in plan(f"state = ? AND {below}", "failed", 1.0, "x")
        assert "records_by_source" in plan(f"source = ? AND {below}", "http", 1.0, "x")
        assert "TEMP B-TREE" not in plan(f"state = ? AND {below}", "failed", 1.0, "x")  # in index order


# -- the read-only reader ------------------------------------------------------------


def test_the_reader_pages_every_record_latest_first(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    records = _mixed(40)
    store = SQLiteStore(path)
    store.commit(records)
    try:  # beside the live writer
        reader = JournalReader(path)
        everything = _latest_first(records)  # unfinished ones too
        assert list(reader.records()) == everything
        assert list(reader.records(limit=5)) == everything[:5]
        assert list(reader.records(before=everything[4].id, limit=5)) == everything[5:10]
        assert list(reader.records(states={State.QUEUED}, sources={"a", "b"})) == [
            r for r in everything if r.state is State.QUEUED and r.source in ("a", "b")
        ]
        with pytest.raises(UnknownDownloadError):
            next(reader.records(before="nosuch"))
        assert reader.get(records[2].id) == records[2] and reader.get("nosuch") is None
    finally:
        store.close()
    assert read_records(path) == sorted(records, key=lambda r: (r.created_at, r.id))


def test_the_reader_matches_an_id_by_its_start_or_end(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    now = time.time()
    ids = ["0123abcd" + "0" * 20 + "beef", "0123abce" + "0" * 20 + "cafe", "9" * 32]
    store = SQLiteStore(path)
    store.commit([Record(i, "a", "t", None, "a", State.COMPLETED, now, now) for i in ids])
    store.close()
    reader = JournalReader(path)
    assert reader.match("beef")[0] == 1 and reader.match("beef")[1].id == ids[0]  # type: ignore[union-attr]
    assert reader.match("0123abce")[1].id == ids[1]  # type: ignore[union-attr]
    assert reader.match("0123") == (2, None)
    assert reader.match(ids[2]) == (1, reader.get(ids[2]))
    assert reader.match("dead") == (0, None)
    assert JournalReader(tmp_path / "missing.sqlite3").match("beef") == (0, None)
