"""The run path of one engine: submit -> scheduler -> executor -> ``download_impl`` -> record.

A :class:`Dispatcher` builds each source's shard with its
:class:`~headwater._worker.SourceWorker` and hands that worker the steps
of a download's run, each a call down from the worker and none calling
back into it: :meth:`Dispatcher.begin` (the check-and-set on the download,
the RUNNING record), :func:`~headwater._attempt.run_attempt`
(``download_impl``), :meth:`Dispatcher.settle` (the end, through
:mod:`headwater._outcomes`), and after it, without locks, a move down a
fallback chain (:func:`headwater._fallback.fall_back`) and waking waiters.
The watchdog checks :meth:`Dispatcher.expire` (:mod:`headwater._expiry`);
the store's flusher reads :meth:`~headwater._shard.Shards.running_snapshots`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from headwater._attempt import Attempt, described_changes, run_attempt
from headwater._changes import ChangeFeed
from headwater._clock import Clock
from headwater._context import DownloadContext
from headwater._download import Download, Phase
from headwater._ended import Ended
from headwater._expiry import expire
from headwater._fallback import fall_back
from headwater._outcomes import Settled, settle
from headwater._records import State
from headwater._shard import Home, Shard, Shards
from headwater._sources import Source, SourceRegistry
from headwater._store import RecordStore
from headwater._watchdog import Watchdog
from headwater._worker import SourceWorker, Verdict

log = logging.getLogger("headwater")


@functools.lru_cache(maxsize=256)
def _folder(dest_dir: str) -> Path:
    """The :class:`Path` of a record's ``dest_dir``, built once for the many downloads that share it."""
    return Path(dest_dir)


class Dispatcher:
    """One engine's shards and the steps its workers run; see the module's docstring.

    Args:
        registry: the loaded sources.
        store, feed, ended: where the shards commit, publish and leave ended records.
        clock: the clock starts, timeouts and backoffs are measured on.
        idle_timeout: real seconds an idle worker thread waits before it ends.
        dest_dir: where a download whose record names no folder lands.

    Attributes:
        shards: the shards, made on first use.
        watches: the waits for downloads to end (see :meth:`notify_ended`).
        watchdog: the thread that checks :meth:`expire`.
    """

    def __init__(
        self,
        registry: SourceRegistry,
        store: RecordStore,
        feed: ChangeFeed,
        ended: Ended,
        clock: Clock,
        idle_timeout: float,
        dest_dir: Path,
    ) -> None:
        self._store = store
        self._feed = feed
        self._ended = ended
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._dest_dir = dest_dir
        self.watches = Watches()
        self.watchdog = Watchdog(clock, self.expire, "headwater-watchdog")
        self.shards = Shards(registry, self._make)

    def _make(self, source: Source, home: Home) -> Shard:
        shard = Shard(source, self._store, self._feed, self._ended, home)
        steps = ShardSteps(self, shard)
        shard.worker = SourceWorker(
            source.name, shard.lock, source.policy, steps, self._idle_timeout, self._clock
        )
        return shard

    def begin(self, shard: Shard, download: Download, now: float) -> DownloadContext | None:
        """Start ``download`` on ``shard`` (its lock held); None if a cancel came first.

        ``now`` is the clock time the worker decided to start at: the
        download's start for its timeout and its speed. Whether it starts
        is :meth:`Download.start`'s answer; the RUNNING record follows.
        """
        download_id = download.id
        record = shard.current(download_id)
        if record is None or download.phase is not Phase.QUEUED:
            return None
        folder = self._dest_dir if record.dest_dir is None else _folder(record.dest_dir)
        ctx = DownloadContext(
            folder,
            shard.logger,
            self._clock.now,
            now,
            record.existing or shard.source.policy.existing,
            shard.source.settings.values,  # settings: ctx.settings; describe: ctx.describe
            # By id, not the Download: Download -> ctx -> this partial -> Download would be a
            # cycle, left for the cyclic GC to free with ~20 objects of every download.
            functools.partial(self._describe, shard, download_id),
        )
        if not download.start(ctx):
            return None
        shard.move(record, State.RUNNING, attempts=record.attempts + 1, started_at=time.time())
        shard.running[download_id] = ctx
        if shard.source.policy.watched:
            self.watchdog.poke()
        return ctx

    def _describe(
        self,
        shard: Shard,
        download_id: str,
        ctx: DownloadContext,
        display_name: str | None,
        username: str | None,
        fields: Mapping[str, object],
    ) -> None:
        """``ctx.describe``'s effect: the RUNNING record gains the name and fields, journaled at once.

        Runs on the download's worker thread, takes the source's lock. Does
        nothing once ``ctx`` is no longer the download's running context (it
        ended, was cancelled or expired).
        """
        with shard.lock:
            record = shard.current(download_id)
            download = shard.downloads.get(download_id)
            ours = download is not None and download.ctx is ctx and download.phase is Phase.RUNNING
            if not ours or record is None or record.state is not State.RUNNING:
                return
            shard.amend(record, **described_changes(record, display_name, username, fields))

    def execute(self, shard: Shard, download: Download, ctx: DownloadContext) -> Attempt:
        """Run the attempt: the source's ``download_impl`` (no lock held); never raises."""
        return run_attempt(shard.source, download.job, ctx)

    def settle(self, shard: Shard, download: Download, ctx: DownloadContext, tried: Attempt) -> Verdict:
        """Write the attempt's end (the lock held; :func:`headwater._outcomes.settle`); never raises.

        The verdict's ``then`` moves a failed chain download down its chain,
        logs a failure, and wakes whoever waits for the download.
        """
        settled = settle(shard, download, ctx, tried, self._clock.now())
        return Verdict(
            settled.verdict.again_at,
            settled.verdict.front,
            settled.verdict.pause_until,
            functools.partial(self._after, shard, download, settled),
        )

    def _after(self, shard: Shard, download: Download, settled: Settled) -> None:
        if settled.fall_back is not None:
            fall_back(self.shards, shard, download.id, settled.fall_back)
        elif settled.failed is not None:
            job = download.job
            shard.logger.info("download %s of %r failed: %s", job.id, job.target, settled.failed)
        self.notify_ended(download.id)

    def expire(self, now: float) -> float | None:
        """End every watched download past its timeout or stall timeout; the watchdog's check.

        Runs on the watchdog thread (:func:`headwater._expiry.expire`); a
        download that expired moves down its chain if it has sources left.
        Returns the next deadline, or None.
        """
        next_due, ended = expire(list(self.shards.values()), now)
        for gone in ended:
            gone.shard.logger.info("download %s %s", gone.download_id, gone.why)
            if gone.fall_back:
                fall_back(self.shards, gone.shard, gone.download_id, gone.why)
            self.notify_ended(gone.download_id)
        return next_due

    def notify_ended(self, download_id: str) -> None:
        """Tell the waits for ``download_id`` that its record ended, went away or moved (any thread)."""
        self.watches.notify(download_id)


