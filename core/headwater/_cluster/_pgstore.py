"""The records of a cluster in PostgreSQL: :class:`PostgresStore`, a :class:`~headwater.RecordStore`.

What is durable when, as for :class:`~headwater.SQLiteStore`: a state
change (:meth:`PostgresStore.commit`, :meth:`PostgresStore.commit_if`) and
a removal are committed when the call returns; a new record
(:meth:`PostgresStore.add`) is buffered and written by the store's thread
within ``flush_interval`` (and by :meth:`PostgresStore.flush` and
``close``); progress is written at most once per ``flush_interval``, best
effort, never over a newer state.

Every write is one transaction on a connection of a psycopg pool. A write
that fails for want of a connection (the server restarted, the network
dropped, a deadlock) is tried again on a new connection, with backoff, for
up to ``retry_for`` seconds, then raises :class:`~headwater.StoreError`.
Each try of one call carries the same random *stamp*, written into every row
it changes: a try that finds its stamp already in a row knows an earlier try
of the same call committed (its reply was lost), so nothing is written twice
and the answer is still that it was.

Several stores, in any processes and hosts, may share one schema. Each is a
session: its unfinished records carry its id as ``owner``, and it holds a
PostgreSQL advisory lock named by that id on a connection of its own, which
the server releases when the process dies or is cut off. A session whose
lock is free has ended: :meth:`PostgresStore.take_over` takes its unfinished
records (one statement: two stores never both get one), and
:meth:`PostgresStore.cancel_left` cancels one of them. After the server
restarts, the store's thread takes its lock again within ``flush_interval``.

Messages, logs and ``repr`` name the server by its URL with the password
masked (:mod:`headwater._cluster._pgurl`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg_pool import ConnectionPool

from headwater._cluster._grouped import Grouped
from headwater._cluster._pgschema import check_name, open_schema
from headwater._cluster._pgsql import Statements, page_query, quoted
from headwater._cluster._pgurl import masked, scrubbed
from headwater._codec import decode, encode, plain
from headwater._errors import DownloadOwnedError, StoreError, UnknownDownloadError
from headwater._records import Record, State
from headwater._store import Place, Swap, distinct

log = logging.getLogger("headwater.store")

_T = TypeVar("_T")

Conn = psycopg.Connection[tuple[Any, ...]]

#: New records per statement: a state change waits for one such batch at most.
BATCH = 256

#: Records a streamed read decodes, and holds, at a time.
CHUNK = 1000

#: Seconds a try waits at most for a connection of the pool (then the next try asks again).
_WAIT = 1.0

#: Seconds between prunings of the ``changes`` table by a store's thread.
PRUNE_EVERY = 60.0

#: A row as the reads return it: id, created_at, data (JSON text).
_Row = tuple[str, float, str]


def connect(url: str, name: str, timeout: float) -> Conn:
    """A new autocommit connection to ``url``, named ``name`` in ``pg_stat_activity``.

    Raises psycopg's OperationalError if the server cannot be reached
    within ``timeout`` seconds (at least 2: libpq counts whole seconds).
    """
    return psycopg.connect(url, **_settings(name, timeout))


def _settings(name: str, timeout: float) -> dict[str, Any]:
    """The connection settings of :func:`connect` (and of the pool's connections)."""
    return {
        "autocommit": True,
        "application_name": name,
        "connect_timeout": max(2, round(timeout)),
        # A server that went away without a word (a host that died, a cable) is noticed
        # within about a minute instead of the system's default two hours.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def describe(owner: str) -> str:
    """Who the session ``owner`` is, in words (its id is ``host/pid/token``)."""
    host, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    return f"headwater process {pid} on {host}" if pid else f"the headwater session {owner!r}"


class _Session:
    """The store's session: its advisory lock, held on a connection of its own while the store is open.

    Not thread-safe: the store's thread calls :meth:`keep`, ``close`` calls
    :meth:`end`.
    """

    def __init__(self, conn: Conn, owner: str, url: str) -> None:
        self.owner = owner
        self._url = url
        self._where = masked(url)
        self._conn = conn
        self._lost = False
        self._lock()

    def _lock(self) -> None:
        self._conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (self.owner,))

    def keep(self) -> None:
        """Check the connection; if it was lost (the server restarted), connect again and take the lock.

        A server that cannot be reached is logged once (an error) until the
        lock is held again (a warning); nothing is raised.
        """
        try:
            self._conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            self._conn.close()
        try:
            self._conn = connect(self._url, "headwater-session", 10.0)
            self._lock()
        except psycopg.OperationalError as exc:
            if not self._lost:
                why = scrubbed(str(exc).strip(), self._url)
                log.error(
                    "session %s at %s: connection lost, not made again yet: %s", self.owner, self._where, why
                )
            self._lost = True
            return
        self._lost = False
        log.warning(
            "session %s at %s: connection lost and made again; its lock is held again",
            self.owner,
            self._where,
        )

    def end(self) -> None:
        """Close the connection: the lock goes with it."""
        self._conn.close()


class PostgresStore:
    """The records in one PostgreSQL schema, shared by any number of stores in any processes and hosts.

    Args:
        url: the server, as libpq takes it (``postgresql://user:pw@host/db``
            or ``host=... dbname=...``). Never shown with its password.
        schema: the schema the records live in; created (with its tables) if
            missing. Stores that share records name the same schema.
        flush_interval: seconds between writes of buffered new records and of
            progress.
        pool_size: connections at most in the store's pool (threads writing
            at once).
        retry_for: seconds a read or write keeps trying (on new
            connections) before it raises StoreError; also the bound on
            opening.
        retention: seconds the ``changes`` table keeps a change, for change
            feeds that reconnect (:mod:`headwater._cluster._pgfeed`).

    Opening raises :class:`~headwater.StoreError` if the server cannot be
    reached within ``retry_for``, or the schema belongs to another program
    or a newer headwater (it is never changed then); ValueError for a
    schema name that cannot be used. Thread-safe; every method but
    :meth:`add` may block up to ``retry_for`` while the server is away.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "headwater",
        flush_interval: float = 0.25,
        pool_size: int = 8,
        retry_for: float = 10.0,
        retention: float = 3600.0,
    ) -> None:
        check_name(schema)
        self.schema = schema
        self.where = masked(url)
        self.flush_interval = flush_interval
        self.retry_for = retry_for
        self.retention = retention
        self._url = url
        self._q = Statements(quoted(schema))
        owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(6)}"
        first = self._retrying(lambda _: connect(url, "headwater-session", retry_for), "connect to")
        try:
            self._retrying(lambda _: open_schema(first, schema, self.where), "open")
            self._session = _Session(first, owner, url)
        except BaseException:
            first.close()
            raise
        # The pool makes one try per new connection (reconnect_timeout 0): the store's own
        # retries pace the tries while the server is away (the pool's backoff would grow to
        # minutes, and keep the store waiting long after the server is back).
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=_settings("headwater-records", retry_for),
            name="headwater-records",
            open=False,
            reconnect_timeout=0.0,
        )
        try:
            self._pool.open(wait=True, timeout=retry_for)
        except psycopg.OperationalError as exc:
            self._pool.close()
            self._session.end()
            raise self._error("connect to", exc) from None
        self._swaps: Grouped[Swap, bool] = Grouped(self._swap, lambda swap: swap.record.id)
        self._starts: Grouped[Start, Record | None] = Grouped(self._start, lambda start: start.id)
        self._pending: collections.deque[Record] = collections.deque()
        self._inserting = threading.Lock()  # one _insert_pending at a time
        self._written: dict[str, tuple[float, int]] = {}  # the thread only: id -> last progress written
        self._running: Callable[[], list[Record]] = list
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="headwater-records", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}, schema={self.schema!r})"

    @property
    def owner(self) -> str:
        """This store's session id: the ``owner`` of the unfinished records it writes."""
        return self._session.owner

    # -- the protocol ------------------------------------------------------------

    def load(self) -> list[Record]:
        """The terminal records, oldest first; unfinished ones are left to :meth:`take_over`."""
        return self._decode(self._read(lambda conn: conn.execute(self._q.load).fetchall(), "read"))

    def get(self, download_id: str) -> Record | None:
        """The ended record ``download_id``, or None (see :class:`~headwater.RecordStore`)."""
        found = self._read(lambda conn: conn.execute(self._q.get, (download_id,)).fetchone(), "read")
        if found is None:
            return None
        record = self._decode_one(download_id, found[0])
        return record if record.state.terminal else None

    def fetch(self, ids: Collection[str]) -> dict[str, Record]:
        """The records of ``ids`` as the server holds them now, whatever their state; id -> record.

        What a cluster's worker reads: the record a scheduler wrote, and
        whether the download it runs is still its own (a cancel, a later
        attempt). An id with no row is left out (as is a row that cannot be
        decoded, logged). Raises StoreError if the server cannot be read.
        """
        if not ids:
            return {}
        rows = self._read(lambda conn: conn.execute(self._q.fetch, (list(ids),)).fetchall(), "read")
        return {record.id: record for record in self._decode(rows)}

    def states(self, ids: Collection[str]) -> dict[str, State]:
        """The states of ``ids`` as the server holds them now; id -> state (an id with no row left out).

        What a waiter polls: the state column alone, no record decoded.
        Raises StoreError if the server cannot be read.
        """
        if not ids:
            return {}
        rows = self._read(lambda conn: conn.execute(self._q.states, (list(ids),)).fetchall(), "read")
        return {row_id: State(state) for row_id, state in rows}

    def match(self, key: str) -> tuple[int, Record | None]:
        """Whether ``key`` names one download: an id, or else the start or end of ids (as ``status`` has it).

        Returns (0, None) for none, (2, None) for more than one (the count
        stops at 2), and (1, the record) for one. Raises StoreError if the
        server cannot be read.
        """
        exact = self.fetch([key]).get(key)
        if exact is not None:
            return 1, exact
        rows = self._read(lambda conn: conn.execute(self._q.matches, {"key": key}).fetchall(), "read")
        if len(rows) != 1:
            return len(rows), None
        found = self.fetch([rows[0][0]]).get(rows[0][0])
        return (1, found) if found is not None else (0, None)

    def matching(self, key: str, limit: int = 2) -> list[Record]:
        """The ended records ``key`` names (see :class:`~headwater.RecordStore`)."""
        exact = self.get(key)
        if exact is not None:
            return [exact]
        return self._named(self._q.named_ended, key, limit)

    def named(self, key: str, limit: int = 2) -> list[Record]:
        """The records, in any state, ``key`` names: the one whose id is ``key``, else up to
        ``limit`` whose id starts or ends with it, latest first. Raises StoreError if the
        server cannot be read."""
        exact = self.fetch([key]).get(key)
        if exact is not None:
            return [exact]
        return self._named(self._q.named, key, limit)

    def _named(self, query: str, key: str, limit: int) -> list[Record]:
        rows = self._read(lambda conn: conn.execute(query, {"key": key, "limit": limit}).fetchall(), "read")
        return self._decode(rows)

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` ended records, latest first (see :class:`~headwater.RecordStore`)."""
        below = self._cursor(before)
        return self._decode(self._select(states, sources, below, limit, ended_only=True))

    def page_at(
        self,
        place: Place | None,
        *,
        oldest_first: bool = False,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        limit: int = 100,
        ended_only: bool = True,
    ) -> list[Record]:
        """Up to ``limit`` ended records past ``place`` (see :class:`~headwater.RecordStore`).

        With ``ended_only=False``, unfinished records too (a cluster's page, one query).
        """
        rows = self._select(states, sources, place, limit, ended_only=ended_only, ascending=oldest_first)
        return self._decode(rows)

    def scan(
        self, *, states: Collection[State] | None = None, sources: Collection[str] | None = None
    ) -> Iterator[Record]:
        """Every ended record, latest first, read :data:`CHUNK` at a time (no connection held between)."""
        return self.records(states=states, sources=sources, ended_only=True)

    def records(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        ended_only: bool = False,
    ) -> Iterator[Record]:
        """Every record (unfinished ones too, unless ``ended_only``), filtered as :meth:`page`, latest first.

        What ``headwater status`` of a cluster reads: streamed,
        :data:`CHUNK` records at a time, each chunk its own read (a record
        written meanwhile may show in its new state or, if newer than the
        chunk, not at all; none shows twice). Raises UnknownDownloadError
        for a ``before`` the store does not hold (at once), StoreError
        while iterating if the server cannot be read.
        """
        below = self._cursor(before)

        def chunks(below: tuple[float, str] | None) -> Iterator[Record]:
            while True:
                rows = self._select(states, sources, below, CHUNK, ended_only=ended_only)
                yield from self._decode(rows)
                if len(rows) < CHUNK:
                    return
                below = (rows[-1][1], rows[-1][0])

        return chunks(below)

    def take_over(self, sources: Collection[str]) -> list[Record]:
        """The unfinished records of ended sessions whose source is in ``sources``, now this store's.

        One statement: a session counts as ended when its advisory lock is
        free, and the locks of the sessions taken from are held until it
        commits, so a store taking over at the same time gets none of
        theirs; a live session's records are never taken. Oldest first.
        """

        def work(conn: Conn, stamp: int) -> list[_Row]:
            params = {"sources": sorted(sources), "me": self.owner, "stamp": stamp}
            return conn.execute(self._q.take_over, params).fetchall()

        rows = self._write(work, "take over")
        return self._decode(sorted(rows, key=lambda row: (row[1], row[0])))

    def cancel_left(self, download_id: str) -> tuple[Record, bool]:
        """Cancel ``download_id`` if its session has ended, in one transaction (see :class:`RecordStore`)."""

        def work(conn: Conn, stamp: int) -> tuple[Record, bool]:
            with conn.transaction():
                found = conn.execute(self._q.lock_row, (download_id,)).fetchone()
                if found is None:
                    raise UnknownDownloadError(download_id)
                owner, mark, data = found
                record = self._decode_one(download_id, data)
                if mark == stamp:  # an earlier try of this call cancelled it; its reply was lost
                    return record, True
                if record.state.terminal:
                    return record, False
                if owner == self.owner:
                    raise DownloadOwnedError(download_id, "this engine")
                ended = conn.execute(self._q.try_lock, (owner,)).fetchone()
                if not (ended and ended[0]):
                    raise DownloadOwnedError(download_id, describe(owner))
                now = time.time()
                record = attrs.evolve(
                    record,
                    state=State.CANCELLED,
                    updated_at=now,
                    finished_at=now,
                    speed=0.0,
                    time_remaining=None,
                )
                conn.execute(self._q.cancel, (now, _data(record), stamp, download_id))
                return record, True

        self._insert_pending()
        return self._write(work, "cancel a download in")

    def attach(self, running: Callable[[], list[Record]]) -> None:
        """Write the progress of the records ``running`` returns, every ``flush_interval``, from now on."""
        self._running = running

    def add(self, record: Record) -> None:
        self._pending.append(record)  # deque.append is atomic: no lock on the submit path

    def commit(self, records: Sequence[Record]) -> None:
        """Write whole rows (added or not, owned by this session); one transaction.

        Buffered inserts are written first, so a change feed shows every
        record first as it was added.
        """
        latest = list({record.id: record for record in records}.values())  # one row per id and statement
        columns = _columns(latest)
        if self._dropped("write"):
            return
        self._insert_pending()
        self._write(lambda conn, stamp: conn.execute(self._q.upsert, (*columns, self.owner, stamp)), "write")

    def commit_if(self, swaps: Sequence[Swap]) -> list[bool]:
        """Each swap's record if its row is as seen, in one statement (see :class:`~headwater.RecordStore`).

        One ``UPDATE ... WHERE id = ... AND state = ... AND attempts = ...``
        for all of them; rows another writer is changing are waited for and
        judged as that writer left them (so of racing writers exactly one
        wins). The swaps of threads calling at the same time are written
        together, one statement and one commit for all
        (:mod:`~headwater._cluster._grouped`); a thread's answers are its
        own, and a failed write raises in each of them. Once the store is
        closed nothing is written (every answer False).
        """
        distinct([swap.record.id for swap in swaps])
        if self._dropped("conditional write"):
            return [False] * len(swaps)
        if not swaps:
            return []
        return self._swaps.call(swaps)

    def start_if(self, starts: Sequence[Start]) -> list[Record | None]:
        """Mark each download RUNNING if its row is QUEUED at the attempts its start saw; the records written.

        One conditional ``UPDATE ... RETURNING`` for all (the read and the
        write of a worker's start in one round trip): the row becomes the
        next attempt, started and updated at the start's ``at``, in the
        start's ``dest_dir`` unless it names one; a row in another state or
        attempt (cancelled, taken by another worker) is left as it is (None).
        The starts of threads calling at the same time are written together,
        as :meth:`commit_if`'s swaps (but not with them). Once the store is
        closed nothing is written (every answer None). A record the row
        holds that cannot be decoded raises StoreError; ValueError for a
        download given twice (both would be told they started it).
        """
        distinct([start.id for start in starts])
        if self._dropped("start"):
            return [None] * len(starts)
        if not starts:
            return []
        return self._starts.call(starts)

    def _start(self, starts: list[Start]) -> list[Record | None]:
        """The one statement of :meth:`start_if` for ``starts`` (distinct ids)."""
        ordered = sorted(range(len(starts)), key=lambda i: starts[i].id)  # rows locked in one order
        columns = (
            [starts[i].id for i in ordered],
            [starts[i].attempts for i in ordered],
            [starts[i].dest_dir for i in ordered],
            [starts[i].at for i in ordered],
        )
        self._insert_pending()

        def work(conn: Conn, stamp: int) -> list[str | None]:
            return [row[0] for row in conn.execute(self._q.start, (*columns, stamp, stamp, stamp)).fetchall()]

        rows = self._write(work, "write")
        answers: list[Record | None] = [None] * len(starts)
        for place, data in zip(ordered, rows, strict=True):
            if data is not None:
                answers[place] = self._decode_one(starts[place].id, data)
        return answers

    def _swap(self, swaps: list[Swap]) -> list[bool]:
        """The one statement of :meth:`commit_if` for ``swaps`` (distinct ids)."""
        ordered = sorted(range(len(swaps)), key=lambda i: swaps[i].record.id)  # rows locked in one order
        columns = _columns([swaps[i].record for i in ordered])
        seen = [_seen(swaps[i]) for i in ordered]
        attempts = [swaps[i].attempts for i in ordered]
        self._insert_pending()

        def work(conn: Conn, stamp: int) -> list[bool]:
            found = conn.execute(self._q.swap, (*columns, seen, attempts, stamp, stamp, stamp)).fetchone()
            return list(found[0]) if found is not None else []

        applied = self._write(work, "write")
        answers = [False] * len(swaps)
        for place, answer in zip(ordered, applied, strict=True):
            answers[place] = answer
        return answers

    def delete(self, download_id: str) -> None:
        if self._dropped("removal"):
            return
        self._insert_pending()  # else a buffered insert could bring the record back
        self._write(lambda conn, _: conn.execute(self._q.delete, (download_id,)), "write")

    def flush(self) -> None:
        self._insert_pending()

    def paused(self) -> list[str]:
        rows = self._read(lambda conn: conn.execute(self._q.paused).fetchall(), "read")
        return [row[0] for row in rows]

    def set_paused(self, source: str, paused: bool) -> None:
        statement = self._q.pause if paused else self._q.resume
        if self._dropped("pause"):
            return
        self._write(lambda conn, _: conn.execute(statement, (source,)), "write")

    def close(self) -> None:
        """Write the buffered records, stop the store's thread, close the pool, end the session."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.retry_for + 5)
        try:
            self._insert_pending()
        except StoreError as exc:
            log.error("%s; new records not written at close", exc)
        if self._closed:
            return
        self._closed = True
        self._pool.close()
        self._session.end()

    # -- reading -------------------------------------------------------------------

    def _select(
        self,
        states: Collection[State] | None,
        sources: Collection[str] | None,
        below: tuple[float, str] | None,
        limit: int,
        *,
        ended_only: bool,
        ascending: bool = False,
    ) -> list[_Row]:
        """Up to ``limit`` rows, latest first, below ``below`` (see :func:`page_query`; or ``ascending``)."""
        found = page_query(
            self._q.records, states, sources, below, limit, ended_only=ended_only, ascending=ascending
        )
        if found is None:
            return []
        query, params = found
        return self._read(lambda conn: conn.execute(query, params).fetchall(), "read")

    def _cursor(self, before: str | None) -> tuple[float, str] | None:
        """Where the page below the record ``before`` starts (None for None); UnknownDownloadError if none."""
        if before is None:
            return None
        found = self._read(lambda conn: conn.execute(self._q.cursor, (before,)).fetchone(), "read")
        if found is None:
            raise UnknownDownloadError(before)
        return (found[0], found[1])

    def _decode(self, rows: Iterable[_Row]) -> list[Record]:
        """The records of ``rows``, in order; a row that is not a record is logged and left out."""
        records = []
        for row_id, _, data in rows:
            try:
                records.append(decode(data))
            except (ValueError, TypeError, RecursionError) as exc:
                log.warning(
                    "records at %s (schema %s): record %s cannot be read (%s), so it is left out; "
                    "it stays as it is: %.120r",
                    self.where,
                    self.schema,
                    row_id,
                    exc,
                    data,
                )
        return records

    def _decode_one(self, download_id: str, data: str) -> Record:
        """The record ``data`` holds; StoreError naming the id if it is not one."""
        try:
            return decode(data)
        except (ValueError, TypeError, RecursionError) as exc:
            raise StoreError(
                f"records at {self.where} (schema {self.schema}): record {download_id} cannot be read ({exc})"
            ) from exc

    # -- writing -------------------------------------------------------------------

    def _dropped(self, what: str) -> bool:
        """Whether the store is closed, so that a write (of a plugin thread still running) is dropped."""
        if self._closed:
            log.debug("records at %s are closed; %s dropped", self.where, what)
        return self._closed

    def _insert_pending(self) -> None:
        """Commit every record added so far, :data:`BATCH` rows to a statement.

        Callers are serialized, so whoever returns knows every earlier
        ``add`` is committed. Raises StoreError, keeping the unwritten
        records buffered.
        """
        if not self._pending and not self._inserting.locked():
            return  # nothing buffered, and no one writing what was: every earlier add is in
        with self._inserting:
            while self._pending:
                batch: list[Record] = []
                while self._pending and len(batch) < BATCH:
                    batch.append(self._pending.popleft())
                try:
                    self._write(functools.partial(self._insert, _columns(batch)), "write")
                except StoreError:
                    self._pending.extendleft(reversed(batch))
                    raise

    def _insert(self, columns: tuple[list[object], ...], conn: Conn, stamp: int) -> None:
        """Insert the rows of ``columns`` (:func:`_columns`) that are not there yet."""
        conn.execute(self._q.insert, (*columns, self.owner))

    def _write_progress(self, records: Iterable[Record]) -> None:
        """Write the changed progress of running ``records``, only onto the state it was taken in."""
        rows = []
        written: dict[str, tuple[float, int]] = {}
        for r in records:
            mark = written[r.id] = (r.updated_at, r.transferred)
            if self._written.get(r.id) != mark:
                rows.append((_data(r), r.id, r.attempts, r.updated_at))
        self._written = written  # only running records: the map never outgrows them
        if rows:
            self._write(lambda conn, _: conn.cursor().executemany(self._q.progress, rows), "write")

    def _write(self, work: Callable[[Conn, int], _T], doing: str) -> _T:
        """``work(conn, stamp)`` on a pooled connection, tried again while connections fail.

        ``stamp`` is the same for every try (see the module's docstring).
        Once the store is closed, raises StoreError.
        """
        stamp = secrets.randbits(63)
        return self._read(lambda conn: work(conn, stamp), doing)

    def _read(self, work: Callable[[Conn], _T], doing: str) -> _T:
        """``work(conn)`` on a pooled connection, tried again while connections fail, for ``retry_for``.

        Raises StoreError (saying what ``doing`` failed) once the time is
        up, at once for an error no new connection would mend (a bad
        value, a missing table), and if the store is closed.
        """
        if self._closed:
            raise StoreError(f"the records at {self.where} (schema {self.schema}) are closed")

        def attempt(left: float) -> _T:
            with self._pool.connection(timeout=min(left, _WAIT)) as conn:
                return work(conn)

        return self._retrying(attempt, doing, check=self._pool.check)

    def _retrying(
        self, work: Callable[[float], _T], doing: str, check: Callable[[], None] | None = None
    ) -> _T:
        """``work(seconds left)``, tried again after an OperationalError for ``retry_for``; then StoreError.

        ``check`` runs before each new try (the pool drops its broken
        connections, and tries a new one). Other psycopg errors raise
        StoreError at once.
        """
        deadline = time.monotonic() + self.retry_for
        pause = 0.05
        while True:
            try:
                return work(max(0.01, deadline - time.monotonic()))
            except psycopg.OperationalError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._error(doing, exc) from None
                log.debug("%s the records at %s failed (%s); trying again", doing, self.where, exc)
            except psycopg.Error as exc:
                raise self._error(doing, exc) from None
            time.sleep(min(pause, left))
            pause = min(2 * pause, 1.0)
            if check is not None:
                with contextlib.suppress(psycopg.Error):  # the next try says what is wrong
                    check()

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        """The StoreError of ``exc``: what failed, where (the URL masked), and psycopg's words, scrubbed."""
        why = scrubbed(str(exc).strip() or type(exc).__name__, self._url)
        return StoreError(f"cannot {doing} the records at {self.where} (schema {self.schema}): {why}")

    # -- the store's thread ----------------------------------------------------------

    def _loop(self) -> None:
        """Every ``flush_interval``: new records, changed progress, the session; prune now and then."""
        prune_at = time.monotonic()
        while not self._stop.wait(self.flush_interval):
            try:
                self._session.keep()
                self._insert_pending()
                self._write_progress(self._running())
                if time.monotonic() >= prune_at:
                    self._write(lambda conn, _: conn.execute(self._q.prune, (self.retention,)), "prune")
                    prune_at = time.monotonic() + PRUNE_EVERY
            except StoreError as exc:
                log.error("%s", exc)
            except Exception:  # the thread must outlive any one bad round
                log.exception("records at %s: the store's round failed", self.where)


@attrs.frozen
class Start:
    """A worker's start of a download (:meth:`PostgresStore.start_if`).

    Attributes:
        id: the download.
        attempts: the ``attempts`` its QUEUED record had when it was sent;
            it starts attempt ``attempts + 1``.
        dest_dir: its folder, unless its record names one.
        at: when it starts (``time.time()``).
    """

    id: str
    attempts: int
    dest_dir: str
    at: float


def _data(record: Record) -> str:
    """``record`` as JSON text; StoreError for a field that cannot be stored.

    PostgreSQL's jsonb takes no NaN or infinity, which Python's JSON would
    write: refused here, naming the record, instead of failing the batch.
    """
    try:
        text = encode(record)
        if "NaN" in text or "Infinity" in text:  # perhaps a float: look closer
            json.dumps(plain(record), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store record {record.id}: {exc}") from exc
    return text


def _seen(swap: Swap) -> str | None:
    """The state ``swap``'s writer saw, in SQL (None: any unfinished state)."""
    return None if swap.state is None else swap.state.value


def _columns(records: Sequence[Record]) -> tuple[list[object], ...]:
    """The column arrays of ``records`` (id, source, state, attempts, created_at, updated_at, data)."""
    return (
        [r.id for r in records],
        [r.source for r in records],
        [r.state.value for r in records],
        [r.attempts for r in records],
        [r.created_at for r in records],
        [r.updated_at for r in records],
        [_data(r) for r in records],
    )
