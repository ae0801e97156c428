"""The SQLite journal: :class:`SQLiteStore`, a :class:`~headwater.RecordStore` in one file.

What is durable when:

- A state change (QUEUED -> RUNNING, a terminal write, a record requeued
  after a restart) and a removal are committed by :meth:`SQLiteStore.commit`
  and :meth:`SQLiteStore.delete`, which the engine calls before the change
  is visible to any reader. "Committed" means it survives the process being
  killed; SQLite runs with ``synchronous=NORMAL`` in WAL mode, so a power
  loss may roll back the last few commits, never corrupt the file.
- A new record (:meth:`SQLiteStore.add`) is buffered, so that ``submit``
  stays cheap; the flusher thread commits it within ``flush_interval``
  seconds (in transactions of up to 64), and :meth:`SQLiteStore.flush`
  and ``close`` commit every buffered one. A submit is therefore durable
  once ``Engine.flush()`` returns. A record whose first state change comes
  before its insert is written whole by that change, and the late insert
  then changes nothing.
- Progress is best effort: the flusher thread writes the running records'
  snapshots (from :meth:`SQLiteStore.attach`'s callback) at most once per
  ``flush_interval``, only those that changed, and never over a newer
  state. After a crash the figure may be stale; the ``.part`` file on disk
  is what a source resumes from.

Several engines, in one process or many, may share a journal: SQLite's
locking serializes their transactions, and each engine only runs and writes
its own records. An engine's session (:mod:`headwater._sessions`) holds a
lock file the operating system releases when the process dies; the
unfinished records of dead sessions are taken over only by an engine that
is going to run them (:meth:`SQLiteStore.take_over`), and may be cancelled
by anyone (:meth:`SQLiteStore.cancel_left`). Readers
(:class:`~headwater._reader.JournalReader`) work beside them at any time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import attrs

from headwater._codec import encode
from headwater._errors import DownloadOwnedError, StoreError, UnknownDownloadError
from headwater._paths import default_journal
from headwater._reader import (
    ENDED,
    ROW,
    Cursor,
    Row,
    decode_or_fail,
    decode_rows,
    find_cursor,
    select_named_ended,
    select_one,
    select_page,
    stream,
)
from headwater._records import Record, State
from headwater._schema import connect, failure, open_journal
from headwater._sessions import Session
from headwater._store import Place, Swap, distinct

log = logging.getLogger("headwater.store")

_T = TypeVar("_T")


_Row = tuple[str, str, str, float, float, str, str]


def _row(record: Record, owner: str) -> _Row:
    """The journal row of ``record``; raises StoreError for a field that cannot be journaled."""
    data = _data(record)
    return (record.id, record.source, record.state.value, record.created_at, record.updated_at, data, owner)


def _data(record: Record) -> str:
    """``record`` as the journal's JSON; raises StoreError for a field that cannot be journaled."""
    try:
        return encode(record)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot journal record {record.id}: {exc}") from exc


