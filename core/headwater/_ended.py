"""The ended downloads of an engine: in its store, the latest few also in memory.

The engine holds the records of the downloads that are queued or running.
Once a download ends and its terminal record is committed to the store
(:class:`~headwater.RecordStore`), the record leaves the engine, and
:class:`Ended` answers for it: from a bounded window of the latest ended
records, else from the store, through its indexes. So what an engine holds
follows its work, not its history: opening a journal of a million ended
downloads reads none of them.

A terminal record never changes (a removal takes it away), so the window
needs no invalidation but a removal's. Besides the window, the records of
downloads someone waits for (:meth:`Ended.pin`) are kept while they are
waited for, so that a wait for more downloads than the window holds reads
none of them back from the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator

from headwater._records import Record, State
from headwater._store import Place, RecordStore

#: How many of the latest ended records an engine keeps in memory.
WINDOW = 1024


class Ended:
    """The ended records of one engine's store, of the sources it has loaded.

    Args:
        store: the engine's store, which holds every committed record.
        loaded: whether a record's ``source`` (a name or an alias, as the
            store holds it) is a loaded source; records of others are not
            the engine's to show.
        window: how many of the latest ended records to keep in memory.

    Thread-safe; never calls into the engine. The reads raise
    :class:`~headwater.StoreError` when the store cannot be read.
    """

    def __init__(self, store: RecordStore, loaded: Callable[[str], bool], window: int = WINDOW) -> None:
        self._store = store
        self._loaded = loaded
        self._size = window
        self._window: OrderedDict[str, Record] = OrderedDict()
        self._pins: dict[str, int] = {}  # id -> how many waits pin it
        self._pinned: dict[str, Record] = {}  # the records of pinned ids that ended while pinned
        self._lock = threading.Lock()

    def keep(self, record: Record) -> None:
        """Hold ``record``, which just ended and is committed to the store, among the latest."""
        with self._lock:
            self._window[record.id] = record
            if len(self._window) > self._size:
                self._window.popitem(last=False)
            if record.id in self._pins:
                self._pinned[record.id] = record

    def forget(self, download_id: str) -> None:
        """Let go of ``download_id``'s record, which its removal deleted from the store."""
        with self._lock:
            self._window.pop(download_id, None)
            self._pinned.pop(download_id, None)

    def pin(self, ids: Iterable[str]) -> None:
        """Hold the record of each of ``ids`` that ends from now on until :meth:`unpin`, beyond the window."""
        with self._lock:
            for download_id in ids:
                self._pins[download_id] = self._pins.get(download_id, 0) + 1

    def unpin(self, ids: Iterable[str]) -> None:
        """Undo one :meth:`pin` of ``ids``; a record no longer pinned is let go (the store keeps it)."""
        with self._lock:
            for download_id in ids:
                left = self._pins[download_id] - 1
                if left:
                    self._pins[download_id] = left
                else:
                    del self._pins[download_id]
                    self._pinned.pop(download_id, None)

    def held(self, download_id: str) -> Record | None:
        """The ended record ``download_id`` if it is in memory (the window, or pinned); reads no store."""
        with self._lock:
            return self._window.get(download_id) or self._pinned.get(download_id)

    def get(self, download_id: str) -> Record | None:
        """The ended record ``download_id``, or None if there is none of a loaded source."""
        with self._lock:
            record = self._window.get(download_id) or self._pinned.get(download_id)
        if record is None:
            record = self._store.get(download_id)
        return record if record is not None and self._loaded(record.source) else None

    def matching(self, key: str, limit: int) -> list[Record]:
        """The ended records of loaded sources ``key`` names (see :meth:`RecordStore.matching`)."""
        return [r for r in self._store.matching(key, limit) if self._loaded(r.source)]

    def scan(self, sources: Collection[str] | None = None) -> Iterator[Record]:
        """Every ended record of ``sources`` (names as the store holds them; None: any), latest first.

        Streamed from the store a chunk at a time (see :meth:`RecordStore.scan`).
        """
        return (r for r in self._store.scan(sources=sources) if self._loaded(r.source))

    def page(
        self,
        place: Place | None,
        *,
        oldest_first: bool,
        states: Collection[State] | None,
        sources: Collection[str] | None,
        limit: int,
    ) -> list[Record]:
        """Up to ``limit`` ended records of loaded sources past ``place`` (see :meth:`RecordStore.page_at`).

        Records of other sources are skipped: the store is read on past
        them until the page is full or the store has no more.
        """
        found: list[Record] = []
        while len(found) < limit:
            asked = limit - len(found)
            chunk = self._store.page_at(
                place, oldest_first=oldest_first, states=states, sources=sources, limit=asked
            )
            found += [r for r in chunk if self._loaded(r.source)]
            if len(chunk) < asked:
                break
            place = (chunk[-1].created_at, chunk[-1].id)
        return found
