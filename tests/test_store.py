"""The SQLite journal: durability, recovery, bad files, schema versions, two processes."""

from __future__ import annotations

import ast
import contextlib
import enum
import functools
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import MappingProxyType

import attrs
import pytest
from instrumented import InstrumentedSource

import headwater
from headwater import Engine, RatePolicy, Record, RecordStore, State, _codec, _schema
from headwater._errors import StoreError
from headwater._journal import SQLiteStore
from headwater._reader import read_records


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "home" / "journal.sqlite3"


def test_records_survive_and_unfinished_ones_are_queued_again(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a")
    store = SQLiteStore(journal)
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=store)
    done, failed, running, queued = (engine.submit("a", t) for t in ("ok:x", "raise", "block:k", "block:q"))
    assert [r.state for r in engine.wait([done, failed], timeout=10)] == [State.COMPLETED, State.FAILED]
    src.wait_started(3)
    # Simulate a dead process: the journal stays as it is (no close, no cancel).
    store.close()
    engine.close(timeout=0.1)
    src.release_all()
    on_disk = {r.id: r for r in read_records(journal)}
    assert on_disk[running].state is State.RUNNING and on_disk[running].attempts == 1
    assert on_disk[queued].state is State.QUEUED

    src2 = InstrumentedSource("a")
    again = Engine(tmp_path / "dest", plugins={"a": src2}, store=SQLiteStore(journal), hold=True)
    try:
        # hold=True takes nothing over: the history only, the unfinished ones untouched in the journal.
        states = {r.id: r.state for r in again.records()}
        assert states == {done: State.COMPLETED, failed: State.FAILED}
        assert src2.starts() == 0, "hold=True must not start anything"
        assert {r.id: r for r in read_records(journal)} == on_disk
        assert again.start_held() == [running, queued]
        assert {r.id: r.state for r in read_records(journal)}[running] in (State.QUEUED, State.RUNNING)
        src2.release("k")
        src2.release("q")
        recs = again.wait([running, queued], timeout=10)
        assert [(r.state, r.attempts) for r in recs] == [(State.COMPLETED, 2), (State.COMPLETED, 1)]
        assert again.start_held() == []
        again.remove(done)
    finally:
        again.close()
    assert done not in {r.id for r in read_records(journal)}


class _Watching(SQLiteStore):
    """Checks, on every commit, that readers of the engine do not see the change yet."""

    engine: Engine | None = None
    seen: list[tuple[State, State]]

    def commit(self, records: Sequence[Record]) -> None:
        for record in records:
            if self.engine is not None:
                visible = {r.id: r.state for r in self.engine.records()}.get(record.id)
                self.seen.append((visible, record.state))  # type: ignore[arg-type]
        super().commit(records)


def test_a_state_change_is_committed_before_it_is_visible(tmp_path: Path, journal: Path) -> None:
    store = _Watching(journal)
    store.seen = []
    engine = Engine(tmp_path / "dest", plugins={"a": InstrumentedSource("a")}, store=store)
    store.engine = engine
    try:
        engine.wait([engine.submit("a", "ok:x")], timeout=10)
    finally:
        engine.close()
    assert store.seen == [(State.QUEUED, State.RUNNING), (State.RUNNING, State.COMPLETED)]


class _Batches(SQLiteStore):
    """Keeps each commit's records as (id, state visible to readers during the commit, new state)."""

    engine: Engine | None = None
    batches: list[list[tuple[str, State | None, State]]]

    def commit(self, records: Sequence[Record]) -> None:
        assert self.engine is not None
        visible = {r.id: r.state for r in self.engine.records()}
        self.batches.append([(r.id, visible.get(r.id), r.state) for r in records])
        super().commit(records)


