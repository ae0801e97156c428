"""The SQLite journal: durability, recovery, bad files, schema versions, two processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from instrumented import InstrumentedSource

from headwater import Engine, RatePolicy, Record, State
from headwater import store as store_module
from headwater.errors import StoreError, StoreLockedError
from headwater.store import SQLiteStore, read_records


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "home" / "journal.sqlite3"


def test_records_survive_and_unfinished_ones_are_queued_again(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a")
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=SQLiteStore(journal))
    done, failed, running, queued = (engine.submit("a", t) for t in ("ok:x", "raise", "block:k", "block:q"))
    assert [r.state for r in engine.wait([done, failed], timeout=10)] == [State.COMPLETED, State.FAILED]
    src.wait_started(3)
    # Simulate a dead process: the journal stays as it is (no close, no cancel).
    engine._store.close()
    engine.close(timeout=0.1)
    src.release_all()
    on_disk = {r.id: r for r in read_records(journal)}
    assert on_disk[running].state is State.RUNNING and on_disk[running].attempts == 1
    assert on_disk[queued].state is State.QUEUED

    src2 = InstrumentedSource("a")
    again = Engine(tmp_path / "dest", plugins={"a": src2}, store=SQLiteStore(journal), resume=False)
    try:
        states = {r.id: r.state for r in again.records()}
        assert states == {
            done: State.COMPLETED,
            failed: State.FAILED,
            running: State.QUEUED,
            queued: State.QUEUED,
        }
        assert src2.starts() == 0, "resume=False must not start anything"
        assert {r.id: r.state for r in read_records(journal)}[running] is State.QUEUED
        assert again.resume() == [running, queued]
        src2.release("k")
        src2.release("q")
        recs = again.wait([running, queued], timeout=10)
        assert [(r.state, r.attempts) for r in recs] == [(State.COMPLETED, 2), (State.COMPLETED, 1)]
        assert again.resume() == []
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


def test_progress_is_coalesced_and_never_overwrites_a_newer_state(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a", RatePolicy(concurrency=1))
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=SQLiteStore(journal, flush_interval=0.02))
    try:
        rid = engine.submit("a", "block:k")
        src.wait_started(1)
        ctx = engine._shards["a"].contexts[rid]
        ctx.progress(5, 10)
        deadline = threading.Event()
        for _ in range(200):
            if read_records(journal)[0].transferred == 5:
                break
            deadline.wait(0.01)
        assert read_records(journal)[0].transferred == 5
        src.release("k")
        engine.wait([rid], timeout=10)
        ctx.progress(7, 10)  # too late: dropped
        deadline.wait(0.1)
        (final,) = read_records(journal)
        assert (final.state, final.transferred) == (State.COMPLETED, 10)
    finally:
        engine.close()


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
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_module.MIGRATIONS, 2, ("ALTER TABLE records ADD COLUMN note TEXT",))
    SQLiteStore(journal).close()
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("SELECT note FROM records").fetchall() == [(None,)]
    assert [r.id for r in read_records(journal)] == [rid]


_OWNER = """
import sys, time
from headwater.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
print("OWNED", flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(30)
def test_a_second_process_is_refused_while_readers_work_beside_the_owner(
    tmp_path: Path, journal: Path
) -> None:
    src = InstrumentedSource("a")
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=SQLiteStore(journal))
    ids = [engine.submit("a", f"ok:{i}") for i in range(50)]
    engine.flush()
    script = (
        "import sys\n"
        "from headwater.errors import StoreLockedError\n"
        "from headwater.store import SQLiteStore, read_records\n"
        "n = len(read_records(__import__('pathlib').Path(sys.argv[1])))\n"
        "try:\n    SQLiteStore(sys.argv[1])\nexcept StoreLockedError as e:\n    print(n, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(journal)], capture_output=True, text=True, timeout=20
    )
    assert "in use by another headwater process" in out.stdout and str(journal) in out.stdout, out
    assert int(out.stdout.split()[0]) >= 50
    engine.wait(ids, timeout=10)
    engine.close()
    # The other way round: a process owns it, this one is refused, then takes over when it exits.
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(journal)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None and owner.stdout.readline().strip() == "OWNED"
    with pytest.raises(StoreLockedError, match=f"pid {owner.pid}"):
        SQLiteStore(journal)
    owner.kill()
    owner.wait(10)
    taken = SQLiteStore(journal)
    try:
        assert len(taken.load()) == 50
        assert taken._conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        taken.close()


@pytest.mark.timeout(60)
def test_readers_in_other_processes_never_see_a_torn_journal(tmp_path: Path, journal: Path) -> None:
    src = InstrumentedSource("a", RatePolicy(concurrency=4))
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=SQLiteStore(journal, flush_interval=0.01))
    engine.flush()
    reader = (
        "import sys\nfrom pathlib import Path\nfrom headwater.store import read_records\n"
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