class SQLiteStore:
    """A journal in one SQLite file (WAL mode) that several engines, in any processes, may share.

    Each store is a session: the unfinished records it writes carry its
    session id. :meth:`get`, :meth:`page` and :meth:`scan` read the history
    (terminal records) on demand, through the journal's indexes, and
    :meth:`load` all of it at once;
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
            self._session = Session(self.path)
        except OSError as exc:
            raise StoreError(f"cannot start a session on journal {self.path}: {exc}") from exc
        try:
            self._conn = open_journal(self.path, verify=not self._session.vouched())
        except BaseException:
            self._session.end()
            raise
        try:
            self._session.publish()
        except OSError as exc:
            self._conn.close()
            self._session.end()
            raise StoreError(f"cannot start a session on journal {self.path}: {exc}") from exc
        self._lock = threading.Lock()  # one transaction at a time on the connection
        self._pending: deque[Record] = deque()
        self._inserting = threading.Lock()  # one _insert_pending at a time
        self._written: dict[str, tuple[float, int]] = {}  # flusher only: id -> last progress written
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- the protocol ------------------------------------------------------------

    def load(self) -> list[Record]:
        """The terminal records, oldest first; unfinished ones are left to :meth:`take_over`.

        All at once, for tools and tests: not a :class:`~headwater.RecordStore`
        method, the engine never calls it (it reads ended records on demand).
        A row that cannot be decoded is logged (a warning with its id and why)
        and left out, and stays in the journal as it is.
        """
        query = f"SELECT {ROW} FROM records WHERE {ENDED} ORDER BY created_at, id"
        rows = self._read(lambda conn: conn.execute(query).fetchall())
        return decode_rows(self.path, rows)

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
                        f"SELECT {ROW} FROM records WHERE state IN ('queued', 'running') "
                        "AND owner NOT IN (SELECT value FROM json_each(?)) "
                        "AND source IN (SELECT value FROM json_each(?)) ORDER BY created_at, id",
                        (json.dumps([me, *live]), json.dumps(sorted(sources))),
                    ).fetchall()
                    taken = [(me, row_id.decode()) for row_id, _, _ in rows]
                    conn.executemany("UPDATE records SET owner = ? WHERE id = ?", taken)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot read journal {self.path}: {exc}") from exc
            except UnicodeDecodeError as exc:  # an id that is not UTF-8
                raise failure(exc, self.path, "read") from exc
        self._session.forget(dead)
        return decode_rows(self.path, rows)

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
                    record = decode_or_fail(self.path, download_id, row[0])
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
                    conn.execute(_UPSERT, (json.dumps([_row(record, self._session.id)]),))
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot write journal {self.path}: {exc}") from exc
        return record, True

    def get(self, download_id: str) -> Record | None:
        """The ended record ``download_id``, or None (see :class:`~headwater.RecordStore`)."""
        data = self._read(lambda conn: select_one(conn, download_id))
        if data is None:
            return None
        record = decode_or_fail(self.path, download_id, data)
        return record if record.state.terminal else None

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` ended records, latest first (see :class:`~headwater.RecordStore`)."""
        return self._page(self._cursor(before), False, states, sources, limit)

    def page_at(
        self,
        place: Place | None,
        *,
        oldest_first: bool = False,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` ended records past ``place`` (see :class:`~headwater.RecordStore`)."""
        return self._page(place, oldest_first, states, sources, limit)

    def _page(
        self,
        below: Cursor | None,
        ascending: bool,
        states: Collection[State] | None,
        sources: Collection[str] | None,
        limit: int,
    ) -> list[Record]:
        rows = self._read(
            functools.partial(
                select_page,
                ended_only=True,
                states=states,
                sources=sources,
                below=below,
                limit=limit,
                ascending=ascending,
            )
        )
        return decode_rows(self.path, rows)

    def matching(self, key: str, limit: int = 2) -> list[Record]:
        """The ended records ``key`` names (see :class:`~headwater.RecordStore`)."""
        return decode_rows(self.path, self._read(lambda conn: select_named_ended(conn, key, limit)))

    def scan(
        self, *, states: Collection[State] | None = None, sources: Collection[str] | None = None
    ) -> Iterator[Record]:
        """Every ended record, latest first, read :data:`~headwater._reader.CHUNK` at a time.

        The connection is held for one chunk's read at a time, never while
        the caller handles a record.
        """

        def read(below: Cursor | None, size: int) -> list[Row]:
            page = functools.partial(
                select_page, ended_only=True, states=states, sources=sources, below=below, limit=size
            )
            return self._read(page)

        return stream(read, self.path)

    def _cursor(self, before: str | None) -> Cursor | None:
        """The cursor of the record ``before`` (None for None); UnknownDownloadError if there is none."""
        if before is None:
            return None
        below = self._read(lambda conn: find_cursor(conn, before))
        if below is None:
            raise UnknownDownloadError(before)
        return below

    def _read(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        """``read(conn)`` on the store's connection, under its lock; StoreError if SQLite fails."""
        with self._lock:
            try:
                return read(self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read journal {self.path}: {exc}") from exc

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
        """Upsert whole rows, so a record whose insert is still buffered is written complete; one transaction.

        The buffered insert, when it comes, changes nothing (``ON CONFLICT DO
        NOTHING``): the committed state is never overwritten by an older one.
        A record's source changes only when a fallback chain moves it on,
        which names the source it left in ``tried``: only the rows of records
        with a ``tried`` rewrite the source column (and its index entry), which
        spares every other commit a page write.
        """
        owner = self._session.id
        stay: list[_Row] = []
        moved: list[_Row] = []
        for record in records:  # encoded outside the lock
            (moved if record.tried else stay).append(_row(record, owner))
        self._write(*((s, json.dumps(rows)) for s, rows in ((_UPSERT, stay), (_UPSERT_MOVED, moved)) if rows))

    def commit_if(self, swaps: Sequence[Swap]) -> list[bool]:
        """Each swap's record if its row is as seen, in one transaction (see :class:`~headwater.RecordStore`).

        Buffered inserts are committed first, so that a record added counts
        as there. The attempts are read from the row's record (``data``); a
        row that is not a record is never written. Once the store is closed
        nothing is written (every answer False).
        """
        distinct([swap.record.id for swap in swaps])
        # Encoded outside the lock.
        writes = [(_swap_statement(swap), _swap_parameters(swap)) for swap in swaps]
        self._insert_pending()
        with self._lock:
            if self._closed:
                log.debug("journal %s is closed; conditional writes dropped", self.path)
                return [False] * len(writes)
            try:
                with self._transaction() as conn:
                    return [conn.execute(statement, values).rowcount == 1 for statement, values in writes]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write journal {self.path}: {exc}") from exc

    def delete(self, download_id: str) -> None:
        self._insert_pending()  # else a buffered insert could bring the record back
        self._write(("DELETE FROM records WHERE id = ?", download_id))

    def flush(self) -> None:
        self._insert_pending()

    def paused(self) -> list[str]:
        rows = self._read(lambda conn: conn.execute("SELECT source FROM paused ORDER BY source").fetchall())
        return [row[0] for row in rows]

    def set_paused(self, source: str, paused: bool) -> None:
        statement = (
            "INSERT INTO paused (source) VALUES (?) ON CONFLICT DO NOTHING"
            if paused
            else "DELETE FROM paused WHERE source = ?"
        )
        self._write((statement, source))

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
        self._session.seal()
        self._session.end()

    # -- writing -----------------------------------------------------------------

    def _write(self, *writes: tuple[str, str]) -> None:
        """Run each (statement, its one parameter) of ``writes`` under ``self._lock``, in one transaction.

        Once the store is closed the writes are dropped (a plugin thread
        still running after ``close``). Raises StoreError if SQLite refuses
        one; then none is written.
        """
        if not writes:
            return
        with self._lock:
            if self._closed:
                log.debug("journal %s is closed; write dropped", self.path)
                return
            try:
                if len(writes) == 1:  # one statement: its own transaction
                    self._conn.execute(writes[0][0], (writes[0][1],))
                    return
                with self._transaction() as conn:
                    for statement, parameter in writes:
                        conn.execute(statement, (parameter,))
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
                    self._write((_INSERT_NEW, json.dumps([_row(r, owner) for r in batch])))
                except StoreError:
                    self._pending.extendleft(reversed(batch))
                    raise

    def _write_progress(self, records: Iterable[Record]) -> None:
        rows = []
        written: dict[str, tuple[float, int]] = {}
        for r in records:
            mark = written[r.id] = (r.updated_at, r.transferred)
            if self._written.get(r.id) != mark:
                rows.append((encode(r), r.id, r.updated_at))
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
        checkpoints = connect(self.path, read_only=False)
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


def _swap_statement(swap: Swap) -> str:
    """The UPDATE of ``swap``: its record's row, only from the state (and attempts) the writer saw.

    The source column (and its index entry) is rewritten only for a record
    a chain moved on, as in :meth:`SQLiteStore.commit`.
    """
    moved = ", source = ?" if swap.record.tried else ""
    seen = _ANY_UNFINISHED if swap.state is None else _AS_SEEN
    return f"UPDATE records SET state = ?, updated_at = ?, data = ?{moved} WHERE id = ? AND {seen}"


def _swap_parameters(swap: Swap) -> tuple[object, ...]:
    """The parameters of :func:`_swap_statement`; StoreError for a field that cannot be journaled."""
    record = swap.record
    data = _data(record)
    moved = (record.source,) if record.tried else ()
    seen = () if swap.state is None else (swap.state.value, swap.attempts)
    return (record.state.value, record.updated_at, data, *moved, record.id, *seen)


_ANY_UNFINISHED = "state IN ('queued', 'running')"
_AS_SEEN = "state = ? AND CASE WHEN json_valid(data) THEN json_extract(data, '$.attempts') END = ?"

_BATCH = 64  # new records per statement: a state change waits for one batch at most

#: Each takes one parameter: a JSON array of rows, each an array in column order.
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
_UPSERT_MOVED = f"{_UPSERT}, source = excluded.source"
_INSERT_NEW = (
    f"INSERT INTO records (id, source, state, created_at, updated_at, data, owner) {_FROM_JSON} "
    "ON CONFLICT (id) DO NOTHING"
)
