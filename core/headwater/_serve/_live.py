"""The server's live view: its index of the active records, and the event stream's log and fan-out.

:class:`Live` holds one engine subscription (:meth:`headwater.Engine.subscribe`).
Its pump thread waits on it; the changes it takes go, in one locked step,
into the :class:`ActiveIndex` of the queued and running downloads, the
:class:`RecentIndex` of the newest ones, and the :class:`EventLog` the
streams replay from, and are handed to the streams on
the event loop. A request handler that changed something calls
:meth:`Live.catch_up` (the same step on its own thread), so its answer and
the next list already show the change.

Progress is not a change: while downloads run, the pump reads their
snapshots every ``tick`` seconds and sends one ``progress`` event with
those whose figures moved.

The event stream (server-sent events), in order on each connection:

- ``snapshot``: the downloads queued or running, the ``recent`` newest
  ones, and every source; sent on connect, and again to everyone if the
  server had to read the engine afresh. Its id is that of the latest event
  it already reflects; it is sent to one connection and never replayed;
- ``download`` (with an id): a record that is new or changed state;
- ``removed`` (with an id): ``{"id": ...}`` of a download removed;
- ``source`` (with an id): a source whose pause or policy changed;
- ``progress`` (no id): ``{"downloads": [{"id", "progress", "transferred",
  "size", "speed", "time_remaining"}, ...]}``, at most once per ``tick``;
- a comment line every ``keepalive`` seconds.

A client that reconnects with ``Last-Event-ID`` gets every event with an id
after it (from a log of the latest ``log_size``), then the current progress
of the running downloads; if its id is too old or from an earlier run of the
server, it gets a new snapshot instead.

Threads: the pump is one daemon thread; handlers call :meth:`catch_up` and
:meth:`open_stream` from worker threads; streams are read on the event loop.
One lock (``Live._lock``) guards the indexes, the log and the stream list;
nothing waits for a client while holding it, and the engine is read under
it only to start the indexes afresh (a page of its newest records). Pages
of records are read from the :class:`RecentIndex` of the newest
``window`` records, fed by the changes; a page that goes further is read
from the engine (:meth:`headwater.Engine.page`), which reads the ended
records it shows from its store. So the server holds the queued and
running downloads and a bounded window, however long the history.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

import attrs

from headwater import Change, ChangeKind, Record, State, SubscriptionOverflow, UnknownDownloadError
from headwater._engine import Engine
from headwater._serve._views import ENCODER, SourceView

log = logging.getLogger("headwater._serve")

_ACTIVE = frozenset({State.QUEUED, State.RUNNING})


@attrs.frozen
class Query:
    """Which records one page holds.

    Attributes:
        states: only records in these states (empty: any).
        sources: only records of these sources (empty: any).
        limit: at most this many.
        cursor: go on after the place this cursor names (what an earlier
            page returned, see :func:`cursor_of`; its record need not exist
            any more), or None to start at the newest (or the oldest).
        newest_first: newest first, else oldest first.
    """

    states: tuple[State, ...] = ()
    sources: tuple[str, ...] = ()
    limit: int = 100
    cursor: str | None = None
    newest_first: bool = True


class ActiveIndex:
    """The queued and running records by id: what the progress events and snapshots start from.

    The ended ones are not held: pages read them from the engine (see
    :meth:`Live.page`). Not thread-safe: :class:`Live` guards it with its
    lock.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def reset(self, records: Iterable[Record]) -> None:
        """Hold exactly the queued and running ones of ``records``."""
        self._records = {r.id: r for r in records if r.state in _ACTIVE}

    def apply(self, change: Change) -> None:
        """Bring the index up to date with one change."""
        record = change.record
        if change.kind is ChangeKind.RECORD and record.state in _ACTIVE:
            self._records[record.id] = record
        else:
            self._records.pop(record.id, None)

    def active(self) -> list[Record]:
        """The queued and running records, oldest first."""
        return sorted(self._records.values(), key=_made)

    def running(self) -> list[str]:
        """The ids of the running records."""
        return [i for i, r in self._records.items() if r.state is State.RUNNING]


