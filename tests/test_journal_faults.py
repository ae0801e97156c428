"""Reading a journal that is healthy on a sick disk, and a journal holding rows that are not records."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from headwater import Engine, Record, State, _schema
from headwater._errors import StoreError
from headwater._journal import SQLiteStore
from headwater._reader import read_records
from headwater.cli import main


def _headwater(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``headwater ARGS`` in a process of its own, on the journal in ``home``, with the file source."""
    env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_LOAD_PLUGINS": "file"}
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


def _records(count: int) -> list[Record]:
    now = time.time()
    return [
        Record(uuid.uuid4().hex, "file", f"t{i}", None, "file", State.COMPLETED, now + i, now + i)
        for i in range(count)
    ]


def _journal_with(journal: Path, records: list[Record]) -> None:
    store = SQLiteStore(journal)
    store.commit(records)
    store.close()


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "journal.sqlite3"


# -- a healthy journal on a sick disk ---------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of the test's own, so that it can be filled or made read-only.

    Mounting needs root (or CAP_SYS_ADMIN): where it is refused the test is
    skipped, saying so.
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: a small tmpfs cannot be made here")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"mounting a small tmpfs was refused (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(folder: Path) -> None:
    """Take every byte left on the disk of ``folder``."""
    with open(folder / "filler", "ab", buffering=0) as filler:
        for chunk in (b"\0" * 4096, b"\0"):
            try:
                while True:
                    filler.write(chunk)
            except OSError:
                pass
    assert shutil.disk_usage(folder).free == 0


def _read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.mark.parametrize("sickness", [_fill, _read_only], ids=["full", "read-only"])
def test_status_reads_a_healthy_journal_on_a_full_or_read_only_disk(
    small_disk: Path, sickness: object
) -> None:
    journal = small_disk / "journal.sqlite3"
    records = _records(20)
    _journal_with(journal, records)
    sickness(small_disk)  # type: ignore[operator]
    before = _listing(small_disk)
    assert read_records(journal) == records
    status = _headwater(small_disk, "status")
    assert status.returncode == 0, status.stderr
    assert [line.split()[0] for line in status.stdout.splitlines()] == [r.id[-12:] for r in records[::-1]]
    assert _listing(small_disk) == before, "reading wrote to the disk"


_KILLED = """
import sys, time
from headwater import Record, State
from headwater._journal import SQLiteStore
store = SQLiteStore(sys.argv[1])
now = time.time()
store.commit([Record(f"{i:032x}", "file", "t", None, "file", State.COMPLETED, now, now) for i in range(20)])
print("READY", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("sickness", "why"),
    [(_fill, "the disk is full"), (_read_only, "its folder cannot be written")],
    ids=["full", "read-only"],
)
def test_a_journal_that_cannot_be_read_without_writing_says_why_not_damaged(
    small_disk: Path, sickness: object, why: str
) -> None:
    """Commits only in the WAL and its index (``-shm``) gone: SQLite must rebuild the index on disk."""
    journal = small_disk / "journal.sqlite3"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(journal)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "READY"
    writer.kill()
    writer.wait(10)
    Path(f"{journal}-shm").unlink()
    sickness(small_disk)  # type: ignore[operator]
    with pytest.raises(StoreError) as raised:
        read_records(journal)
    assert f"cannot read journal {journal}: {why}" in str(raised.value)
    status = _headwater(small_disk, "status")
    assert status.returncode == 3 and why in status.stderr and "damaged" not in status.stderr


def _read_as_nobody(journal: Path) -> str:
    """What ``read_records(journal)`` raises in a process of the unprivileged user ``nobody``."""
    ctx = multiprocessing.get_context("fork")  # the child needs no imports: nobody cannot read them
    said: multiprocessing.Queue[str] = ctx.Queue()

    def read() -> None:
        os.setgid(65534)
        os.setuid(65534)
        try:
            read_records(journal)
            said.put("read")
        except StoreError as exc:
            said.put(str(exc))

    child = ctx.Process(target=read)
    child.start()
    child.join(30)
    return said.get(timeout=5)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder that every user can reach (pytest's own temporary folders are private), removed after."""
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_a_journal_one_may_not_read_is_named_so(shared_folder: Path) -> None:
    journal = shared_folder / "journal.sqlite3"
    _journal_with(journal, _records(2))
    journal.chmod(0o600)
    if os.geteuid() == 0:
        if not all(os.stat(level).st_mode & 0o001 for level in shared_folder.parents):
            pytest.skip(f"user nobody cannot reach the temporary folder {shared_folder.parent}")
        message = _read_as_nobody(journal)
    else:
        journal.chmod(0)
        with pytest.raises(StoreError) as raised:
            read_records(journal)
        message = str(raised.value)
    assert f"cannot open journal {journal}: permission denied" in message and "damaged" not in message


def test_a_journal_locked_too_long_is_named_so(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _journal_with(journal_path, _records(2))
    holder = sqlite3.connect(journal_path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # as another program might hold it
    holder.execute("UPDATE records SET updated_at = updated_at + 1")  # a commit in the WAL, the lock kept
    monkeypatch.setattr(_schema, "_BUSY_MS", 200)
    try:
        with pytest.raises(StoreError, match="another process kept it locked for over 0.2 s") as raised:
            read_records(journal_path)
        assert "damaged" not in str(raised.value)
    finally:
        holder.close()
    assert len(read_records(journal_path)) == 2


# -- rows that are not records ------------------------------------------------------

#: Rows no version of headwater wrote, as a bit flip or a hand edit leaves them: (id, state, data).
_BAD_ROWS = [
    ("bad-json", "completed", b'{"id": "bad-json", "source": '),
    (
        "bad-state",
        "completed",
        b'{"id":"bad-state","source":"file","target":"t","display_name":null,'
        b'"username":"file","state":"exploded","created_at":1.0,"updated_at":1.0}',
    ),
    (
        "bad-type",
        "queued",
        b'{"id":"bad-type","source":"file","target":"t","display_name":null,'
        b'"username":"file","state":"queued","created_at":1.0,"updated_at":1.0,"progress":"half"}',
    ),
    (
        "bad-choice",
        "completed",
        b'{"id":"bad-choice","source":"file","target":"t","display_name":null,'
        b'"username":"file","state":"completed","created_at":1.0,"updated_at":1.0,"existing":"explode"}',
    ),
    ("bad-utf8", "completed", b'{"id":"bad-utf8","target":"\xff\xfe"}'),
    ("bad-shape", "failed", b"[1, 2, 3]"),
]


def _add_bad_rows(journal: Path) -> None:
    with closing(sqlite3.connect(journal)) as conn, conn:
        for row_id, state, data in _BAD_ROWS:
            conn.execute(
                "INSERT INTO records VALUES (?, 'file', ?, 0.5, 0.5, CAST(? AS TEXT), 'gone-session')",
                (row_id, state, data),
            )


def _bad_rows_as_they_are(journal: Path) -> list[tuple[str, str, bytes]]:
    with closing(sqlite3.connect(journal)) as conn:
        return conn.execute(
            "SELECT id, state, CAST(data AS BLOB) FROM records WHERE id LIKE 'bad-%' ORDER BY id"
        ).fetchall()


def test_rows_that_are_not_records_are_named_and_left_out(
    tmp_path: Path, journal_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _records(4)
    good[3] = attrs.evolve(good[3], state=State.QUEUED)  # its takeover must not touch the bad rows
    _journal_with(journal_path, good)
    _add_bad_rows(journal_path)
    assert read_records(journal_path) == good
    warned = {
        message.split(" record ")[1].split()[0]: message
        for message in (r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    }
    assert sorted(warned) == sorted(row_id for row_id, _, _ in _BAD_ROWS)
    assert all(f"journal {journal_path}: record {row_id} cannot be read" in m for row_id, m in warned.items())
    assert "'exploded' is not a valid State" in warned["bad-state"]
    assert "float expected, found str 'half'" in warned["bad-type"]
    assert "can't decode byte 0xff" in warned["bad-utf8"]

    caplog.clear()
    store = SQLiteStore(journal_path)
    try:
        assert store.load() == good[:3]  # the finished ones; unfinished ones are taken over
        assert store.take_over(["file"]) == good[3:]
    finally:
        store.close()
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == len(_BAD_ROWS)
    assert _bad_rows_as_they_are(journal_path) == sorted((r, s, d) for r, s, d in _BAD_ROWS)


def test_commands_work_around_rows_that_are_not_records_and_never_touch_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    journal = home / "journal.sqlite3"
    good = _records(2)
    _journal_with(journal, good)
    _add_bad_rows(journal)
    as_they_were = _bad_rows_as_they_are(journal)

    status = _headwater(home, "status")
    assert status.returncode == 0, status.stderr
    assert [line.split()[0] for line in status.stdout.splitlines()] == [r.id[-12:] for r in good[::-1]]
    for row_id, _, _ in _BAD_ROWS:
        assert f"record {row_id} cannot be read" in status.stderr

    (tmp_path / "song.flac").write_bytes(b"la la")
    got = _headwater(home, "get", "file", str(tmp_path / "song.flac"), "--dest", str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    assert _headwater(home, "resume").returncode == 0
    cleaned = _headwater(home, "clean")
    assert cleaned.returncode == 0 and "removed 3 ended download(s)" in cleaned.stdout
    assert read_records(journal) == []
    assert _bad_rows_as_they_are(journal) == as_they_were

    engine = Engine(tmp_path / "out", plugins={}, store=SQLiteStore(journal))  # the library, too
    engine.close()
    assert _bad_rows_as_they_are(journal) == as_they_were


# -- a damaged schema ------------------------------------------------------------------

#: Damage to the SQL that creates the records table, as a flipped byte leaves it: (old, new).
SCHEMA_DAMAGE = {
    # SQLite cannot parse the schema, and its error quotes the byte that is not UTF-8.
    "a syntax error on a byte that is not UTF-8": (b"WITHOUT ROWID", b"WITHOUT \xadOWID"),
    "a column renamed": (b"updated_at", b"updated_xt"),
    "a column name that is not UTF-8": (b"updated_at", b"updated\xdft"),
}


def _damage_schema(journal: Path, old: bytes, new: bytes) -> None:
    with closing(sqlite3.connect(journal)) as conn, conn:
        (sql,) = conn.execute("SELECT CAST(sql AS BLOB) FROM sqlite_master WHERE name = 'records'").fetchone()
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = CAST(? AS TEXT) WHERE name = 'records'",
            (sql.replace(old, new, 1),),
        )


@pytest.mark.parametrize("damage", list(SCHEMA_DAMAGE))
def test_a_damaged_schema_is_refused_as_damaged_and_left_as_it_is(journal_path: Path, damage: str) -> None:
    _journal_with(journal_path, _records(2))
    _damage_schema(journal_path, *SCHEMA_DAMAGE[damage])
    as_it_was = journal_path.read_bytes()
    with pytest.raises(StoreError, match=f"^journal {journal_path} is damaged: "):
        SQLiteStore(journal_path)
    assert journal_path.read_bytes() == as_it_was


def test_commands_refuse_a_journal_whose_schema_is_not_utf8_without_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _journal_with(home / "journal.sqlite3", _records(2))
    _damage_schema(home / "journal.sqlite3", *SCHEMA_DAMAGE["a syntax error on a byte that is not UTF-8"])
    (tmp_path / "song.flac").write_bytes(b"la la")
    for args in (
        ("status",),
        ("get", "file", str(tmp_path / "song.flac"), "--dest", str(tmp_path)),
        ("resume",),
    ):
        done = _headwater(home, *args)
        assert done.returncode == 3, done.stderr
        assert done.stderr.startswith(f"Error: journal {home / 'journal.sqlite3'} is damaged: "), done.stderr


def test_resume_refuses_an_unfinished_row_whose_id_is_not_utf8_without_a_traceback(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _journal_with(journal_path, _records(1))
    with closing(sqlite3.connect(journal_path)) as conn, conn:
        conn.execute(
            "INSERT INTO records SELECT CAST(X'6964ff' AS TEXT), source, 'queued', created_at, updated_at, "
            "data, 'gone-session' FROM records"
        )
    monkeypatch.setenv("HEADWATER_HOME", str(journal_path.parent))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")
    result = CliRunner().invoke(main, ["resume"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(
        f"Error: journal {journal_path} is damaged: it holds text that is not UTF-8"
    )


def test_a_journal_write_that_fails_while_get_queues_is_exit_3(
    journal_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records cannot be committed (here a trigger refuses them, as a full disk would): the
    command says so, naming the journal, with the journal's exit status, not a usage error."""
    _journal_with(journal_path, [])
    with closing(sqlite3.connect(journal_path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    (tmp_path / "song.flac").write_bytes(b"la la")
    monkeypatch.setenv("HEADWATER_HOME", str(journal_path.parent))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")
    result = CliRunner().invoke(main, ["get", "file", str(tmp_path / "song.flac"), "--dest", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"Error: cannot write journal {journal_path}: refused"), result.stderr
