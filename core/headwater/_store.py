"""Where the engine's records go: the :class:`RecordStore` protocol, and :class:`MemoryStore`.

A store is the journal the engine writes every change to. Ended records
(COMPLETED, FAILED, CANCELLED) live in the store, which answers for them on
demand (:meth:`RecordStore.get`, :meth:`RecordStore.page`,
:meth:`RecordStore.page_at`, :meth:`RecordStore.scan`); the unfinished
ones are the engine's. The SQLite
journal is :class:`~headwater.SQLiteStore` (:mod:`headwater._journal`).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Protocol

import attrs

from headwater._errors import UnknownDownloadError
from headwater._records import Record, State

#: A place in the order of making: a record's (``created_at``, ``id``).
Place = tuple[float, str]


def _seen_state(swap: Swap, attribute: attrs.Attribute[State | None], state: State | None) -> None:
    if state is None and swap.record.state is not State.CANCELLED:
        raise ValueError(
            f"only a cancel applies from any state; record {swap.record.id} is {swap.record.state.name}"
        )


@attrs.frozen
class Swap:
    """A conditional write (:meth:`RecordStore.commit_if`): ``record`` replaces its row if that is as seen.

    Attributes:
        record: the new record, written whole.
        state: the state the writer saw the row in; None for a cancel
            (``record`` CANCELLED, else ValueError), which applies from any
            unfinished state whatever the attempts: a cancel always wins.
        attempts: the ``attempts`` the writer saw the row with (not
            looked at for a cancel).
    """

    record: Record
    state: State | None = attrs.field(validator=_seen_state)
    attempts: int = 0

    @classmethod
    def over(cls, seen: Record, record: Record) -> Swap:
        """``record`` in place of ``seen``: only if the row is still in ``seen``'s state and attempts."""
        return cls(record, seen.state, seen.attempts)

    @classmethod
    def cancel(cls, record: Record) -> Swap:
        """The CANCELLED ``record``, applying from any unfinished state (a cancel always wins)."""
        return cls(record, None)

    def applies(self, state: State, attempts: int) -> bool:
        """Whether this write applies to a row in ``state`` with ``attempts``."""
        if self.state is None:
            return not state.terminal
        return state is self.state and attempts == self.attempts


def distinct(ids: Collection[str]) -> None:
    """ValueError unless ``ids`` are distinct: one conditional write per record in a call.

    The rule of :meth:`RecordStore.commit_if` (the ids of its swaps' records)
    and of a cluster store's ``start_if``.
    """
    if len(set(ids)) != len(ids):
        raise ValueError("one conditional write per record in a call: an id was given twice")


