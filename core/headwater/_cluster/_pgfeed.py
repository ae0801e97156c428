"""The change feed of a cluster's records: PostgreSQL's NOTIFY as the engine's :class:`Change` values.

Every visible change of a record (a new row, a state change, a removal) is
appended to the ``changes`` table and sent as a NOTIFY, by a trigger, in the
transaction that makes it (:mod:`headwater._cluster._pgschema`). A
:class:`RecordListener` LISTENs on a connection of its own and hands each
change, as a :class:`~headwater.Change`, to its ``publish`` callback (such
as :meth:`headwater._changes.ChangeFeed.publish`, whose subscribers are
what ``headwater serve`` reads).

NOTIFY is not kept for a listener that is not connected: what is sent while
its connection is down (a network cut, the server restarting, its backend
ended) is lost to it. So after every reconnect the listener *resyncs*: it
reads from ``changes`` every change since its *horizon* that it has not
handed on, in order, before any new notification. The horizon is an id of
a transaction such that every transaction below it had ended, and its
notifications had reached the listener, before the listener last marked it:
the listener sends itself a NOTIFY (a *mark*) carrying
``pg_snapshot_xmin(pg_current_snapshot())``; notifications are delivered in
the order their transactions committed, so when the mark arrives every
transaction below its xmin has been heard, and the mark's xmin is the new
horizon. The changes handed on since the horizon are remembered by their
``seq``, so none is handed on twice.

So, per download, the changes arrive in the order they were made, each
once, across any number of reconnects; changes of different downloads keep
the order of their commits, except that those read by a resync come first.
A listener cut off for longer than the store's ``retention`` may find some
changes pruned: it logs an error saying so and goes on.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from headwater._changes import Change, ChangeKind
from headwater._cluster._pgschema import channel, check_name
from headwater._cluster._pgsql import quoted
from headwater._cluster._pgstore import Conn, connect
from headwater._cluster._pgurl import masked, scrubbed
from headwater._codec import decode, structure
from headwater._errors import StoreError
from headwater._records import Record

log = logging.getLogger("headwater.store")

_KINDS = {"r": ChangeKind.RECORD, "d": ChangeKind.REMOVED}


class RecordListener:
    """Hands every change of the records in ``schema`` at ``url`` to ``publish``, in order, on its own thread.

    Args:
        url: the server (never shown with its password).
        publish: called with each list of new changes, oldest first, on the
            listener's thread; it must not block for long. What it raises is
            logged, and the listener goes on.
        schema: the schema of the records (as the stores writing them).
        mark_every: seconds between marks (each moves the horizon on, so that
            a resync reads little) while changes come in; idle, a mark every
            ten times that checks the connection.
        retry_for: seconds :meth:`start` keeps trying to connect before it
            raises StoreError.
        name: ``application_name`` of the listener's connection.

    :meth:`start` begins; every change committed from then on is handed on
    (and a few committed just before, which may repeat what a reader already
    has: records are whole values, so a repeat is harmless). :meth:`close`
    ends it.
    """

    def __init__(
        self,
        url: str,
        publish: Callable[[list[Change]], None],
        *,
        schema: str = "headwater",
        mark_every: float = 1.0,
        retry_for: float = 10.0,
        name: str = "headwater-feed",
    ) -> None:
        check_name(schema)
        self.schema = schema
        self.where = masked(url)
        self.mark_every = mark_every
        self.retry_for = retry_for
        self.name = name
        #: Changes handed on by resyncs so far (those NOTIFY did not bring).
        self.resynced = 0
        #: Connections made again after one was lost.
        self.reconnects = 0
        self._url = url
        self._publish = publish
        self._channel = channel(schema)
        self._s = quoted(schema)
        self._token = secrets.token_hex(8)
        self._horizon = 0  # xid8: every transaction below it has been heard
        self._seen: dict[int, int] = {}  # seq -> xact of the changes handed on at or above the horizon
        self._marked_at = 0.0
        self._since_mark = False
        self._conn: Conn | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RecordListener({self.where!r}, schema={self.schema!r})"

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listener's connection now (None while it has none)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    def start(self) -> None:
        """Connect and LISTEN, hand on what the first resync reads, and start the thread.

        Raises StoreError if the server cannot be reached within ``retry_for``.
        """
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                self._conn = self._listen(first=True)
                break
            except psycopg.Error as exc:
                if time.monotonic() >= deadline or not isinstance(exc, psycopg.OperationalError):
                    why = scrubbed(str(exc).strip(), self._url)
                    raise StoreError(
                        f"cannot listen to the records at {self.where} ({self.schema}): {why}"
                    ) from None
            time.sleep(0.1)
        self._thread = threading.Thread(target=self._run, name="headwater-feed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the connection. Later calls do nothing."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- the listener's thread ---------------------------------------------------

    def _run(self) -> None:
        pause = 0.05
        while not self._stop.is_set():
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = self._listen(first=False)
                    self.reconnects += 1
                    pause = 0.05
                self._pump(conn)
            except psycopg.Error as exc:
                if conn is not None:
                    log.warning(
                        "change feed of %s (%s): connection lost (%s); connecting again",
                        self.where,
                        self.schema,
                        scrubbed(str(exc).strip(), self._url),
                    )
                    conn.close()
                self._conn = None
                self._stop.wait(pause)
                pause = min(2 * pause, 1.0)
            except Exception:  # the thread must outlive any one bad round
                log.exception("change feed of %s (%s): a round failed", self.where, self.schema)
                self._stop.wait(pause)

    def _listen(self, *, first: bool) -> Conn:
        """A new connection LISTENing, after handing on what was missed: the resync, and a mark."""
        conn = connect(self._url, self.name, self.retry_for)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            if first:  # the start: every transaction below this one has ended
                found = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()
                self._horizon = int(found[0]) if found else 0
            self._resync(conn, first=first)
            self._mark(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _resync(self, conn: Conn, *, first: bool) -> None:
        """Hand on every change since the horizon not handed on yet, oldest first."""
        if not first:
            pruned = conn.execute(f"SELECT value FROM {self._s}.meta WHERE key = 'pruned_xact'").fetchone()
            if pruned is not None and int(pruned[0]) >= self._horizon:
                log.error(
                    "change feed of %s (%s): changes since transaction %d were pruned before this listener "
                    "could read them (it was away longer than the store's retention); some are lost: read "
                    "the records afresh",
                    self.where,
                    self.schema,
                    self._horizon,
                )
        rows = conn.execute(
            f"SELECT seq, xact::text, kind, data::text FROM {self._s}.changes WHERE xact >= %s::text::xid8 "
            "ORDER BY seq",
            (str(self._horizon),),
        ).fetchall()
        changes = []
        for seq, xact, kind, data in rows:
            if seq in self._seen:
                continue
            change = self._change(seq, kind, data)
            self._seen[seq] = int(xact)
            if change is not None:
                changes.append(change)
        if not first:
            self.resynced += len(changes)
        self._hand_on(changes)

    def _pump(self, conn: Conn) -> None:
        """Wait a moment for notifications, hand on the changes they bring, and mark when due."""
        tick = min(0.25, self.mark_every)
        got = list(conn.notifies(timeout=tick, stop_after=1))  # never left half read: none is lost
        changes = []
        try:
            for notice in got:
                change = self._notice(conn, notice.payload)
                if change is not None:
                    changes.append(change)
        finally:  # the connection broke while reading a change: those read are handed on, the rest resynced
            self._hand_on(changes)
        every = self.mark_every if self._since_mark else 10 * self.mark_every
        if time.monotonic() - self._marked_at >= every:
            self._mark(conn)

    def _notice(self, conn: Conn, payload: str) -> Change | None:
        """The change a notification brings (None: a mark, one handed on already, or unreadable)."""
        try:
            body = json.loads(payload)
            if "m" in body:
                if body["m"] == self._token:
                    self._advance(int(body["x"]))
                return None
            seq, xact, kind = int(body["s"]), int(body["x"]), str(body["k"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning(
                "change feed of %s (%s): a notification that is not a change (%s): %.120r",
                self.where,
                self.schema,
                exc,
                payload,
            )
            return None
        if seq in self._seen:
            return None
        data = body.get("data")
        if data is None:  # too big for a notification: read it (if the read fails, the resync reads it)
            found = conn.execute(
                f"SELECT data::text FROM {self._s}.changes WHERE seq = %s", (seq,)
            ).fetchone()
            data = None if found is None else found[0]
        self._seen[seq] = xact
        self._since_mark = True
        if data is None:
            log.error(
                "change feed of %s (%s): change %d was pruned before it was read",
                self.where,
                self.schema,
                seq,
            )
            return None
        return self._change(seq, kind, data)

    def _change(self, seq: int, kind: str, data: object) -> Change | None:
        """The Change of a ``changes`` row (``data``: its JSON text, or parsed); None if unreadable."""
        try:
            record = decode(data) if isinstance(data, str) else structure(data, Record)
            return Change(_KINDS[kind], record)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            log.warning(
                "change feed of %s (%s): change %d cannot be read (%s), so it is left out",
                self.where,
                self.schema,
                seq,
                exc,
            )
            return None

    def _hand_on(self, changes: list[Change]) -> None:
        if not changes:
            return
        try:
            self._publish(changes)
        except Exception:
            log.exception("change feed of %s (%s): publishing failed", self.where, self.schema)

    def _mark(self, conn: Conn) -> None:
        """Send a mark: when it comes back, its xmin is the new horizon."""
        conn.execute(
            "SELECT pg_notify(%s, json_build_object('m', %s::text, 'x', "
            "pg_snapshot_xmin(pg_current_snapshot())::text)::text)",
            (self._channel, self._token),
        )
        self._marked_at = time.monotonic()
        self._since_mark = False

    def _advance(self, horizon: int) -> None:
        """A mark came back: move the horizon on, and forget the changes below it."""
        if horizon <= self._horizon:
            return
        self._horizon = horizon
        self._seen = {seq: xact for seq, xact in self._seen.items() if xact >= horizon}
