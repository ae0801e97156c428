"""Where the engine keeps its records: in memory, or in a SQLite journal.

The engine's shards hold the records it reads from; a :class:`RecordStore`
is the journal it writes every change to, and reads once when it starts.

What is durable when (for :class:`SQLiteStore`):

- A state change (QUEUED -> RUNNING, a terminal write, a record requeued
  after a restart) and a removal are committed by :meth:`RecordStore.commit`
  and :meth:`RecordStore.delete`, which the engine calls under the source's
  lock before the change is visible to any reader. "Committed" means it
  survives the process being killed; SQLite runs with ``synchronous=NORMAL``
  in WAL mode, so a power loss may roll back the last few commits, never
  corrupt the file.
- A new record (:meth:`RecordStore.add`) is buffered, so that ``submit``
  stays cheap; the flusher thread commits it within ``flush_interval``
  seconds (in transactions of up to 64), and :meth:`RecordStore.flush`
  and ``close`` commit every buffered one. A submit is therefore durable
  once ``Engine.flush()`` returns. A record whose first state change comes
  before its insert is written whole by that change, and the late insert
  then changes nothing.
- Progress is best effort: the flusher thread writes the running records'
  snapshots (from :meth:`RecordStore.attach`'s callback) at most once per
  ``flush_interval``, only those that changed, and never over a newer
  state. After a crash the figure may be stale; the ``.part`` file on disk
  is what a source resumes from.

Several engines, in one process or many, may share a journal: SQLite's
locking serializes their transactions, and each engine only runs and writes
its own records. An engine's session holds a lock file the operating system
releases when the process dies; the unfinished records of dead sessions are
taken over only by an engine that is going to run them
(:meth:`SQLiteStore.take_over`), and may be cancelled by anyone
(:meth:`SQLiteStore.cancel_left`). Readers (:func:`read_records`) work
beside them at any time.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
import types
import typing
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Protocol, TypeVar

import attrs
import platformdirs

from headwater._errors import DownloadOwnedError, StoreError, UnknownDownloadError
from headwater._records import Record, State

log = logging.getLogger("headwater.store")

_T = TypeVar("_T")

HOME_ENV = "HEADWATER_HOME"
JOURNAL_NAME = "journal.sqlite3"

#: ``PRAGMA application_id`` of a headwater journal ("HDWR"): a file with
#: tables and another id belongs to something else and is never touched.
APPLICATION_ID = 0x48445752

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2

#: Statements that bring a journal from version ``n - 1`` to ``n``; version 1
#: creates the schema. A later schema adds ``MIGRATIONS[2]`` and so on; they
#: run in order, in one transaction, when an older journal is opened.
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
}


def home() -> Path:
    """The folder for headwater's journal and config: ``$HEADWATER_HOME``, else the user data folder."""
    given = os.environ.get(HOME_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    return platformdirs.user_data_path("headwater", appauthor=False)


def default_journal() -> Path:
    """The journal file the command line uses: ``journal.sqlite3`` in :func:`home`."""
    return home() / JOURNAL_NAME


class RecordStore(Protocol):
    """The journal an engine writes its records to.

    The engine calls ``add``, ``commit`` and ``delete`` with the record's
    source lock held, from whichever thread made the change; implementations
    must be thread-safe and must not call back into the engine.
    """

    def load(self) -> list[Record]:
        """The terminal records (the history), oldest first (called once, before any write)."""
        ...

    def take_over(self, sources: Collection[str]) -> list[Record]:
        """The unfinished records that ended engines left, of ``sources`` (names), now this store's.

        Oldest first. Atomic: two stores taking over at once never both get
        a record, and a record of a running engine is never taken. Raises
        :class:`~headwater.StoreError` if the journal cannot be used.
        """
        ...

    def cancel_left(self, download_id: str) -> tuple[Record, bool]:
        """Cancel ``download_id`` in the journal if an ended engine left it unfinished.

        Returns the record as the journal now holds it, and True if this call
        cancelled it (False: it had already ended). Atomic. Raises
        :class:`~headwater.UnknownDownloadError` when the journal has
        no such record, :class:`~headwater.DownloadOwnedError` when a
        running engine (this one included) owns it unfinished, and
        :class:`~headwater.StoreError` if the journal cannot be used.
        """
        ...

    def attach(self, running: Callable[[], list[Record]]) -> None:
        """Start periodic work; ``running`` returns snapshots of the running records."""
        ...

    def add(self, record: Record) -> None:
        """Journal a new record; must be cheap. Durable once :meth:`flush` returns."""
        ...

    def commit(self, records: Sequence[Record]) -> None:
        """Write state changes (whole records, added or not); durable when this returns.

        Raises :class:`~headwater.StoreError` if the write fails.
        """
        ...

    def delete(self, download_id: str) -> None:
        """Forget a record; durable when this returns."""
        ...

    def flush(self) -> None:
        """Make every record added so far durable."""
        ...

    def paused(self) -> list[str]:
        """The names of the sources the journal says are paused, sorted."""
        ...

    def set_paused(self, source: str, paused: bool) -> None:
        """Record that ``source`` is paused (or not); durable when this returns.

        Raises :class:`~headwater.StoreError` if the write fails.
        """
        ...

    def close(self) -> None:
        """Flush, stop periodic work and release the journal. Later calls do nothing."""
        ...


class MemoryStore:
    """No journal: records live only in the engine. Every method is (nearly) free."""

    def load(self) -> list[Record]:
        return []

    def take_over(self, sources: Collection[str]) -> list[Record]:
        return []

    def cancel_left(self, download_id: str) -> tuple[Record, bool]:
        raise UnknownDownloadError(download_id)

    def attach(self, running: Callable[[], list[Record]]) -> None:
        pass

    def add(self, record: Record) -> None:
        pass

    def commit(self, records: Sequence[Record]) -> None:
        pass

    def delete(self, download_id: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def paused(self) -> list[str]:
        return []

    def set_paused(self, source: str, paused: bool) -> None:
        pass

    def close(self) -> None:
        pass


# -- encoding ------------------------------------------------------------------


def _jsonable(value: object) -> object:
    """``value`` one step nearer JSON: an enum as its value, an attrs instance or a mapping as a dict.

    :class:`json.JSONEncoder` calls this for what it cannot encode itself
    (it takes str, int, float, bool, None, dict, list and tuple as they are).
    Raises TypeError for anything else, naming its type.
    """
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return {a.name: getattr(value, a.name) for a in attrs.fields(type(value))}  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"cannot journal a value of type {type(value).__name__}: {value!r}")


#: The one encoder of journal rows: compact, and built once (``json.dumps``
#: with options builds a new encoder on every call).
_ENCODER = json.JSONEncoder(default=_jsonable, separators=(",", ":"))


def plain(value: object) -> object:
    """``value`` as JSON values: enums by value, attrs instances as dicts, tuples as lists.

    What the journal stores and ``--json`` prints for a record.

    Raises TypeError for anything else, naming its type.
    """
    return json.loads(_ENCODER.encode(value))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _shape(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``hint``'s origin and arguments (``typing.get_origin``, ``typing.get_args``), looked up once."""
    return typing.get_origin(hint), typing.get_args(hint)


def _build(hint: Any, value: object) -> object:
    """The value of type ``hint`` that :func:`plain` turned into ``value``.

    Raises TypeError or ValueError if ``value`` cannot be one (a wrong type,
    an unknown enum value, a missing field).
    """
    if type(value) is hint:  # the common case: a str, int, float or bool, as declared
        return value
    origin, args = _shape(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"one of {', '.join(map(repr, args))} expected, found {value!r:.60}")
        return value
    if origin is tuple:
        return tuple(_build(args[0], v) for v in _expect(list, value))
    if origin in (Mapping, dict):
        return MappingProxyType(dict(_expect(dict, value)))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and attrs.has(hint):
        fields = _hints(hint)
        return hint(**{k: _build(fields[k], v) for k, v in _expect(dict, value).items() if k in fields})
    if hint is float and type(value) is int:
        return float(value)
    return _expect(hint, value)


def _expect(kind: type[_T], value: object) -> _T:
    """``value`` if it is a ``kind`` (a bool is no int here); else TypeError."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"{kind.__name__} expected, found {type(value).__name__} {value!r:.60}")
    return value


def _data(record: Record) -> str:
    return _ENCODER.encode(record)


def _encode(record: Record, owner: str) -> tuple[str, str, str, float, float, str, str]:
    """The journal row of ``record``; raises StoreError for a field that cannot be journaled."""
    try:
        data = _data(record)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot journal record {record.id}: {exc}") from exc
    return (record.id, record.source, record.state.value, record.created_at, record.updated_at, data, owner)


def _decode(data: bytes) -> Record:
    """A record from its journal row; fields this version does not know are ignored.

    Raises ValueError, TypeError or RecursionError, saying why, for a row
    that is not a record.
    """
    return typing.cast(Record, _build(Record, json.loads(data)))  # a Record, or it raised


#: The columns the readers decode: id and data as bytes, so that a row whose
#: text is not UTF-8 is one undecodable row and not an error of the query.
_ROW = "CAST(id AS BLOB), CAST(data AS BLOB)"


def _decode_or_fail(path: Path, download_id: str, data: bytes) -> Record:
    """The record ``data`` holds; StoreError naming the journal and the id if it is not one."""
    try:
        return _decode(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StoreError(f"journal {path}: record {download_id} cannot be read ({exc})") from exc


def _decode_rows(path: Path, rows: Iterable[tuple[bytes, bytes]]) -> list[Record]:
    """The records of ``(id, data)`` rows, in order.

    A row that is not a record is logged (a warning naming the journal, the
    row's id and why) and left out; nothing here changes the journal.
    """
    records = []
    for row_id, data in rows:
        try:
            records.append(_decode(data))
        except (ValueError, TypeError, RecursionError) as exc:
            log.warning(
                "journal %s: record %s cannot be read (%s), so it is left out; it stays in the journal "
                "as it is: %.120r",
                path,
                row_id.decode("utf-8", "replace"),
                exc,
                data,
            )
    return records


# -- opening -------------------------------------------------------------------


#: How long (milliseconds) any step waits for another process's lock before it fails.
_BUSY_MS = 5000
_FULL_BYTES = 64 << 10  # less room than this on a disk is a full disk


def _connect(path: Path, *, read_only: bool, immutable: bool = False) -> sqlite3.Connection:
    """A connection to ``path`` in autocommit mode (transactions are explicit) that waits out locks.

    ``read_only`` opens the file read-only; ``immutable`` also tells SQLite
    that nothing changes it, so it takes no locks and needs no ``-shm`` or
    ``-wal`` file (see :func:`read_records` for when that holds).
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
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every read inside it sees the same committed state."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # it only read: nothing to keep


def _check(conn: sqlite3.Connection, path: Path) -> int:
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


def _integrity(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """StoreError if the journal is damaged: ``PRAGMA quick_check`` finds fault, or its tables are
    not those of schema ``version`` (a damaged schema SQLite can still parse). SQLite's errors pass
    through."""
    result = conn.execute("PRAGMA quick_check").fetchall()
    if result != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in result[:3])
        raise StoreError(f"journal {path} is damaged: {problems}")
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


_NOT_UTF8 = "Could not decode to UTF-8"


def _failure(exc: sqlite3.Error | UnicodeDecodeError, path: Path, doing: str) -> StoreError:
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


def _at_rest(path: Path) -> tuple[int, int, int] | None:
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


def _read_rows(path: Path, *, immutable: bool) -> list[tuple[bytes, bytes]]:
    """The ``(id, data)`` rows of the journal at ``path``, oldest first, in one read transaction."""
    try:
        conn = _connect(path, read_only=True, immutable=immutable)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise _failure(exc, path, "open") from exc
    try:
        with _snapshot(conn):
            if _check(conn, path) == 0:
                return []
            # Every schema since 1 has this table: a reader needs no migration.
            return conn.execute(f"SELECT {_ROW} FROM records ORDER BY created_at").fetchall()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise _failure(exc, path, "read") from exc
    finally:
        conn.close()


def read_records(path: Path) -> list[Record]:
    """The records in the journal at ``path``, read-only, oldest first.

    Reading writes nothing. A journal whose commits are all in its file (no
    process has it open, or none has written since it did) is read from that
    file alone, without locks, so a full disk or a read-only folder does not
    stop it; the read counts only if the file did not change meanwhile. Else
    it is read beside the processes writing it, through SQLite's WAL (WAL
    readers never block the writer). A missing file means no records.

    A record that cannot be decoded is logged (a warning with its id and
    why) and left out; it stays in the journal as it is. Raises StoreError,
    naming the file, for a damaged, foreign or newer file, and for one that
    cannot be read, saying why (a full disk, a permission, a lock held too
    long).
    """
    try:
        if not path.exists():
            return []
    except OSError as exc:
        raise StoreError(f"cannot read journal {path}: {exc}") from exc
    before = _at_rest(path)
    if before is not None:
        try:
            rows = _read_rows(path, immutable=True)
        except StoreError:
            if _at_rest(path) == before:
                raise
        else:
            if _at_rest(path) == before:
                return _decode_rows(path, rows)
        # A process wrote the journal meanwhile: read it as a reader beside writers does.
    return _decode_rows(path, _read_rows(path, immutable=False))


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


class _Session:
    """One engine's claim on a journal: an exclusive lock on ``<journal>.sessions/<id>.lock``.

    The operating system drops the lock when the process ends, however it
    ends, so a session whose file can be locked by someone else is dead and
    its unfinished records may be taken over.
    """

    def __init__(self, journal: Path) -> None:
        self.folder = journal.with_name(journal.name + ".sessions")
        self.id = uuid.uuid4().hex
        self.folder.mkdir(exist_ok=True)
        # Locked under a name no one scans, then renamed: no one can see it unlocked.
        starting = self.folder / f"{self.id}.starting"
        self._file: IO[str] | None = open(starting, "w")  # noqa: SIM115 (held open for the session)
        _lock_file(self._file)
        self._file.write(str(os.getpid()))
        self._file.flush()
        starting.replace(self.folder / f"{self.id}.lock")

    def scan(self) -> tuple[list[str], list[str]]:
        """(live, dead): ids of the other sessions whose lock is held, and of those whose is free."""
        live, dead = [], []
        for path in self.folder.glob("*.lock"):
            if path.stem == self.id:
                continue
            try:
                with open(path, "a") as handle:
                    _lock_file(handle)  # released again when the handle closes
            except OSError:
                live.append(path.stem)
            else:
                dead.append(path.stem)
        return live, dead

    def describe(self, session_id: str) -> str:
        """Who runs session ``session_id``, for a message: ``"headwater process 1234"`` or the like."""
        try:
            pid = int((self.folder / f"{session_id}.lock").read_text())
        except (OSError, ValueError):
            return "another headwater process"
        return "another engine in this process" if pid == os.getpid() else f"headwater process {pid}"

    def forget(self, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            (self.folder / f"{session_id}.lock").unlink(missing_ok=True)

    def end(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None
            self.forget([self.id])


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_file(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock_file(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class SQLiteStore:
    """A journal in one SQLite file (WAL mode) that several engines, in any processes, may share.

    Each store is a session: the unfinished records it writes carry its
    session id. :meth:`load` returns the history (terminal records);
    :meth:`take_over` takes the unfinished records of sessions whose process
    has ended, in one transaction (so two engines starting at once never
    both take the same record), and :meth:`cancel_left` cancels one of them
    without taking the rest. Unfinished records of a live session are left
    to it.

    Args:
        path: the journal file; its folder is created if missing. Default:
            :func:`default_journal`.
        flush_interval: seconds between writes of buffered new records and
            of progress.

    Opening raises :class:`~headwater.StoreError` for a
    file that is damaged, belongs to another program or was written by a
    newer schema; the file is never changed in those cases. An older schema
    is migrated in one transaction. Any number of processes may open one
    journal at the same moment, new or older: exactly one migrates it. A
    file that cannot be opened for another reason (a full disk, a
    permission, a lock held over 5 s) raises StoreError saying so.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, flush_interval: float = 0.25) -> None:
        self.path = Path(path).expanduser() if path is not None else default_journal()
        self.flush_interval = flush_interval
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of journal {self.path}: {exc}") from exc
        try:
            self._session = _Session(self.path)
        except OSError as exc:
            raise StoreError(f"cannot start a session on journal {self.path}: {exc}") from exc
        try:
            self._conn = self._open()
        except BaseException:
            self._session.end()
            raise
        self._lock = threading.Lock()  # one transaction at a time on the connection
        self._pending: deque[Record] = deque()
        self._inserting = threading.Lock()  # one _insert_pending at a time
        self._written: dict[str, tuple[float, int]] = {}  # flusher only: id -> last progress written
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def _open(self) -> sqlite3.Connection:
        """The store's connection: the file checked, in WAL mode, at this schema.

        Safe with any number of processes opening the journal at once: the
        checks read in one transaction, and the migration re-reads the version
        under the write lock. Raises StoreError; a file that fails a check is
        not changed.
        """
        try:
            conn = _connect(self.path, read_only=False)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise _failure(exc, self.path, "open") from exc
        try:
            with _snapshot(conn):
                version = _check(conn, self.path)
                if version:
                    _integrity(conn, self.path, version)
            _wal_mode(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            # A checkpoint syncs the disk: let the flusher do it (see _flush_loop), off the
            # commit path; a writer checkpoints only if the WAL grows past this many pages.
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_KEEP_BYTES}")  # the WAL file shrinks back
            if version < SCHEMA_VERSION:
                self._migrate(conn)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            conn.close()
            raise _failure(exc, self.path, "open") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the journal to this schema in one transaction, unless another process just did."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = _check(conn, self.path)  # again, under the write lock: the latest word
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
            raise _failure(exc, self.path, "migrate") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if 0 < version < SCHEMA_VERSION:
            log.info("migrated journal %s from schema %d to %d", self.path, version, SCHEMA_VERSION)

    # -- the protocol ------------------------------------------------------------

    def load(self) -> list[Record]:
        """The terminal records, oldest first; unfinished ones are left to :meth:`take_over`.

        A row that cannot be decoded is logged (a warning with its id and why)
        and left out, and stays in the journal as it is.
        """
        with self._lock:
            try:
                rows = self._conn.execute(
                    f"SELECT {_ROW} FROM records WHERE state NOT IN ('queued', 'running') ORDER BY created_at"
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot read journal {self.path}: {exc}") from exc
        return _decode_rows(self.path, rows)

    def take_over(self, sources: Collection[str]) -> list[Record]:
        """The unfinished records of ended sessions whose source is in ``sources``, now this session's.

        One ``BEGIN IMMEDIATE`` transaction: the sessions are checked for
        life inside it, so a session that takes records over meanwhile is
        seen alive. Lock files of ended sessions are removed afterwards.
        """
        me = self._session.id
        with self._lock:
            conn = self._conn
            try:
                with self._transaction():  # other processes' takeovers and cancels wait for this one
                    live, dead = self._session.scan()
                    rows = conn.execute(
                        f"SELECT {_ROW} FROM records WHERE state IN ('queued', 'running') "
                        "AND owner NOT IN (SELECT value FROM json_each(?)) "
                        "AND source IN (SELECT value FROM json_each(?)) ORDER BY created_at",
                        (json.dumps([me, *live]), json.dumps(sorted(sources))),
                    ).fetchall()
                    taken = [(me, row_id.decode()) for row_id, _ in rows]
                    conn.executemany("UPDATE records SET owner = ? WHERE id = ?", taken)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot read journal {self.path}: {exc}") from exc
            except UnicodeDecodeError as exc:  # an id that is not UTF-8
                raise _failure(exc, self.path, "read") from exc
        self._session.forget(dead)
        return _decode_rows(self.path, rows)

    def cancel_left(self, download_id: str) -> tuple[Record, bool]:
        """Cancel ``download_id`` if its session has ended, in one transaction (see :class:`RecordStore`)."""
        with self._lock:
            try:
                with self._transaction() as conn:
                    found = conn.execute(
                        "SELECT CAST(data AS BLOB), owner FROM records WHERE id = ?", (download_id,)
                    )
                    row = found.fetchone()
                    if row is None:
                        raise UnknownDownloadError(download_id)
                    record = _decode_or_fail(self.path, download_id, row[0])
                    if record.state.terminal:
                        return record, False
                    live, _ = self._session.scan()
                    if row[1] == self._session.id:
                        raise DownloadOwnedError(download_id, "this engine")
                    if row[1] in live:
                        raise DownloadOwnedError(download_id, self._session.describe(row[1]))
                    now = time.time()
                    record = attrs.evolve(
                        record,
                        state=State.CANCELLED,
                        updated_at=now,
                        finished_at=now,
                        speed=0.0,
                        time_remaining=None,
                    )
                    conn.execute(_UPSERT, (json.dumps([_encode(record, self._session.id)]),))
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot write journal {self.path}: {exc}") from exc
        return record, True

    def attach(self, running: Callable[[], list[Record]]) -> None:
        if self._flusher is not None or self._closed:
            return
        self._flusher = threading.Thread(
            target=self._flush_loop, args=(running,), name="headwater-journal", daemon=True
        )
        self._flusher.start()

    def add(self, record: Record) -> None:
        self._pending.append(record)  # deque.append is atomic: no lock on the submit path

    def commit(self, records: Sequence[Record]) -> None:
        """Upsert whole rows, so a record whose insert is still buffered is written complete.

        The buffered insert, when it comes, changes nothing (``ON CONFLICT DO
        NOTHING``): the committed state is never overwritten by an older one.
        """
        owner = self._session.id
        rows = json.dumps([_encode(r, owner) for r in records])  # outside the lock
        self._write(_UPSERT, rows)

    def delete(self, download_id: str) -> None:
        self._insert_pending()  # else a buffered insert could bring the record back
        self._write("DELETE FROM records WHERE id = ?", download_id)

    def flush(self) -> None:
        self._insert_pending()

    def paused(self) -> list[str]:
        with self._lock:
            try:
                rows = self._conn.execute("SELECT source FROM paused ORDER BY source").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read journal {self.path}: {exc}") from exc
        return [row[0] for row in rows]

    def set_paused(self, source: str, paused: bool) -> None:
        statement = (
            "INSERT INTO paused (source) VALUES (?) ON CONFLICT DO NOTHING"
            if paused
            else "DELETE FROM paused WHERE source = ?"
        )
        self._write(statement, source)

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(5)
        try:
            self._insert_pending()
        except StoreError as exc:
            log.error("%s; new records not written at close", exc)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        self._session.end()

    # -- writing -----------------------------------------------------------------

    def _write(self, statement: str, parameter: str) -> None:
        """Run one write ``statement`` with its one parameter, under ``self._lock``: one transaction.

        Once the store is closed the write is dropped (a plugin thread still
        running after ``close``). Raises StoreError if SQLite refuses it.
        """
        with self._lock:
            if self._closed:
                log.debug("journal %s is closed; write dropped", self.path)
                return
            try:
                self._conn.execute(statement, (parameter,))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write journal {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the connection (``self._lock`` held); ROLLBACK on error."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _insert_pending(self) -> None:
        """Commit every record added so far, ``_BATCH`` rows to a statement.

        Each batch is one ``INSERT ... SELECT FROM json_each(?)`` statement:
        one implicit transaction, and one release of the GIL, however many
        rows. Encoding happens outside the connection lock and the lock is
        released between batches, so a state change waits for one short batch
        at most. Callers are serialized, so whoever returns knows every earlier
        ``add`` is committed. Raises StoreError, keeping the unwritten records
        buffered.
        """
        owner = self._session.id
        with self._inserting:
            while self._pending:
                batch: list[Record] = []
                while self._pending and len(batch) < _BATCH:
                    batch.append(self._pending.popleft())
                try:
                    self._write(_INSERT_NEW, json.dumps([_encode(r, owner) for r in batch]))
                except StoreError:
                    self._pending.extendleft(reversed(batch))
                    raise

    def _write_progress(self, records: Iterable[Record]) -> None:
        rows = []
        written: dict[str, tuple[float, int]] = {}
        for r in records:
            mark = written[r.id] = (r.updated_at, r.transferred)
            if self._written.get(r.id) != mark:
                rows.append((_data(r), r.id, r.updated_at))
        self._written = written  # only running records: the map never outgrows them
        if not rows:
            return
        with self._lock:
            if self._closed:
                return
            try:
                with self._transaction() as conn:
                    # Only onto the very state the snapshot was taken in: never over a newer write.
                    conn.executemany(
                        "UPDATE records SET data = ? WHERE id = ? AND state = 'running' AND updated_at = ?",
                        rows,
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write journal {self.path}: {exc}") from exc

    def _flush_loop(self, running: Callable[[], list[Record]]) -> None:
        """Every ``flush_interval``: write buffered new records and changed progress, checkpoint the WAL."""
        checkpoints = _connect(self.path, read_only=False)
        try:
            while not self._stop.wait(self.flush_interval):
                try:
                    self._insert_pending()
                    self._write_progress(running())
                    self._checkpoint(checkpoints)
                except (StoreError, sqlite3.Error) as exc:
                    log.error("journal %s: %s", self.path, exc)
                except Exception:  # the flusher must outlive any one bad round
                    log.exception("journal %s: flushing failed", self.path)
        finally:
            checkpoints.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database file, so that the next commit starts the WAL over.

        ``conn`` is the flusher's own connection. A first PASSIVE checkpoint
        copies the bulk while commits go on. Commits that came meanwhile
        leave the WAL partly copied, and SQLite starts a WAL over only when
        all of it is; under a steady stream of commits that never happens by
        itself, and the WAL would grow until SQLite checkpointed inside a
        commit, stalling it. So a second checkpoint, with the connection lock
        held, copies just the pages written during the first.
        """
        _, logged, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if logged > 0:
            with self._lock:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


_BATCH = 64  # new records per statement: a state change waits for one batch at most
_WAL_PAGES = 8192  # 32 MiB of 4 KiB pages: the writers' own checkpoint, a safety net
_WAL_KEEP_BYTES = 4 << 20  # what a WAL file is cut back to when it starts over

#: Both take one parameter: a JSON array of rows, each an array in column order.
_FROM_JSON = (
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
    "json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), "
    "json_extract(value, '$[6]') FROM json_each(?) WHERE true"
)
_UPSERT = (
    f"INSERT INTO records (id, source, state, created_at, updated_at, data, owner) {_FROM_JSON} "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, "
    "data = excluded.data, owner = excluded.owner"
)
_INSERT_NEW = (
    f"INSERT INTO records (id, source, state, created_at, updated_at, data, owner) {_FROM_JSON} "
    "ON CONFLICT (id) DO NOTHING"
)