class RecentIndex:
    """The newest records, at most ``size``, in the order of making: the pages they answer are read here.

    It holds every record at or above its floor (the place of the oldest
    record it holds, once it has let one go; None until then: it holds them
    all), so a page that stays at or above the floor is answered from it,
    and one that would go below it is not (:meth:`page` and :meth:`newest`
    return None: read it from the engine). The order is (``created_at``,
    ``id``); a page's cursor names a place in it (see :func:`cursor_of`).
    Not thread-safe: :class:`Live` guards it with its lock.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._records: dict[str, Record] = {}
        self._keys: list[tuple[float, str]] = []  # sorted
        self._floor: tuple[float, str] | None = None

    def reset(self, newest: Iterable[Record]) -> None:
        """Hold ``newest``, the engine's newest records (``size`` of them, or all if fewer)."""
        self._records = {r.id: r for r in newest}
        self._keys = sorted(_made(r) for r in self._records.values())
        self._floor = self._keys[0] if len(self._keys) >= self._size else None

    def apply(self, change: Change) -> None:
        """Bring the index up to date with one change; a new record below the floor is not its to hold."""
        record = change.record
        known = self._records.get(record.id)
        if change.kind is ChangeKind.REMOVED:
            if known is not None:
                del self._records[record.id]
                del self._keys[bisect.bisect_left(self._keys, _made(known))]
            return
        if known is None:
            key = _made(record)
            if self._floor is not None and key < self._floor:
                return
            if not self._keys or key > self._keys[-1]:
                self._keys.append(key)
            else:
                bisect.insort(self._keys, key)
        self._records[record.id] = record
        if len(self._keys) > self._size:
            del self._records[self._keys.pop(0)[1]]
            self._floor = self._keys[0]

    def page(self, query: Query) -> tuple[list[Record], str | None] | None:
        """The records of one page (see :class:`Query`) and the next page's cursor, or None if not all here.

        Raises ValueError for a cursor no page returned.
        """
        wanted_states = set(query.states)
        wanted_sources = set(query.sources)
        keys = self._keys
        after = None if query.cursor is None else _place(query.cursor)
        if query.newest_first:
            start = len(keys) if after is None else bisect.bisect_left(keys, after)
            order: Iterable[int] = range(start - 1, -1, -1)
        else:
            if self._floor is not None and (after is None or after < self._floor):
                return None  # it starts below the floor
            start = 0 if after is None else bisect.bisect_right(keys, after)
            order = range(start, len(keys))
        found: list[Record] = []
        for at in order:
            record = self._records[keys[at][1]]
            if wanted_states and record.state not in wanted_states:
                continue
            if wanted_sources and record.source not in wanted_sources:
                continue
            if len(found) == query.limit:
                return found, cursor_of(found[-1])
            found.append(record)
        if query.newest_first and self._floor is not None:
            return None  # it reached the floor: what lies below is the engine's
        return found, None

    def newest(self, count: int) -> list[Record] | None:
        """The ``count`` newest records, newest first; None if fewer are held than there are."""
        if count > len(self._keys) and self._floor is not None:
            return None
        return [self._records[i] for _, i in reversed(self._keys[-count:])] if count else []


def _active(engine: Engine) -> list[Record]:
    """The engine's queued and running records (it holds them in memory: no store is read)."""
    return engine.page(states=_ACTIVE, limit=sys.maxsize)


def _made(record: Record) -> tuple[float, str]:
    return record.created_at, record.id


def cursor_of(record: Record) -> str:
    """The cursor naming ``record``'s place in the order of making: ``<created_at>_<id>``."""
    return f"{record.created_at!r}_{record.id}"


def _place(cursor: str) -> tuple[float, str]:
    made, sep, download_id = cursor.partition("_")
    try:
        if not sep:
            raise ValueError
        return float(made), download_id
    except ValueError:
        raise ValueError(f"cursor {cursor!r} is not one a page of this server returned") from None


