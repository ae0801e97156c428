"""The journal's SQLite schema, its migrations, and opening a journal file safely.

Opening is safe with any number of processes opening one journal at once,
new, older or current: the checks read in one transaction, the switch to WAL
mode is retried while another process holds the file busy, and a migration
re-reads the version under the write lock, so exactly one process migrates.
Every error is a :class:`~headwater.StoreError` that names the file and says
what went wrong (damaged, foreign, newer, a full disk, a permission, a lock
held too long); a file that fails a check is never changed.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from headwater._errors import StoreError

#: ``PRAGMA application_id`` of a headwater journal ("HDWR"): a file with
#: tables and another id belongs to something else and is never touched.
APPLICATION_ID = 0x48445752

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 3

#: Statements that bring a journal from version ``n - 1`` to ``n``; version 1
#: creates the schema. They run in order, in one transaction, when an older
#: journal is opened. A reader needs none of them after version 1: version 2
#: adds what only writers use, version 3 indexes that only make reads fast.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE records (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            data TEXT NOT NULL,
            owner TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    2: ("CREATE TABLE paused (source TEXT PRIMARY KEY) WITHOUT ROWID",),
    3: (
        # Pages latest first, of everything, of some states, of some sources; and the
        # takeover, which reads only the unfinished records, through records_by_state.
        "CREATE INDEX records_by_time ON records (created_at, id)",
        "CREATE INDEX records_by_state ON records (state, created_at, id)",
        "CREATE INDEX records_by_source ON records (source, created_at, id)",
        # Schema 2 left the source column as submitted when a chain moved a download on;
        # the record (data) has the source it is on. Rows that are not JSON stay as they are.
        """UPDATE records SET source = json_extract(data, '$.source') WHERE CASE WHEN json_valid(data)
            THEN json_type(data, '$.source') = 'text' AND json_extract(data, '$.source') != source END""",
    ),
}

#: How long (milliseconds) any step waits for another process's lock before it fails.
_BUSY_MS = 5000
_FULL_BYTES = 64 << 10  # less room than this on a disk is a full disk
_WAL_PAGES = 8192  # 32 MiB of 4 KiB pages: the writers' own checkpoint, a safety net
_WAL_KEEP_BYTES = 4 << 20  # what a WAL file is cut back to when it starts over


def connect(path: Path, *, read_only: bool, immutable: bool = False) -> sqlite3.Connection:
    """A connection to ``path`` in autocommit mode (transactions are explicit) that waits out locks.

    ``read_only`` opens the file read-only; ``immutable`` also tells SQLite
    that nothing changes it, so it takes no locks and needs no ``-shm`` or
    ``-wal`` file (see :mod:`headwater._reader` for when that holds).
    Raises sqlite3.Error.
    """
    if read_only:
        flags = "mode=ro&immutable=1" if immutable else "mode=ro"
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?{flags}", uri=True, check_same_thread=False, isolation_level=None
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
    return conn


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every read inside it sees the same committed state."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # it only read: nothing to keep


def check(conn: sqlite3.Connection, path: Path) -> int:
    """The journal's schema version; StoreError for a foreign or newer file.

    Call it inside a transaction, so that the three values it reads agree
    although another process may be creating or migrating the journal. A
    new, empty file (no tables, application_id 0) is version 0. SQLite's
    errors (a file that is not a database) pass through as sqlite3.Error.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if tables and app_id != APPLICATION_ID:
        raise StoreError(
            f"{path} is a SQLite database of another program (application_id {app_id:#x}); "
            "headwater leaves it alone: move it away or set HEADWATER_HOME"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer headwater (schema {version}, this one knows up to "
            f"{SCHEMA_VERSION}); upgrade headwater"
        )
    return int(version)


_NOT_UTF8 = "Could not decode to UTF-8"


def failure(exc: sqlite3.Error | UnicodeDecodeError, path: Path, doing: str) -> StoreError:
    """The StoreError for ``exc``, which SQLite raised on journal ``path``, saying what went wrong.

    ``doing`` is the verb of the message ("cannot open journal ...": "open",
    "read", "migrate"). Only SQLite's verdict on the file's contents calls it
    damaged, and text read from the file (a result, or SQLite's error message
    quoting the schema) that is not UTF-8, which headwater never writes; a
    full disk, a read-only file system, a permission, a file that cannot be
    opened, a lock held too long and an I/O error are each named as such.
    """
    if isinstance(exc, UnicodeDecodeError):
        return StoreError(
            f"journal {path} is damaged: it holds text that is not UTF-8 ({exc.reason}: {exc.object!r:.80})"
        )
    if str(exc).startswith(_NOT_UTF8):  # how the sqlite3 module says it of a value it read
        return StoreError(f"journal {path} is damaged: it holds text that is not UTF-8 ({exc})")
    name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
    if name.startswith("SQLITE_NOTADB"):
        return StoreError(f"{path} is not a headwater journal or is damaged: {exc}")
    if name.startswith("SQLITE_CORRUPT"):
        return StoreError(f"journal {path} is damaged: {exc}")
    if name.startswith("SQLITE_FULL") or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        why = "the disk is full"
    elif name.startswith("SQLITE_READONLY"):
        why = "it, or the file system it is on, is read-only"
    elif name.startswith(("SQLITE_PERM", "SQLITE_AUTH")):
        why = "permission denied"
    elif name.startswith("SQLITE_CANTOPEN"):
        why = _why_not_open(path)
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        why = f"another process kept it locked for over {_BUSY_MS / 1000:g} s"
    elif name.startswith("SQLITE_IOERR"):
        why = "the disk failed to read or write it"
    else:
        why = "SQLite failed"
    return StoreError(f"cannot {doing} journal {path}: {why} (SQLite: {exc}, {name})")


def _disk_full(path: Path) -> bool:
    """Whether the disk that holds ``path`` has (next to) no room left."""
    import shutil  # here: readers (`headwater status`) rarely need it

    try:
        return shutil.disk_usage(path.parent).free < _FULL_BYTES
    except OSError:
        return False


def _why_not_open(path: Path) -> str:
    """Why SQLite cannot open ``path``, as far as the file system tells."""
    if os.path.isdir(path):
        return "it is a folder"
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return "permission denied"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"its folder cannot be written (SQLite keeps {path.name}-wal and -shm beside it)"
    return "SQLite cannot open it"


def open_journal(path: Path, *, verify: bool = True) -> sqlite3.Connection:
    """A writing connection to the journal at ``path``: the file checked, in WAL mode, at this schema.

    ``verify`` runs ``PRAGMA quick_check`` on a journal that has records,
    which reads the whole file (about 1.6 s for a million records): the
    caller skips it for a file headwater has had in its care since it was
    last checked (see :meth:`headwater._sessions.Session.vouched`). Safe
    with any number of processes opening the journal at once (see the
    module's docstring). Raises StoreError; a file that fails a check is
    not changed.
    """
    try:
        conn = connect(path, read_only=False)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise failure(exc, path, "open") from exc
    try:
        with snapshot(conn):
            version = check(conn, path)
            if version:
                _shape(conn, path, version)
            if version and verify:
                _integrity(conn, path)
        _wal_mode(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        # A checkpoint syncs the disk: let the journal's flusher do it, off the commit
        # path; a writer checkpoints only if the WAL grows past this many pages.
        conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_KEEP_BYTES}")  # the WAL file shrinks back
        if version < SCHEMA_VERSION:
            _migrate(conn, path)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        conn.close()
        raise failure(exc, path, "open") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _integrity(conn: sqlite3.Connection, path: Path) -> None:
    """StoreError if ``PRAGMA quick_check`` finds the journal damaged; SQLite's errors pass through."""
    result = conn.execute("PRAGMA quick_check").fetchall()
    if result != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in result[:3])
        raise StoreError(f"journal {path} is damaged: {problems}")