class RecordStore(Protocol):
    """The journal an engine writes its records to, and reads its ended records from.

    The engine calls ``add``, ``commit`` and ``delete`` with the record's
    source lock held, from whichever thread made the change; implementations
    must be thread-safe and must not call back into the engine. The reads
    (``get``, ``page``, ``scan``) cover the ended records only; "latest
    first" is by ``created_at``, then by id, both descending.
    """

    def get(self, download_id: str) -> Record | None:
        """The ended record ``download_id``, or None if the store holds no ended record of that id.

        Raises :class:`~headwater.StoreError` if the journal cannot be read,
        or if that record's row cannot be decoded.
        """
        ...

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` ended records, latest first.

        Only those in one of ``states`` (unfinished states match nothing)
        and on one of ``sources`` (canonical names); None means any.
        ``before`` is a cursor: the id of a record the store holds (the last
        of the previous page), and the page holds the records after it,
        latest first. A record that cannot be decoded is left out (and
        logged), so a page may be short. Raises
        :class:`~headwater.UnknownDownloadError` for a ``before`` the store
        does not hold, :class:`~headwater.StoreError` if the journal cannot
        be read.
        """
        ...

    def page_at(
        self,
        place: Place | None,
        *,
        oldest_first: bool = False,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` ended records past ``place``: below it latest first, or above it oldest first.

        ``place`` is a (``created_at``, ``id``) that no record need hold
        (None: from the latest, or the oldest); filtered as in :meth:`page`.
        Raises :class:`~headwater.StoreError` if the journal cannot be read.
        """
        ...

    def matching(self, key: str, limit: int = 2) -> list[Record]:
        """The ended records ``key`` names: the one whose id is ``key``, else up to ``limit`` whose id
        starts or ends with it, latest first (how ``headwater status IDS`` reads a key).

        Every id may be looked at once; only the records returned are read.
        Raises :class:`~headwater.StoreError` if the journal cannot be read.
        """
        ...

    def scan(
        self, *, states: Collection[State] | None = None, sources: Collection[str] | None = None
    ) -> Iterator[Record]:
        """Every ended record (filtered as in :meth:`page`), latest first, streamed.

        Memory stays bounded whatever the store holds: the records are read
        a chunk at a time, and none is kept once yielded. Raises
        :class:`~headwater.StoreError` (while iterating) if the journal
        cannot be read.
        """
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

        Raises :class:`~headwater.StoreError` if the write fails. The engine
        logs it and goes on in memory; it does the same, with the traceback,
        for any other exception raised here.
        """
        ...

    def commit_if(self, swaps: Sequence[Swap]) -> list[bool]:
        """Write each swap's record only if its row is as its writer saw it; durable when this returns.

        Every state change can be written so: the row changes only from the
        state and attempts the writer saw (:meth:`Swap.over`), so that a late
        write of a slow or dead worker (an older attempt, or a record since
        cancelled) is refused; a cancel (:meth:`Swap.cancel`) applies from
        any unfinished state. Each swap is judged on its own, all in one
        transaction. A record added (:meth:`add`) counts as there, in the
        state it was added in; a row that is not there (never added, or
        deleted) is not written. The owner of a row is left as it is.

        Returns one bool per swap, in order: True if its record is now the
        row. A write retried after a lost reply is not applied twice, and
        still answers True. Raises ValueError if two swaps name one record,
        :class:`~headwater.StoreError` if the write fails (then none is
        written).
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


def _latest(record: Record) -> tuple[float, str]:
    """The sort key of "latest first" (descending): creation time, then id."""
    return (record.created_at, record.id)


class MemoryStore:
    """No journal: the ended records are kept in a dict, for the reads, and the changed unfinished ones.

    A record only added costs it nothing (``add`` keeps nothing); a commit
    keeps the record, until :meth:`delete` (an unfinished one until it ends:
    :meth:`commit_if` compares with it). So :meth:`commit_if` cannot tell a
    record only added from one never added or deleted: it counts each as
    QUEUED with no attempts (the protocol refuses writes to the last two).
    Thread-safe.
    """

    def __init__(self) -> None:
        self._ended: dict[str, Record] = {}
        self._changed: dict[str, Record] = {}  # unfinished records committed at least once
        self._lock = threading.Lock()

    def load(self) -> list[Record]:
        """Every ended record, oldest first, all at once (not :class:`RecordStore`'s: nothing calls it)."""
        with self._lock:
            return sorted(self._ended.values(), key=_latest)

    def get(self, download_id: str) -> Record | None:
        return self._ended.get(download_id)

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Record]:
        place = None
        if before is not None:
            anchor = self._ended.get(before)
            if anchor is None:
                raise UnknownDownloadError(before)
            place = _latest(anchor)
        return self.page_at(place, states=states, sources=sources, limit=limit)

    def page_at(
        self,
        place: Place | None,
        *,
        oldest_first: bool = False,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        limit: int = 100,
    ) -> list[Record]:
        found = self._matching(states, sources)
        if place is not None:
            found = [r for r in found if (_latest(r) > place if oldest_first else _latest(r) < place)]
        pick = heapq.nsmallest if oldest_first else heapq.nlargest
        return pick(limit, found, key=_latest)

    def matching(self, key: str, limit: int = 2) -> list[Record]:
        exact = self._ended.get(key)
        if exact is not None:
            return [exact]
        with self._lock:
            records = list(self._ended.values())
        named = (r for r in records if r.id.startswith(key) or r.id.endswith(key))
        return heapq.nlargest(limit, named, key=_latest)

    def scan(
        self, *, states: Collection[State] | None = None, sources: Collection[str] | None = None
    ) -> Iterator[Record]:
        yield from sorted(self._matching(states, sources), key=_latest, reverse=True)

    def _matching(self, states: Collection[State] | None, sources: Collection[str] | None) -> list[Record]:
        """The ended records in ``states`` and of ``sources``, in no order."""
        with self._lock:
            records = list(self._ended.values())
        return [
            r
            for r in records
            if (states is None or r.state in states) and (sources is None or r.source in sources)
        ]

    def take_over(self, sources: Collection[str]) -> list[Record]:
        return []

    def cancel_left(self, download_id: str) -> tuple[Record, bool]:
        raise UnknownDownloadError(download_id)

    def attach(self, running: Callable[[], list[Record]]) -> None:
        pass

    def add(self, record: Record) -> None:
        pass

    def commit(self, records: Sequence[Record]) -> None:
        with self._lock:
            for record in records:
                self._keep(record)

    def commit_if(self, swaps: Sequence[Swap]) -> list[bool]:
        distinct([swap.record.id for swap in swaps])
        applied = []
        with self._lock:
            for swap in swaps:
                held = self._changed.get(swap.record.id) or self._ended.get(swap.record.id)
                state, attempts = (State.QUEUED, 0) if held is None else (held.state, held.attempts)
                applied.append(swap.applies(state, attempts))
                if applied[-1]:
                    self._keep(swap.record)
        return applied

    def _keep(self, record: Record) -> None:
        """Hold ``record`` as its id's latest (``self._lock`` held)."""
        if record.state.terminal:
            self._ended[record.id] = record
            self._changed.pop(record.id, None)
        else:
            self._changed[record.id] = record

    def delete(self, download_id: str) -> None:
        with self._lock:
            self._ended.pop(download_id, None)
            self._changed.pop(download_id, None)

    def flush(self) -> None:
        pass

    def paused(self) -> list[str]:
        return []

    def set_paused(self, source: str, paused: bool) -> None:
        pass

    def close(self) -> None:
        pass