def _event(kind: str, data: object, event_id: str | None = None) -> bytes:
    """One server-sent event: ``id`` (if any), ``event`` and one ``data`` line of JSON."""
    head = f"id: {event_id}\nevent: {kind}\n" if event_id is not None else f"event: {kind}\n"
    return head.encode() + b"data: " + ENCODER.encode(data) + b"\n\n"


class EventLog:
    """The numbered events, the latest ``size`` kept for replay.

    Event ids are ``<run>-<n>``: ``run`` is random per server start, so an id
    from an earlier run is never taken for one of this run.
    """

    def __init__(self, size: int) -> None:
        self.run = os.urandom(4).hex()
        self.seq = 0
        self._kept: deque[tuple[int, bytes]] = deque(maxlen=size)

    def add(self, kind: str, data: object) -> tuple[int, bytes]:
        """Number and format a new event; keep it for replay."""
        self.seq += 1
        chunk = _event(kind, data, f"{self.run}-{self.seq}")
        self._kept.append((self.seq, chunk))
        return self.seq, chunk

    def mark(self) -> str:
        """The id of the latest event: a snapshot taken now carries it (and is not kept)."""
        return f"{self.run}-{self.seq}"

    def forget(self) -> None:
        """Keep nothing from before now: a reconnect with any earlier id gets a snapshot."""
        self._kept.clear()
        self.seq += 1  # the ids up to now cannot be replayed from here, not even the latest

    def since(self, event_id: str) -> list[bytes] | None:
        """The kept events after ``event_id``, or None when it cannot be replayed from here."""
        run, _, number = event_id.strip().partition("-")
        if run != self.run or not number.isdigit():
            return None
        seq = int(number)
        if seq > self.seq:
            return None
        first = self._kept[0][0] if self._kept else self.seq + 1
        if seq < first - 1:
            return None
        return [chunk for n, chunk in self._kept if n > seq]


@attrs.define(eq=False)
class _Stream:
    """One connected client: its queue of events, read on the event loop."""

    after: int  # events numbered up to here are in its first chunks already
    limit: int
    pending: deque[tuple[int | None, bytes]] = attrs.Factory(deque)
    ready: asyncio.Event = attrs.Factory(asyncio.Event)
    ended: bool = False  # the server stops, or the client fell too far behind