def _shape(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """StoreError if the journal's tables are not those of schema ``version``.

    A damaged schema SQLite can still parse (a flipped byte in a column's
    name) is caught here, at opening, instead of as a puzzling error on the
    first write. Cheap: it reads the schema, not the records.
    """
    for table, columns in _tables(version).items():
        found = _columns(conn, table)
        if found != columns:
            raise StoreError(
                f"journal {path} is damaged: its table {table} has the columns {_names(found)}, "
                f"schema {version} has {_names(columns)}"
            )


_Column = tuple[str, str, int, int]  # name, type, not null, place in the primary key


def _columns(conn: sqlite3.Connection, table: str) -> list[_Column]:
    return [(row[1], row[2], row[3], row[5]) for row in conn.execute(f"PRAGMA table_info({table})")]


def _names(columns: Sequence[_Column]) -> str:
    return "(" + ", ".join(name for name, *_ in columns) + ")"


@functools.cache
def _tables(version: int) -> dict[str, list[_Column]]:
    """The tables of schema ``version`` and their columns, as :data:`MIGRATIONS` make them."""
    with closing(sqlite3.connect(":memory:")) as conn:
        for step in range(1, version + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: _columns(conn, name) for name in names}


def _wal_mode(conn: sqlite3.Connection) -> None:
    """Put the journal in WAL mode (it stays so), retrying while other processes hold it busy.

    Switching the mode can fail at once with SQLITE_BUSY, without waiting
    on the busy timeout, while another process opens the same new file; so
    this retries for as long as that timeout, then lets the error pass.
    """
    deadline = time.monotonic() + _BUSY_MS / 1000
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not exc.sqlite_errorname.startswith("SQLITE_BUSY") or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the journal to this schema in one transaction, unless another process just did."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        version = check(conn, path)  # again, under the write lock: the latest word
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise failure(exc, path, "migrate") from exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if 0 < version < SCHEMA_VERSION:
        import logging  # here: readers (`headwater status`) never migrate

        logging.getLogger("headwater.store").info(
            "migrated journal %s from schema %d to %d", path, version, SCHEMA_VERSION
        )


def at_rest(path: Path) -> tuple[int, int, int] | None:
    """The journal file's (inode, size, mtime) if that file holds every commit, else None.

    It does when there is no rollback journal beside it and no write-ahead
    log, or an empty one: no process has a commit that is not in the file yet.
    """
    wal, rollback = Path(f"{path}-wal"), Path(f"{path}-journal")
    try:
        if (wal.exists() and wal.stat().st_size) or rollback.exists():
            return None
        status = path.stat()
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)
