"""The shards: each source's lock and unfinished downloads, and the map of them.

Downloads are sharded by source: each source has one re-entrant lock that
guards its downloads (each :class:`~headwater._download.Download` holding
its record as committed) and its worker's queue, so a source
whose lock is held never delays another. Every state change goes through
:meth:`Shard.move`, which enforces :data:`headwater.TRANSITIONS`, and is
committed to the store before anyone can see it. A record that ends leaves
its shard once committed, for :class:`~headwater._ended.Ended`.

A download of a fallback chain moves from shard to shard; :class:`Shards`
keeps ``home``, the id -> shard map of chain downloads only, so a reader or
a cancel that finds the download gone from a shard looks again where it went.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager

from headwater._attempt import Attempt, with_progress
from headwater._changes import ChangeFeed, ChangeKind
from headwater._context import DownloadContext
from headwater._download import Download
from headwater._ended import Ended
from headwater._errors import StoreError, UnknownDownloadError
from headwater._records import Record, State, changed, may_transition
from headwater._redact import protect
from headwater._sources import Source, SourceRegistry
from headwater._store import RecordStore
from headwater._worker import SourceWorker

log = logging.getLogger("headwater")

#: Chain download id -> the shard it is on now.
Home = dict[str, "Shard"]


class Shard:
    """One source's lock, unfinished downloads and worker.

    The lock guards everything here; readers read :attr:`downloads` and each
    one's ``record`` without it (a record is immutable, and replaced whole;
    see :meth:`record`). :attr:`worker` is set by whoever builds the shard,
    before it is used.
    """

    def __init__(
        self, source: Source, store: RecordStore, feed: ChangeFeed, ended: Ended, home: Home
    ) -> None:
        self.source = source
        self.store = store
        self.feed = feed
        self.ended = ended
        self.home = home
        self.lock = threading.RLock()
        #: Unfinished downloads by id, each with its record as committed (what readers see);
        #: one the store refused to end stays, with its terminal record, as the only copy.
        self.downloads: dict[str, Download] = {}
        self._batch = _Batch(self._write)
        self.running: dict[str, DownloadContext] = {}  # attempts whose download_impl has not returned
        self.logger = logging.getLogger(f"headwater.source.{source.name}")
        protect(self.logger)  # settings: no secret value in what the source logs
        self.worker: SourceWorker[Download, DownloadContext, Attempt]

    def move(self, record: Record, state: State, **changes: object) -> Record | None:
        """Write ``record`` in ``state`` if the transition is legal; the lock must be held.

        ``record`` must be the current record (see :meth:`current`). Returns
        the new record, or None (and writes nothing) when the transition is
        illegal. The new record is committed to the store before it replaces
        the old one, at once or, inside :meth:`batch`, when the batch ends. If
        the store cannot write it, the error is logged and the engine goes on
        in memory: a download never hangs on a full disk, and what the journal
        missed is redone after a restart.
        """
        if not may_transition(record.state, state):
            log.debug("refused %s -> %s for %s", record.state.name, state.name, record.id)
            return None
        return self.amend(record, state=state, **changes)

    def amend(self, record: Record, **changes: object) -> Record:
        """Write ``record`` with ``changes``, committed as :meth:`move` does; the lock must be held.

        Checks no transition: :meth:`move` does, and ``ctx.describe`` changes no state.
        """
        new = changed(record, updated_at=time.time(), **changes)
        unwritten = self._batch.moves
        if unwritten is None:
            self._write({new.id: (record.state, new)})
        else:
            first = unwritten.get(new.id)
            unwritten[new.id] = (record.state if first is None else first[0], new)
        return new

    def record(self, download_id: str) -> Record | None:
        """The committed record of ``download_id`` if this shard holds it (any thread, no lock)."""
        download = self.downloads.get(download_id)
        return None if download is None else download.record

    def records(self) -> list[Record]:
        """The committed records of every download this shard holds (any thread, no lock)."""
        return [download.record for download in list(self.downloads.values())]

    def current(self, download_id: str) -> Record | None:
        """The record as the locked step in progress left it (moves of an open batch included)."""
        unwritten = self._batch.moves
        if unwritten:
            moved = unwritten.get(download_id)
            if moved is not None:
                return moved[1]
        return self.record(download_id)

    def batch(self) -> AbstractContextManager[None]:
        """Within it (lock held), moves are committed together at its end, then become visible.

        One store commit instead of one per move: the end of a download and
        the start of the next share a transaction. Batches do not nest.
        """
        return self._batch

    def _write(self, moves: Mapping[str, tuple[State, Record]]) -> None:
        """Commit the new records of ``moves`` (id -> (state before, new record)), then make them current.

        A terminal record committed leaves the shard for :attr:`ended` (one
        the store refused stays, as the only copy). Whatever the store raises
        (a StoreError, or another exception of a store's own bug) counts as
        a write that failed (see :meth:`move`).
        """
        records = [new for _, new in moves.values()]
        committed = True
        try:
            self.store.commit(records)
        except Exception as exc:  # a store's bug too (not a StoreError): the same rule, with its traceback
            committed = False
            changes = ", ".join(f"{was.name} -> {new.state.name} of {new.id}" for was, new in moves.values())
            log.error("%s; %s kept in memory only", exc, changes, exc_info=not isinstance(exc, StoreError))
        downloads = self.downloads
        for new in records:
            download_id = new.id
            download = downloads.get(download_id)
            if committed and new.state.terminal:
                self.ended.keep(new)  # before it leaves: a reader missing it here finds it there
                if download is not None:
                    del downloads[download_id]
                self.home.pop(download_id, None)
            elif download is not None:
                download.record = new
        self.feed.publish(ChangeKind.RECORD, records)

    def cancel(self, record: Record) -> bool:
        """Cancel ``record``'s download (the lock held); True if this call cancelled it.

        The download's own check-and-set (:meth:`Download.cancel`) settles a
        race with its start or end; the CANCELLED record follows.
        """
        download = self.downloads.get(record.id)
        if download is not None and not record.state.terminal:
            download.cancel()
        moved = self.move(
            self.snapshot(record), State.CANCELLED, finished_at=time.time(), speed=0.0, time_remaining=None
        )
        return moved is not None

    def snapshot(self, record: Record) -> Record:
        """``record`` with the live progress of its download, if it is running."""
        if record.state is not State.RUNNING:
            return record
        ctx = self.running.get(record.id)
        if ctx is None:
            return record
        return with_progress(record, ctx)


class _Batch:
    """:meth:`Shard.batch`'s context, one per shard (a class, not a generator: it is entered per download).

    Attributes:
        moves: the open batch's moves, id -> (state before, new record); None outside a batch.
    """

    __slots__ = ("moves", "_write")

    def __init__(self, write: Callable[[Mapping[str, tuple[State, Record]]], None]) -> None:
        self.moves: dict[str, tuple[State, Record]] | None = None
        self._write = write

    def __enter__(self) -> None:
        self.moves = {}

    def __exit__(self, *exc_info: object) -> None:
        moved, self.moves = self.moves, None
        if moved:
            self._write(moved)


def snapshot(shard: Shard | None, record: Record) -> Record:
    """``record`` with its live progress if ``shard`` holds it; an ended one (no shard) as it is."""
    return record if shard is None else shard.snapshot(record)


class Shards(Mapping[str, Shard]):
    """The shards by source name, made on first use; and where chain downloads are.

    Args:
        registry: the loaded sources.
        make: builds the shard of a source (with its worker), under this
            map's lock, once per source.

    A read-only mapping of the shards made so far (any thread, no lock).
    """

    def __init__(self, registry: SourceRegistry, make: Callable[[Source, Home], Shard]) -> None:
        self.registry = registry
        self._make = make
        self._by_name: dict[str, Shard] = {}
        self._meta = threading.Lock()
        self.home: Home = {}

    def __getitem__(self, name: str) -> Shard:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def of(self, name: str) -> Shard:
        """The shard of the source ``name`` names (an alias too), made on first use.

        Raises UnknownSourceError for a name no loaded source has.
        """
        shard = self._by_name.get(name)
        if shard is None:
            with self._meta:
                source = self.registry.resolve(name)  # an alias (from an old journal) finds its source
                shard = self._by_name.get(source.name)
                if shard is None:
                    shard = self._make(source, self.home)
                    self._by_name[source.name] = shard
        return shard

    def find(self, download_id: str, source_hint: str | None = None) -> Shard:
        """The shard that holds ``download_id`` unfinished; UnknownDownloadError if none does."""
        home = self.home.get(download_id)
        if home is not None:
            return home
        if source_hint is not None:
            shard = self._by_name.get(self.registry.resolve(source_hint).name)
            if shard is not None and download_id in shard.downloads:
                return shard
        for shard in list(self._by_name.values()):
            if download_id in shard.downloads:
                return shard
        raise UnknownDownloadError(download_id)

    def raise_unless_moved(self, download_id: str, shard: Shard) -> None:
        """Raise UnknownDownloadError unless a chain move took ``download_id`` off ``shard``.

        A move writes the new shard into ``home`` before it takes the record
        off the old one, so after a miss ``home`` already names where it went.
        """
        if self.home.get(download_id, shard) is shard:
            raise UnknownDownloadError(download_id)

    def running_snapshots(self) -> list[Record]:
        """Snapshots of the running records, for the store's progress writes (any thread)."""
        found: list[Record] = []
        for shard in list(self._by_name.values()):
            for download_id in list(shard.running):
                record = shard.record(download_id)
                if record is not None:
                    found.append(shard.snapshot(record))
        return found