class Live:
    """The index and the event stream of one engine; see the module docstring.

    Args:
        engine: the engine served; it must outlive :meth:`stop`.
        sources: returns the sources as the API shows them (called off the loop).
        tick: seconds between progress reads while downloads run.
        keepalive: seconds between keep-alive comments on a quiet stream.
        log_size: events kept for reconnecting clients.
        recent: how many of the newest downloads a snapshot carries beside the active ones.
        window: how many of the newest downloads are kept for the pages (the first
            pages of a list, which most requests read); a page that goes further
            is read from the engine (see :class:`RecentIndex`).
        backlog: events a stream may have unsent before it is ended (it reconnects);
            room for a burst such as a 10,000-target submit (three events each).
            The events are shared by every stream: a stream holds references only.
    """

    def __init__(
        self,
        engine: Engine,
        sources: Callable[[], list[SourceView]],
        *,
        tick: float = 0.25,
        keepalive: float = 15.0,
        log_size: int = 4096,
        recent: int = 100,
        window: int = 4096,
        backlog: int = 100_000,
    ) -> None:
        self.engine = engine
        self._window_size = window
        self.tick = tick
        self.keepalive = keepalive
        self._sources = sources
        self._recent = recent
        self._backlog = backlog
        self._lock = threading.Lock()
        self._subscription = engine.subscribe()
        self._index = ActiveIndex()
        self._index.reset(_active(engine))
        self._window = RecentIndex(window)
        self._window.reset(engine.page(limit=window))
        self._log = EventLog(log_size)
        self._streams: tuple[_Stream, ...] = ()  # replaced whole under the lock; read on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shown: dict[str, tuple[int, int | None]] = {}  # pump only: progress last sent per id
        self._stopping = threading.Event()
        self._pump: threading.Thread | None = None

    # -- life ----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the pump thread; streams are served on ``loop``."""
        self._loop = loop
        self.catch_up()
        self._pump = threading.Thread(target=self._run, name="headwater-serve-pump", daemon=True)
        self._pump.start()

    def stop(self) -> None:
        """Stop the pump, close the subscription and end every stream. Call on the event loop."""
        self._stopping.set()
        self._subscription.close()
        if self._pump is not None:
            self._pump.join(5)
        with self._lock:
            streams, self._streams = self._streams, ()
        for stream in streams:
            stream.ended = True
            stream.ready.set()

    # -- reading ---------------------------------------------------------------

    def page(self, query: Query) -> tuple[list[Record], str | None]:
        """The records of one page (see :class:`Query`) and the cursor of the next, or None on the last.

        Read from the newest records kept (:class:`RecentIndex`), or, for a
        page that goes further, from the engine (:meth:`headwater.Engine.page`:
        the ended records from its store, only those of the page); running
        ones with live progress. Raises ValueError for a cursor no page returned,
        StoreError when the store cannot be read.
        """
        self.catch_up()
        with self._lock:
            held = self._window.page(query)
        if held is not None:
            records, cursor = held
            return [self._live(r) for r in records], cursor
        found = self.engine.page(
            states=query.states or None,
            sources=query.sources or None,
            after=None if query.cursor is None else _place(query.cursor),
            oldest_first=not query.newest_first,
            limit=query.limit + 1,  # one more: is there a next page?
        )
        if len(found) > query.limit:
            return found[: query.limit], cursor_of(found[query.limit - 1])
        return found, None

    def active_count(self) -> int:
        with self._lock:
            return len(self._index.active())

    def _live(self, record: Record) -> Record:
        if record.state is not State.RUNNING:
            return record
        try:
            return self.engine.get(record.id)
        except UnknownDownloadError:
            return record

    # -- the feed ----------------------------------------------------------------

    def catch_up(self) -> None:
        """Take every change queued so far into the index, the log and the streams (any thread)."""
        with self._lock:
            try:
                changes = self._subscription.get(0)
            except SubscriptionOverflow:
                log.warning("the event stream fell behind the engine; every stream gets a new snapshot")
                self._index.reset(_active(self.engine))
                self._window.reset(self.engine.page(limit=self._window_size))
                self._log.forget()
                self._deliver([(None, self._snapshot_locked())])
                return
            if not changes:
                return
            events = []
            for change in changes:
                self._index.apply(change)
                self._window.apply(change)
                if change.kind is ChangeKind.REMOVED:
                    events.append(self._log.add("removed", {"id": change.record.id}))
                else:
                    events.append(self._log.add("download", change.record))
            self._deliver(events)

    def source_changed(self, names: Iterable[str]) -> None:
        """Send a ``source`` event for each of ``names`` (after a pause, resume or new policy)."""
        wanted = set(names)
        views = [v for v in self._sources() if v.name in wanted]
        with self._lock:
            self._deliver([self._log.add("source", v) for v in views])

    def _snapshot_locked(self) -> bytes:
        """A ``snapshot`` event as of the log's latest event (the lock is held); not kept in the log."""
        active = {r.id: r for r in self._index.active()}
        newest = self._window.newest(self._recent)
        if newest is None:
            newest = self.engine.page(limit=self._recent)
        recent = {r.id: r for r in newest}
        chosen = sorted({**recent, **active}.values(), key=_made, reverse=True)
        data = {"downloads": [self._live(r) for r in chosen], "sources": self._sources()}
        return _event("snapshot", data, self._log.mark())

    def _deliver(self, events: Sequence[tuple[int | None, bytes]]) -> None:
        """Hand ``events`` to the streams on the loop; the lock is held (so the order is the log's)."""
        loop = self._loop
        if loop is not None and self._streams and events:
            loop.call_soon_threadsafe(self._to_streams, self._streams, list(events))

    def _to_streams(self, streams: tuple[_Stream, ...], events: list[tuple[int | None, bytes]]) -> None:
        """On the loop: queue ``events`` on each stream (a stream past its backlog is ended)."""
        for stream in streams:
            if stream.ended:
                continue
            for seq, chunk in events:
                if seq is None or seq > stream.after:
                    stream.pending.append((seq, chunk))
            if len(stream.pending) > stream.limit:
                stream.ended = True
                stream.pending.clear()
            stream.ready.set()

    # -- the pump ----------------------------------------------------------------

    def _run(self) -> None:
        """The pump thread: wait for changes; while downloads run, send progress every ``tick``."""
        next_tick = time.monotonic() + self.tick
        while not self._stopping.is_set() and not self._subscription.closed:
            with self._lock:
                running = self._index.running()
            now = time.monotonic()
            if running:
                if now >= next_tick:
                    self._send_progress(running)
                    next_tick = now + self.tick
                    continue
                self._subscription.wait(next_tick - now)
            else:
                self._shown.clear()
                self._subscription.wait(None)
                next_tick = time.monotonic() + self.tick
            try:
                self.catch_up()
            except Exception:  # the pump must outlive any one bad round
                log.exception("the event stream's pump failed a round")

    def _send_progress(self, running: list[str]) -> None:
        """One ``progress`` event with the running downloads whose figures moved since the last."""
        moved = []
        shown: dict[str, tuple[int, int | None]] = {}
        for download_id in running:
            try:
                record = self.engine.get(download_id)
            except UnknownDownloadError:
                continue
            mark = shown[download_id] = (record.transferred, record.size)
            # (0, None): nothing reported yet, or a snapshot read as the download ends (its
            # context already gone, its end not yet visible): no figure worth sending.
            if record.state is State.RUNNING and mark != (0, None) and self._shown.get(download_id) != mark:
                moved.append(_progress_of(record))
        self._shown = shown
        if moved:
            with self._lock:
                self._deliver([(None, _event("progress", {"downloads": moved}))])

    def _progress_now(self) -> bytes | None:
        """A ``progress`` event with every running download (for a stream that reconnected)."""
        with self._lock:
            running = self._index.running()
        figures = []
        for download_id in running:
            try:
                figures.append(_progress_of(self.engine.get(download_id)))
            except UnknownDownloadError:
                continue
        return _event("progress", {"downloads": figures}) if figures else None

    # -- streams ---------------------------------------------------------------

    def open_stream(self, last_event_id: str | None) -> tuple[_Stream, list[bytes]]:
        """Register a new stream; return it and its first chunks (a replay or a snapshot).

        Call off the event loop: it reads the engine.
        """
        with self._lock:
            replay = self._log.since(last_event_id) if last_event_id else None
            first = replay if replay is not None else [self._snapshot_locked()]
            stream = _Stream(after=self._log.seq, limit=self._backlog)
            self._streams = (*self._streams, stream)
        if replay is not None:
            progress = self._progress_now()
            if progress is not None:
                first.append(progress)
        return stream, [b"retry: 2000\n\n", *first]

    def close_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._streams = tuple(s for s in self._streams if s is not stream)

    async def events(self, stream: _Stream, first: list[bytes], keepalive: float) -> AsyncIterator[bytes]:
        """The stream's chunks: ``first``, then events as they come, keep-alives between (on the loop)."""
        try:
            for chunk in first:
                yield chunk
            while not stream.ended:
                try:
                    await asyncio.wait_for(stream.ready.wait(), keepalive)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                stream.ready.clear()
                if stream.ended:
                    break
                chunks = [chunk for _, chunk in stream.pending]
                stream.pending.clear()
                if chunks:
                    yield b"".join(chunks)
        finally:
            self.close_stream(stream)


def _progress_of(record: Record) -> Mapping[str, object]:
    return {
        "id": record.id,
        "progress": record.progress,
        "transferred": record.transferred,
        "size": record.size,
        "speed": record.speed,
        "time_remaining": record.time_remaining,
    }
