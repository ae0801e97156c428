"""Opening, checking and migrating a journal from many processes at the same moment."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from journal_openers import open_each

from headwater import Record, State, _codec, _schema
from headwater._reader import read_records

OPENERS = 4  # processes opening each journal to write, beside one reading it
ROUNDS = 25


def _schema_1_journal(path: Path, record: Record) -> None:
    """A journal as a headwater of schema 1 left it (WAL mode), holding ``record``."""
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for statement in _schema.MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.source,
                record.state.value,
                record.created_at,
                record.updated_at,
                _codec.encode(record),
                "gone-session",
            ),
        )
        conn.execute(f"PRAGMA application_id = {_schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")


def _run_rounds(journals: list[Path]) -> list[str]:
    """Open each journal from OPENERS processes and read it from one more, all at once; the failures."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited mid-lock
    barrier = ctx.Barrier(OPENERS + 1)
    results: multiprocessing.Queue[str | None] = ctx.Queue()
    paths = [str(j) for j in journals]
    workers = [
        ctx.Process(target=open_each, args=(paths, barrier, i == OPENERS, results))
        for i in range(OPENERS + 1)
    ]
    for worker in workers:
        worker.start()
    failures: list[str] = []
    done = 0
    while done < len(workers):
        line = results.get(timeout=50)
        if line is None:
            done += 1
        else:
            failures.append(line)
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    return failures


def _assert_current(journal: Path) -> None:
    with closing(sqlite3.connect(journal)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (_schema.SCHEMA_VERSION,)
        assert conn.execute("PRAGMA application_id").fetchone() == (_schema.APPLICATION_ID,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"records", "paused"}
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert indexes == {"records_by_time", "records_by_state", "records_by_source"}


@pytest.mark.timeout(90)
def test_many_processes_create_one_new_journal_at_the_same_moment(tmp_path: Path) -> None:
    journals = [tmp_path / f"round-{i}" / "journal.sqlite3" for i in range(ROUNDS)]  # no folder yet
    assert _run_rounds(journals) == []
    for journal in journals:
        _assert_current(journal)
        assert read_records(journal) == []


@pytest.mark.timeout(90)
def test_many_processes_migrate_one_older_journal_at_the_same_moment(tmp_path: Path) -> None:
    now = time.time()
    kept = Record(f"{1:032x}", "a", "kept", None, "a", State.COMPLETED, now, now, file_path="/x/kept")
    journals = [tmp_path / f"round-{i}" / "journal.sqlite3" for i in range(ROUNDS)]
    for journal in journals:
        _schema_1_journal(journal, kept)
    assert _run_rounds(journals) == []
    for journal in journals:
        _assert_current(journal)
        assert read_records(journal) == [kept]