class Watches:
    """The waits of one engine, by the ids they wait for: ends, moves and removals tell them.

    No lock: each step on the table is one atomic operation of a dict or a
    list, and a wait that registers reads its records again afterwards
    (see :meth:`for_ids`).

    Attributes:
        table: download id -> the :class:`Waiter` objects registered for it.
    """

    def __init__(self) -> None:
        self.table: dict[str, list[Waiter]] = {}

    def notify(self, download_id: str) -> None:
        """``download_id``'s record ended, went away or moved: each wait for it hears of it.

        A :class:`Waiter` that has now heard of all its ids is woken; it
        reads its records again to see which did end.
        """
        waiters = self.table.pop(download_id, None)
        if waiters is not None:
            for waiter in waiters:
                waiter.heard(download_id)

    def for_ids(self, ids: Iterable[str]) -> Waiter:
        """A :class:`Waiter` for ``ids``, registered so that :meth:`notify` tells it of each.

        The caller reads each record again after this, and calls
        :meth:`Waiter.heard` for those that ended meanwhile: an end
        notified before the registration is not told again. An id whose
        list a notify took away between this registration's two steps is
        marked heard here (the notify may have missed it; the caller reads
        it again when woken).
        """
        ids = list(ids)
        waiter = Waiter(ids)
        table = self.table
        for download_id in ids:  # not the set: a worker may already discard from it
            waiters = table.setdefault(download_id, [])
            waiters.append(waiter)
            if table.get(download_id) is not waiters:  # popped between the two: told or not
                waiter.heard(download_id)
        return waiter

    def unwatch(self, waiter: Waiter) -> None:
        """Take ``waiter`` off the ids it has not heard of (a wait that gives up)."""
        table = self.table
        for download_id in list(waiter.pending):
            waiters = table.get(download_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):  # notified meanwhile
                    waiters.remove(waiter)

    def wake_all(self) -> None:
        """Wake every wait (the engine closes)."""
        for waiters in list(self.table.values()):
            for waiter in list(waiters):
                waiter.event.set()


class Waiter:
    """One wait for some downloads: woken once it has heard of every one (:meth:`Watches.for_ids`).

    One event per wait, not per download, so that a wait for many
    downloads wakes once, not at each end. Hearing of an id means its
    record ended, went away or moved (a retry, a move down a chain): the
    woken wait reads the records to tell, and waits again for those that
    have not ended.

    Attributes:
        pending: the ids not heard of yet.
        event: set once ``pending`` is empty (or the engine closes).
    """

    __slots__ = ("pending", "event")

    def __init__(self, ids: Iterable[str]) -> None:
        self.pending = set(ids)
        self.event = threading.Event()
        if not self.pending:
            self.event.set()

    def heard(self, download_id: str) -> None:
        """``download_id`` ended, went away or moved (any thread; no lock: each step is atomic)."""
        pending = self.pending
        pending.discard(download_id)
        if not pending:  # the last id: whichever thread discards it sees the set empty
            self.event.set()


class ShardSteps:
    """One shard's steps of the run path, as its worker runs them (:class:`~headwater._worker.Steps`).

    Each is the :class:`Dispatcher`'s step of the same name bound to this
    shard (a :func:`functools.partial`: no call layer of its own per download).
    """

    __slots__ = ("begin", "execute", "settle", "batch")

    def __init__(self, dispatcher: Dispatcher, shard: Shard) -> None:
        self.begin: Callable[[Download, float], DownloadContext | None] = functools.partial(
            dispatcher.begin, shard
        )
        self.execute: Callable[[Download, DownloadContext], Attempt] = functools.partial(
            dispatcher.execute, shard
        )
        self.settle: Callable[[Download, DownloadContext, Attempt], Verdict] = functools.partial(
            dispatcher.settle, shard
        )
        self.batch: Callable[[], AbstractContextManager[None]] = shard.batch