def test_the_end_of_a_download_and_the_start_of_the_next_share_one_commit(
    tmp_path: Path, journal: Path
) -> None:
    store = _Batches(journal)
    store.batches = []
    src = InstrumentedSource("a", RatePolicy(concurrency=1))
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=store)
    store.engine = engine
    try:
        first, second = engine.submit("a", "block:1"), engine.submit("a", "block:2")
        src.wait_started(1)
        src.release("1")
        src.wait_started(2)
        src.release("2")
        engine.wait([first, second], timeout=10)
    finally:
        engine.close()
    queued, running, completed = State.QUEUED, State.RUNNING, State.COMPLETED
    assert store.batches == [
        [(first, queued, running)],
        [(first, running, completed), (second, queued, running)],  # one transaction, seen after
        [(second, running, completed)],
    ]
    assert [(r.id, r.state) for r in read_records(journal)] == [(first, completed), (second, completed)]


def test_the_wal_starts_over_although_commits_keep_coming(
    tmp_path: Path, journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages the flusher's first checkpoint could not copy must not keep the WAL from starting over.

    A reader pins a snapshot taken before the last commit, so the flusher's
    first (unlocked) checkpoint leaves that commit's pages in the WAL, as a
    commit landing while it runs would; the reader ends right after it. The
    flusher's connection is the one ``sqlite3.connect`` makes once the store
    is open; its next round (the second call for the running records) is held
    back until the WAL has been measured.
    """
    store = SQLiteStore(journal, flush_interval=0.01)
    now = time.time()

    def record(i: int) -> Record:
        return Record(f"{i:032x}", "a", f"t{i}", None, "a", State.RUNNING, now, now)

    reader = sqlite3.connect(journal, isolation_level=None, check_same_thread=False)

    class _ReaderEndsAfterFirst(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            cursor = super().execute(sql, *args)
            if "wal_checkpoint" in sql and reader.in_transaction:
                reader.execute("COMMIT")
            return cursor

    rounds: list[None] = []
    first_round_done, measured = threading.Event(), threading.Event()

    def running() -> list[Record]:
        rounds.append(None)
        if len(rounds) == 2:
            first_round_done.set()
            measured.wait(10)
        return []

    try:
        for i in range(500):
            store.commit([record(i)])
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM records").fetchone()
        store.commit([record(500)])
        flusher_connection = functools.partial(sqlite3.connect, factory=_ReaderEndsAfterFirst)
        monkeypatch.setattr(sqlite3, "connect", flusher_connection)
        store.attach(running)
        assert first_round_done.wait(10), "the flusher did not finish its first round"
        store.commit([record(501)])  # starts the WAL over if every frame was copied
        _, frames, _ = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        measured.set()
        reader.close()
        store.close()
    assert 0 < frames < 10, f"the WAL went on from frame {frames} instead of starting over"


class _StaleFlushes(SQLiteStore):
    """A journal whose flusher also writes the snapshots given to :meth:`race`, as a flush racing an end."""

    def __init__(self, path: Path, flush_interval: float) -> None:
        super().__init__(path, flush_interval=flush_interval)
        self._race: list[Record] = []
        self._race_taken = False
        self._race_written = threading.Event()

    def attach(self, running: Callable[[], list[Record]]) -> None:
        def with_stale() -> list[Record]:  # on the flusher's thread, once a round
            if self._race_taken:  # the round that took them has written them
                self._race_taken = False
                self._race_written.set()
            if self._race:
                stale, self._race = self._race, []
                self._race_taken = True
                return [*stale, *running()]
            return running()

        super().attach(with_stale)

    def race(self, stale: list[Record]) -> None:
        """Have the flusher's next round write ``stale``; return when it has."""
        self._race_written.clear()
        self._race = stale
        assert self._race_written.wait(10), "the flusher did not write the stale snapshots"


def test_progress_is_coalesced_and_never_overwrites_a_newer_state(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a", RatePolicy(concurrency=1))
    store = _StaleFlushes(journal, flush_interval=0.02)
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=store)
    try:
        rid = engine.submit("a", "block:k")
        src.wait_started(1)
        ctx = src.contexts[rid]
        ctx.progress(5, 10)
        stale = engine.get(rid)  # a snapshot of the running record, as the flusher takes them
        deadline = threading.Event()
        for _ in range(200):
            if read_records(journal)[0].transferred == 5:
                break
            deadline.wait(0.01)
        assert read_records(journal)[0].transferred == 5
        src.release("k")
        engine.wait([rid], timeout=10)
        ctx.progress(7, 10)  # too late: dropped
        store.race([attrs.evolve(stale, transferred=6)])  # a flush racing the end
        (final,) = read_records(journal)
        assert (final.state, final.transferred) == (State.COMPLETED, 10)
    finally:
        engine.close()


def test_progress_is_written_a_few_times_a_second_however_often_it_is_reported(
    tmp_path: Path, journal: Path
) -> None:
    src = InstrumentedSource("a")
    opened: list[sqlite3.Connection] = []

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    real_connect = sqlite3.connect
    with pytest.MonkeyPatch.context() as patch:  # the store's own connection, opened with it
        patch.setattr(sqlite3, "connect", connect)
        store = SQLiteStore(journal, flush_interval=0.1)
    updates: list[str] = []
    for conn in opened:
        with contextlib.suppress(sqlite3.ProgrammingError):  # one already closed writes nothing
            conn.set_trace_callback(lambda sql: updates.append(sql) if sql.startswith("UPDATE") else None)
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=store)
    try:
        rid = engine.submit("a", "block:k")
        src.wait_started(1)
        ctx = src.contexts[rid]
        start = time.monotonic()
        reports = 0
        while time.monotonic() - start < 1.0:
            reports += 1
            ctx.progress(reports, 10**9)
        src.release("k")
        engine.wait([rid], timeout=10)
    finally:
        engine.close()
    assert reports > 10_000
    assert 3 <= len(updates) <= 12, f"{len(updates)} progress writes for {reports} reports in 1 s"


