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
from pathlib import Path

import pytest

from headwater import Record, State
from headwater import store as store_module
from headwater.errors import StoreError
from headwater.store import SQLiteStore, read_records


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
    assert [line.split()[0] for line in status.stdout.splitlines()] == [r.id[-12:] for r in records]
    assert _listing(small_disk) == before, "reading wrote to the disk"


_KILLED = """
import sys, time
from headwater import Record, State
from headwater.store import SQLiteStore
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


def test_a_journal_one_may_not_read_is_named_so(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # reachable by nobody through the chmods below
    journal = folder / "journal.sqlite3"
    _journal_with(journal, _records(2))
    journal.chmod(0o600)
    if os.geteuid() == 0:
        for level in (folder, *folder.parents):
            if level.stat().st_mode & 0o001 == 0:
                level.chmod(level.stat().st_mode | 0o001)
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
    monkeypatch.setattr(store_module, "_BUSY_MS", 200)
    try:
        with pytest.raises(StoreError, match="another process kept it locked for over 0.2 s") as raised:
            read_records(journal_path)
        assert "damaged" not in str(raised.value)
    finally:
        holder.close()
    assert len(read_records(journal_path)) == 2