def test_a_damaged_file_is_named_and_left_alone(tmp_path: Path, journal: Path) -> None:
    journal.parent.mkdir(parents=True)
    junk = b"this is not a database" * 100
    journal.write_bytes(junk)
    with pytest.raises(StoreError, match=str(journal)):
        Engine(tmp_path / "dest", plugins={}, store=SQLiteStore(journal))
    with pytest.raises(StoreError, match=str(journal)):
        read_records(journal)
    assert journal.read_bytes() == junk


def test_a_truncated_journal_is_reported(tmp_path: Path, journal: Path) -> None:
    engine = Engine(tmp_path / "dest", plugins={"a": InstrumentedSource("a")}, store=SQLiteStore(journal))
    engine.wait([engine.submit("a", f"ok:{i}") for i in range(200)], timeout=10)
    engine.close()
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 2] + b"\xff" * 4096 + data[len(data) // 2 + 4096 :])
    with pytest.raises(StoreError, match="damaged"):
        SQLiteStore(journal)


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The journals whose integrity an opening checked (ran ``PRAGMA quick_check`` on), in order."""
    seen: list[Path] = []
    real = sqlite3.connect

    def connect(database: str | Path, *args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real(database, *args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(lambda sql: seen.append(Path(database)) if "quick_check" in sql else None)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


def test_a_journal_is_checked_when_it_changed_outside_headwater_only(
    journal: Path, checked: list[Path]
) -> None:
    now = time.time()
    store = SQLiteStore(journal)
    store.commit([Record(f"{1:032x}", "a", "t", None, "a", State.COMPLETED, now, now)])
    store.close()  # the last session to close it seals it
    SQLiteStore(journal).close()
    assert checked == []
    with closing(sqlite3.connect(journal)) as conn, conn:  # another program writes it
        conn.execute("UPDATE records SET updated_at = updated_at + 1")
    SQLiteStore(journal).close()
    assert checked == [journal]

    holder = SQLiteStore(journal)
    with closing(sqlite3.connect(journal)) as conn, conn:
        conn.execute("UPDATE records SET updated_at = updated_at + 1")
    SQLiteStore(journal).close()  # beside a live session, which opened it checked or sealed
    assert checked == [journal]
    holder.close()


_COMMITS_AND_DIES = """
import os, signal, sys, time
from headwater import Record, SQLiteStore, State
store = SQLiteStore(sys.argv[1])
now = time.time()
store.commit([Record(f"{2:032x}", "a", "t", None, "a", State.COMPLETED, now, now)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_journal_is_checked_after_a_crash(journal: Path, checked: list[Path]) -> None:
    SQLiteStore(journal).close()
    died = subprocess.run(
        [sys.executable, "-c", _COMMITS_AND_DIES, str(journal)], capture_output=True, timeout=30
    )
    assert died.returncode == -9, died.stderr
    SQLiteStore(journal).close()
    assert checked == [journal]
    assert len(read_records(journal)) == 1


def test_a_foreign_database_is_refused(journal: Path) -> None:
    journal.parent.mkdir(parents=True)
    with sqlite3.connect(journal) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
        conn.execute("INSERT INTO songs VALUES ('keep me')")
    with pytest.raises(StoreError, match=f"{journal}.*another program"):
        SQLiteStore(journal)
    with sqlite3.connect(journal) as conn:
        assert conn.execute("SELECT title FROM songs").fetchall() == [("keep me",)]


def test_a_newer_schema_is_refused(journal: Path) -> None:
    SQLiteStore(journal).close()
    with sqlite3.connect(journal) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer headwater"):
        SQLiteStore(journal)


def test_an_older_schema_is_migrated(tmp_path: Path, journal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(tmp_path / "dest", plugins={"a": InstrumentedSource("a")}, store=SQLiteStore(journal))
    rid = engine.submit("a", "ok:x")
    engine.wait([rid], timeout=10)
    engine.close()
    later = _schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", later)
    monkeypatch.setitem(_schema.MIGRATIONS, later, ("ALTER TABLE records ADD COLUMN note TEXT",))
    SQLiteStore(journal).close()
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (later,)
        assert conn.execute("SELECT note FROM records").fetchall() == [(None,)]
    assert [r.id for r in read_records(journal)] == [rid]


_OTHER = """
import json, sys
from pathlib import Path
from headwater import Engine, hookimpl
from headwater._journal import SQLiteStore

class Quick:
    @hookimpl
    def download_impl(self, job, ctx):
        path = ctx.dest_dir / f"quick-{job.id}"
        path.write_text(job.target)
        return path

engine = Engine(sys.argv[2], plugins={"a": Quick()}, store=SQLiteStore(sys.argv[1]))
loaded = [r.state.value for r in engine.records()]
ids = [engine.submit("a", f"other-{i}") for i in range(20)]
done = engine.wait(ids, timeout=20)
engine.close()
print(json.dumps({"loaded": loaded, "done": [r.state.value for r in done]}))
"""


@pytest.mark.timeout(60)
def _session_files(journal: Path) -> list[str]:
    """The sessions' lock files beside ``journal`` (the seal of the last clean close is none)."""
    return [p.name for p in journal.with_name(journal.name + ".sessions").iterdir() if p.name != "sealed"]


def test_two_processes_work_side_by_side_on_one_journal(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a", RatePolicy(concurrency=1))
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=SQLiteStore(journal))
    try:
        finished = engine.submit("a", "ok:first")
        engine.wait([finished], timeout=10)
        running, queued = engine.submit("a", "block:k"), engine.submit("a", "block:q")
        src.wait_started(2)
        engine.flush()
        other = subprocess.run(
            [sys.executable, "-c", _OTHER, str(journal), str(tmp_path / "other")],
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert other.returncode == 0, other.stderr
        seen = json.loads(other.stdout)
        # The other process sees the history but leaves this one's unfinished downloads alone.
        assert seen == {"loaded": ["completed"], "done": ["completed"] * 20}
        assert {r.id: r.state for r in read_records(journal)}[running] is State.RUNNING
        src.release("k")
        src.release("q")
        assert [r.state for r in engine.wait([running, queued], timeout=10)] == [State.COMPLETED] * 2
    finally:
        engine.close()
    states = [r.state for r in read_records(journal)]
    assert states == [State.COMPLETED] * 23
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert _session_files(journal) == [], "a session file was left"


_DIES = """
import sys, time
from pathlib import Path
from headwater import Engine, RatePolicy, hookimpl
from headwater._journal import SQLiteStore

class Stuck:
    @hookimpl
    def download_impl(self, job, ctx):
        time.sleep(60)

    @hookimpl
    def rate_policy(self):
        return RatePolicy(concurrency=2)

engine = Engine(sys.argv[2], plugins={"a": Stuck()}, store=SQLiteStore(sys.argv[1]))
for i in range(30):
    engine.submit("a", f"job-{i}")
engine.flush()
time.sleep(0.3)
print("READY", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_a_dead_process_records_are_taken_over_exactly_once(tmp_path: Path, journal: Path) -> None:
    dying = subprocess.Popen(
        [sys.executable, "-c", _DIES, str(journal), str(tmp_path / "dest")], stdout=subprocess.PIPE, text=True
    )
    assert dying.stdout is not None and dying.stdout.readline().strip() == "READY"
    # While it lives, its records are its own.
    alive = SQLiteStore(journal)
    assert alive.load() == [] and alive.take_over({"a"}) == []
    alive.close()
    dying.kill()
    dying.wait(10)
    before = {r.id: r for r in read_records(journal)}
    assert sorted(r.state.value for r in before.values()) == ["queued"] * 28 + ["running"] * 2

    barrier = threading.Barrier(2)
    loaded: list[list[Record]] = [[], []]
    stores = [SQLiteStore(journal), SQLiteStore(journal)]

    def take(i: int) -> None:
        barrier.wait()
        loaded[i] = stores[i].take_over({"a"})

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for store in stores:
        store.close()
    taken = [{r.id for r in records} for records in loaded]
    assert taken[0] | taken[1] == set(before) and not taken[0] & taken[1]
    assert sorted(len(t) for t in taken) == [0, 30]
    # The dead session's lock file is gone; the takers' own ended with them.
    assert _session_files(journal) == []


@pytest.mark.timeout(60)
def test_readers_in_other_processes_never_see_a_torn_journal(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a", RatePolicy(concurrency=4))
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=SQLiteStore(journal, flush_interval=0.01))
    engine.flush()
    reader = (
        "import sys\nfrom pathlib import Path\nfrom headwater._reader import read_records\n"
        "n = 0\nfor _ in range(100):\n    n = max(n, len(read_records(Path(sys.argv[1]))))\nprint(n)\n"
    )
    readers = [
        subprocess.Popen([sys.executable, "-c", reader, str(journal)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    ids = [engine.submit("a", f"ok:{i}") for i in range(1000)]
    engine.wait(ids, timeout=30)
    engine.close()
    for proc in readers:
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert [r.state for r in read_records(journal)] == [State.COMPLETED] * 1000


class _Failing(SQLiteStore):
    """A journal whose disk is full: every state commit fails."""

    def commit(self, records: Sequence[Record]) -> None:
        raise StoreError(f"cannot write journal {self.path}: database or disk is full")


def test_a_failing_journal_is_logged_and_downloads_go_on(
    tmp_path: Path, journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(tmp_path / "dest", plugins={"a": InstrumentedSource("a")}, store=_Failing(journal))
    try:
        (record,) = engine.wait([engine.submit("a", "ok:x")], timeout=10)
    finally:
        engine.close()
    assert record.state is State.COMPLETED
    failures = [r.getMessage() for r in caplog.records if "disk is full" in r.getMessage()]
    assert len(failures) == 2 and "RUNNING -> COMPLETED" in failures[1]
    # The buffered insert still reached the journal: a restart runs the download again.
    assert [r.state for r in read_records(journal)] == [State.QUEUED]


def test_records_of_a_renamed_source_run_under_its_new_name_and_unknown_ones_stay(
    tmp_path: Path, journal: Path
) -> None:
    old = InstrumentedSource("old", RatePolicy(concurrency=1))
    gone = InstrumentedSource("gone", RatePolicy(concurrency=1))
    store = SQLiteStore(journal)
    engine = Engine(tmp_path / "dest", plugins={"old": old, "gone": gone}, store=store)
    renamed, orphan = engine.submit("old", "block:k"), engine.submit("gone", "block:k")
    old.wait_started(1)
    store.close()  # the process "dies" with both queued or running
    engine.close(timeout=0.1)

    old.release_all()
    gone.release_all()
    new = InstrumentedSource("new", aliases=("old",))
    new.release("k")
    again = Engine(tmp_path / "dest", plugins={"new": new}, store=SQLiteStore(journal))
    try:
        (record,) = again.wait([renamed], timeout=10)
        assert (record.state, record.attempts, new.starts()) == (State.COMPLETED, 2, 1)
        assert [r.id for r in again.records(source="new")] == [renamed]
    finally:
        again.close()
    left = {r.id: r.state for r in read_records(journal)}
    assert left[orphan] in (State.QUEUED, State.RUNNING)  # untouched, for when "gone" is back


def test_a_chain_from_an_old_journal_moves_to_a_renamed_source_and_not_beside_it(
    tmp_path: Path, journal: Path
) -> None:
    """A fallback saved under a name that is now an alias runs on that source's one worker."""
    now = time.time()
    saved = Record(f"{7:032x}", "first", "raise", None, "first", State.QUEUED, now, now, fallbacks=("old",))
    store = SQLiteStore(journal)
    store.commit([saved])
    store.close()
    first, new = InstrumentedSource("first"), InstrumentedSource("new", aliases=("old",))
    again = Engine(tmp_path / "dest", plugins={"first": first, "new": new}, store=SQLiteStore(journal))
    try:
        (record,) = again.wait([saved.id], timeout=10)
        assert record.state is State.FAILED and [t.source for t in record.tried] == ["first", "new"]
        assert sorted(again.worker_stats()) == ["first", "new"]  # no second worker under "old"
    finally:
        again.close()


def test_a_late_insert_never_overwrites_a_state_and_never_revives_a_removed_record(journal: Path) -> None:
    store = SQLiteStore(journal, flush_interval=3600)  # no flusher round during the test
    now = time.time()
    started, removed = (
        Record(f"{i:032x}", "a", f"t{i}", None, "a", State.QUEUED, now, now) for i in range(2)
    )
    store.add(started)
    store.add(removed)
    store.commit((attrs.evolve(started, state=State.RUNNING),))  # before its insert was written
    store.delete(removed.id)
    store.flush()
    store.close()
    assert [(r.id, r.state) for r in read_records(journal)] == [(started.id, State.RUNNING)]


class _Colour(enum.Enum):
    RED = "red"


@attrs.frozen
class _Inner:
    source: str
    error: str | None = None


@attrs.frozen
class _Outer:
    """The shapes a record field may take: nested attrs values in a tuple, enums, optionals, mappings."""

    tried: tuple[_Inner, ...] = ()
    colour: _Colour | None = None
    extra: Mapping[str, object] = attrs.field(factory=lambda: MappingProxyType({}))


def test_nested_record_values_survive_the_journal() -> None:
    value = _Outer((_Inner("http", "HTTP 503"), _Inner("file")), _Colour.RED, MappingProxyType({"k": 1}))
    text = json.dumps(_codec.plain(value))
    assert _codec.structure(json.loads(text), _Outer) == value
    assert _codec.structure({"tried": [], "unknown": 1}, _Outer) == _Outer()  # unknown fields ignored
    with pytest.raises(TypeError, match="cannot journal a value of type object"):
        _codec.plain(_Outer(colour=object()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"target": 7}, "str expected, found int 7"),
        ({"size": True}, "int expected, found bool True"),
        ({"progress": "half"}, "float expected, found str 'half'"),
        ({"fallbacks": "abc"}, "list expected, found str 'abc'"),
        ({"extra": ["k"]}, "dict expected, found list ['k']"),
        ({"existing": "explode"}, "one of 'rename', 'skip', 'overwrite' expected, found 'explode'"),
        ({"state": "exploded"}, "'exploded' is not a valid State"),
        ({"tried": [{"source": "a"}]}, "field 'error' is missing"),
        ({"id": None}, "str expected, found NoneType None"),
    ],
)
def test_a_field_of_the_wrong_kind_is_refused_saying_why(change: dict[str, object], why: str) -> None:
    now = time.time()
    good = json.loads(_codec.encode(Record(f"{1:032x}", "a", "t", None, "a", State.COMPLETED, now, now)))
    with pytest.raises((TypeError, ValueError)) as raised:
        _codec.decode(json.dumps({**good, **change}))
    assert why in str(raised.value)


def test_rows_that_are_not_record_objects_are_refused_saying_why() -> None:
    with pytest.raises(TypeError, match="a JSON object expected, found list"):
        _codec.decode("[1, 2, 3]")
    with pytest.raises(ValueError, match="field 'id' is missing"):
        _codec.decode('{"source": "a"}')
    now = time.time()
    whole = Record(f"{1:032x}", "a", "t", None, "a", State.COMPLETED, now, now, size=3)
    as_written = json.loads(_codec.encode(whole))
    hand_edited = json.dumps({**as_written, "progress": 50, "speed": 0})
    assert _codec.decode(hand_edited).progress == 50.0


def test_a_schema_1_journal_gains_the_paused_table(tmp_path: Path, journal: Path) -> None:
    engine = Engine(tmp_path / "dest", plugins={"a": InstrumentedSource("a")}, store=SQLiteStore(journal))
    rid = engine.wait([engine.submit("a", "ok:x")], timeout=10)[0].id
    engine.close()
    with sqlite3.connect(journal) as conn:  # make it a journal as schema 1 wrote it
        conn.execute("DROP TABLE paused")
        indexes = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        for (index,) in indexes.fetchall():
            conn.execute(f"DROP INDEX {index}")
        conn.execute("PRAGMA user_version = 1")
    store = SQLiteStore(journal)
    assert store.paused() == []
    store.set_paused("a", True)
    store.close()
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (_schema.SCHEMA_VERSION,)
    assert [r.id for r in read_records(journal)] == [rid]


def test_a_pause_survives_a_restart(tmp_path: Path, journal: Path) -> None:
    plugins = {"a": InstrumentedSource("a", aliases=("a_dl",)), "b": InstrumentedSource("b")}
    first = Engine(tmp_path / "dest", plugins=plugins, store=SQLiteStore(journal))
    first.pause("a_dl")
    queued = first.submit("a", "ok:waits")
    first.flush()
    assert first.get(queued).state is State.QUEUED
    first.close()

    second = Engine(tmp_path / "dest", plugins=plugins, store=SQLiteStore(journal))
    try:
        assert second.paused() == ["a"]
        other = second.submit("b", "ok:runs")
        assert second.wait([other], timeout=10)[0].state is State.COMPLETED
        assert second.get(queued).state is State.QUEUED  # recovered, and held by the pause
        assert plugins["a"].starts() == 0
        second.resume("a")
        assert second.wait([queued], timeout=10)[0].state is State.COMPLETED
    finally:
        second.close()
    third = Engine(tmp_path / "dest", plugins=plugins, store=SQLiteStore(journal))
    try:
        assert third.paused() == []  # the resume was recorded too
    finally:
        third.close()


def _store_calls() -> set[str]:
    """The methods headwater calls on a store: each ``<...store>.name(...)`` outside the stores' modules."""
    core = Path(headwater.__file__).parent
    stores = {core / "_store.py", core / "_journal.py", core / "_cluster" / "_pgstore.py"}
    called: set[str] = set()
    for path in core.rglob("*.py"):
        if path in stores:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = node.func.value
                named = getattr(receiver, "id", None) or getattr(receiver, "attr", "")
                if "store" in named.lower():
                    called.add(node.func.attr)
    return called


def test_the_store_protocol_asks_only_for_what_headwater_calls_and_the_docs_list_it() -> None:
    """Every method of RecordStore has a caller in headwater, and docs/persistence.md lists exactly those.

    A method nothing calls is work for every store's author for nothing
    (``load()``, "called once, before any write", was never called). A call
    counts when its receiver's name holds "store" (``self._store.commit``).
    """
    methods = {name for name, value in vars(RecordStore).items() if callable(value) and name[0] != "_"}
    # page() has no caller either (the engine's pages read page_at); tools and the tests read with it.
    assert methods - _store_calls() == {"page"}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "persistence.md").read_text(encoding="utf-8")
    section = docs[docs.index("A store implements `headwater.RecordStore`:") :]
    listed = set(re.findall(r"`(\w+)\(", section[: section.index("The engine calls")]))
    assert listed == methods
