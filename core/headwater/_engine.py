"""The engine: the one object a user holds, the front door of the run path.

``submit`` puts a QUEUED record on its source's shard and the download on
that source's worker; from there the path runs one way (see
:mod:`headwater._dispatch`): scheduler -> executor -> ``download_impl`` ->
record. The engine reads records (from the shards, then from
:class:`~headwater._ended.Ended`), cancels and removes, pauses, changes
policies, takes over what the journal holds unfinished, and closes.

Every change is committed to the engine's :class:`~headwater.RecordStore`
before anyone can see it (see :mod:`headwater._shard`).
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import attrs

from headwater._chains import Chain, translate
from headwater._changes import DEFAULT_MAXSIZE, ChangeFeed, ChangeKind, Subscription
from headwater._clock import Clock, SystemClock
from headwater._dispatch import Dispatcher
from headwater._download import Download
from headwater._ended import Ended
from headwater._errors import (
    EngineClosedError,
    HeadwaterError,
    StoreError,
    UnknownDownloadError,
)
from headwater._files import Existing
from headwater._policy import RatePolicy
from headwater._records import Job, Record, State
from headwater._redact import register
from headwater._settings import SettingsLayers
from headwater._shard import Shard, snapshot
from headwater._sources import PolicyOverride, SourceInfo, load_sources
from headwater._store import MemoryStore, RecordStore
from headwater._submission import submission

if TYPE_CHECKING:
    from headwater._config import ClusterConfig

log = logging.getLogger("headwater")


def _made(record: Record) -> tuple[float, str]:
    """A record's place in the order of making."""
    return record.created_at, record.id


class Engine:
    """Runs downloads from every loaded source on a shared worker.

    Args:
        dest_dir: the folder downloads land in; created if missing.
        plugins: a mapping of source name to plugin object. When given, only
            these are used and installed sources are not discovered.
        policies: source name or alias -> :class:`RatePolicy`, overriding the
            policy each plugin declares, or a :class:`PolicyOverride` changing
            some of its fields (``PolicyOverride({"delay": 5})``).
        idle_timeout: seconds a worker thread with nothing to do waits before
            it ends.
        clock: the clock delays, quotas, backoffs, pauses and timeouts are
            measured on (default: the real monotonic clock); tests pass a
            :class:`~headwater.ManualClock`.
        store: where records are journaled; None keeps them in memory only
            (:class:`~headwater.MemoryStore`). The ended records stay
            there (none is loaded; they are read on demand, and the engine
            keeps in memory only the latest few that end while it runs). Unless ``hold``, the
            downloads that engines no longer running left QUEUED or RUNNING
            there (of the loaded sources) are taken over and QUEUED again
            now (a RUNNING one's next attempt counts one more); those of
            running engines are left to them.
        hold: take nothing over until :meth:`start_held` (default: take over
            and start at once). An engine that is not going to run them
            (one that only reads, cancels or cleans) passes True, so that
            they stay free for one that will.
        load: discover only these installed sources (when the environment
            does not restrict loading itself); ignored with ``plugins``.
        block: never load these installed sources; ignored with ``plugins``.
        settings: source name or alias -> setting name -> value; the
            highest layer of each source's settings (see ``settings_schema``).
        settings_layers: the layers below ``settings``: the environment
            (read always; ``HEADWATER_<SOURCE>_<FIELD>``), and the secrets
            store and headwater.toml's tables, read only when given here.
        cluster: run the downloads on this cluster (a
            :class:`~headwater.ClusterConfig`, ``[cluster]`` of
            headwater.toml) instead of in this process: the engine made is
            then a cluster's (``headwater._cluster._engine.ClusterEngine``),
            with every method of this class, each acting on the cluster
            (docs/cluster.md says what differs). It takes no
            ``idle_timeout``, ``clock``, ``store`` or ``hold`` (ConfigError),
            and needs the ``cluster`` extra (ImportError without it).

    Raises :class:`~headwater.UnknownSourceError` for a policy or
    settings naming a source that does not exist, ConfigError for a secrets
    store that cannot be read, and StoreError (the store is closed again)
    when the store cannot be read. A source whose settings are missing or
    invalid is no error here: it needs configuration (see :meth:`submit`).
    The engine owns ``store`` and closes it in :meth:`close`. Use as a
    context manager, or call :meth:`close`.
    """

    def __new__(cls, *args: object, cluster: ClusterConfig | None = None, **kwargs: object) -> Engine:
        """An engine of ``cls``; with a ``cluster``, a cluster's (when ``cls`` is Engine itself).

        Raises ImportError, naming the package and the extra to install, when
        a cluster's engine is asked for without the ``cluster`` extra.
        """
        made: type[Engine] = cls
        if cluster is not None and cls is Engine:
            try:
                from headwater._cluster._engine import ClusterEngine  # the cluster's code, only when used
            except ImportError as exc:
                from headwater._config import needs_cluster_extra

                raise ImportError(needs_cluster_extra("an engine on a cluster", exc), name=exc.name) from exc
            made = ClusterEngine
        return super().__new__(made)

    def __init__(
        self,
        dest_dir: str | os.PathLike[str],
        plugins: Mapping[str, object] | None = None,
        policies: Mapping[str, RatePolicy | PolicyOverride] | None = None,
        *,
        idle_timeout: float = 2.0,
        clock: Clock | None = None,
        store: RecordStore | None = None,
        hold: bool = False,
        load: Collection[str] | None = None,
        block: Collection[str] = (),
        settings: Mapping[str, Mapping[str, object]] | None = None,
        settings_layers: SettingsLayers | None = None,
        cluster: ClusterConfig | None = None,
    ) -> None:
        if cluster is not None:  # only a subclass gets here with one: Engine(...) made a ClusterEngine
            raise TypeError(f"{type(self).__name__} runs in one process: it takes no cluster")
        self._store: RecordStore = MemoryStore() if store is None else store
        self._secrets = register(())
        self._feed = ChangeFeed()
        try:
            self.dest_dir = Path(dest_dir).expanduser()
            self.dest_dir.mkdir(parents=True, exist_ok=True)
            self.dest_dir = self.dest_dir.resolve()
            self._registry = load_sources(
                plugins=plugins,
                policies=policies,
                load=load,
                block=block,
                settings=settings,
                settings_layers=settings_layers,
            )
            self._secrets = register(self._registry.secret_values())  # settings: redacted until close
            clock = SystemClock() if clock is None else clock
            loaded = frozenset(n for info in self._registry.infos() for n in (info.name, *info.aliases))
            self._ended = Ended(self._store, loaded.__contains__)
            self._dispatch = Dispatcher(
                self._registry, self._store, self._feed, self._ended, clock, idle_timeout, self.dest_dir
            )
            self._shards = self._dispatch.shards
            self._closed = False
            self._restore_pauses()
            if not hold:
                self._requeue(self._store.take_over(self._registry.names()))
        except BaseException:
            self._store.close()
            self._secrets.release()
            raise
        self._store.attach(self._shards.running_snapshots)

    # -- sources ---------------------------------------------------------

    def sources(self, include_broken: bool = False) -> list[SourceInfo]:
        """The loaded sources by name, and with ``include_broken`` those left out.

        A loaded source that needs configuration is listed with its problems
        (``SourceInfo.status`` is ``"needs-configuration"``).
        """
        return self._registry.infos(include_broken)

    # -- the journal ---------------------------------------------------------

    def _restore_pauses(self) -> None:
        """Pause again the sources the store says were paused (before any job is queued)."""
        for name in self._store.paused():
            try:
                shard = self._shards.of(self._registry.resolve(name).name)
            except HeadwaterError:
                log.warning("source %r is paused in the journal but is not loaded", name)
                continue
            with shard.lock:
                shard.worker.pause()

    def _requeue(self, records: list[Record]) -> list[str]:
        """Queue again and start the unfinished ``records`` taken over from the store; return the ids started.

        Those of a source that needs configuration stay QUEUED, not started.

        One store commit for all of them, before any is visible or queued.
        A record of an older journal, which names no ``dest_dir``, lands in
        this engine's.
        """
        now = time.time()
        requeued: list[tuple[Shard, Record]] = []
        for record in records:
            shard = self._shards.of(self._registry.resolve(record.source).name)  # it may be an alias now
            record = attrs.evolve(
                record,
                state=State.QUEUED,
                updated_at=now,
                speed=0.0,
                time_remaining=None,
                dest_dir=record.dest_dir or str(self.dest_dir),
            )
            requeued.append((shard, record))
        if not requeued:
            return []
        self._store.commit([record for _, record in requeued])
        waiting: dict[str, int] = {}
        started: list[str] = []
        for shard, record in requeued:
            name = shard.source.name
            if shard.source.settings.needs_configuration:  # settings: kept QUEUED, not run
                waiting[name] = waiting.get(name, 0) + 1
                with shard.lock:
                    shard.downloads[record.id] = Download(record)
                continue
            mapped, _ = translate(shard.source, record.target)  # a chain source's own form of it
            job = Job(record.id, name, mapped or record.target, record.display_name, record.attempts + 1)
            with shard.lock:
                download = Download(record, job)
                shard.downloads[record.id] = download
                shard.worker.put(download)
            started.append(record.id)
        self._feed.publish(ChangeKind.RECORD, (record for _, record in requeued))
        for name, count in waiting.items():
            log.warning(
                "%d unfinished download(s) of source %r stay queued until it is configured "
                "(see `headwater sources`)",
                count,
                name,
            )
        log.info("%d unfinished download(s) from the journal queued again", len(started))
        return started

    def start_held(self) -> list[str]:
        """Take over and start the downloads that engines no longer running left unfinished in the store.

        For an engine made with ``hold=True`` (one made without took them
        over when it started; a later call takes what has been left since).
        Only the loaded sources' downloads are taken; those of running
        engines are left to them. Returns their ids, oldest first (empty
        when there are none). Raises EngineClosedError after :meth:`close`,
        StoreError when the store cannot be read.
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        return self._requeue(self._store.take_over(self._registry.names()))

    def flush(self) -> None:
        """Make every download submitted so far durable in the store (see :mod:`headwater._store`)."""
        self._store.flush()

    # -- submitting --------------------------------------------------------

    def submit(
        self,
        source: str | Sequence[str] | Chain,
        target: str,
        *,
        display_name: str | None = None,
        existing: Existing | None = None,
        dest_dir: str | os.PathLike[str] | None = None,
    ) -> str:
        """Queue a download of ``target``; return its id.

        ``source`` is a source name or alias, or a fallback chain: a list of
        names or a :class:`~headwater.Chain`, tried in order until one
        delivers (see ``docs/resilience.md``). Sources whose
        ``translate_target`` declines the target are skipped and listed in the
        record's ``tried``. ``existing`` is this download's choice when a
        file already has its final name (``"rename"``, ``"skip"``,
        ``"overwrite"``; see :func:`headwater.land`), kept in the record;
        None leaves it to the policy of the source that runs it.

        ``dest_dir`` is the folder this download lands in (default: the
        engine's ``dest_dir``); it is created if missing, resolved, and kept
        in the record, so that whoever resumes the download lands it there.

        Returns at once: no thread is started per job (a ``dest_dir`` costs
        one ``mkdir`` and one ``resolve``). Raises UnknownSourceError,
        NeedsConfigurationError when a source named needs configuration,
        ValueError for an empty target or an unknown ``existing``,
        TargetRejectedError when no source can take the target,
        InvalidTargetError when the first source's ``record_fields`` refuses
        it, FieldConflictError or PluginError when that hook misbehaves,
        OSError when ``dest_dir`` cannot be created, and EngineClosedError
        after :meth:`close`. Nothing is recorded when it raises.
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        made = submission(
            self._registry,
            source,
            target,
            self.dest_dir,
            display_name=display_name,
            existing=existing,
            dest_dir=dest_dir,
        )
        record, job = made.record, made.job
        shard = self._shards.of(record.source)
        if record.fallbacks or record.tried:
            self._shards.home[record.id] = shard
        with shard.lock:
            self._store.add(record)
            download = Download(record, job)
            shard.downloads[record.id] = download
            self._feed.publish(ChangeKind.RECORD, (record,))
            shard.worker.put(download)
        return record.id

    # -- controlling -------------------------------------------------------

    def cancel(self, download_id: str, source_hint: str | None = None) -> bool:
        """Cancel a download; True if this call cancelled it, False if it had already ended.

        A queued download never starts; a running one is CANCELLED at once and
        its ``ctx.cancelled`` is set. ``source_hint`` (a name or alias) says
        where to look first.

        An ended download gives False. An id this engine does not hold
        unfinished is looked up in the store: a download an engine no longer
        running left unfinished there is CANCELLED in the store directly,
        without taking over anything else, and one that has ended since
        gives False; either way its record is then read from the store.
        Raises UnknownDownloadError for an id neither knows,
        DownloadOwnedError for one a running engine elsewhere owns, and
        StoreError when the store cannot be used.
        """
        try:
            while True:
                shard = self._shards.find(download_id, source_hint)
                with shard.lock:
                    record = shard.record(download_id)
                    if record is not None:
                        cancelled = shard.cancel(record)
                        break
                self._shards.raise_unless_moved(download_id, shard)
        except UnknownDownloadError:
            if self._ended.get(download_id) is not None:
                return False
            return self._store.cancel_left(download_id)[1]
        if cancelled:
            self._dispatch.notify_ended(download_id)
        return cancelled

    def remove(self, download_id: str) -> Record:
        """Forget a download, cancelling it first if it has not ended; return its last record.

        Files of completed downloads stay where they are. Raises
        UnknownDownloadError for an id the engine does not know (an ended
        download is looked up in the store), StoreError when the store
        cannot be used.
        """
        try:
            while True:
                shard = self._shards.find(download_id)
                with shard.lock:
                    record = shard.record(download_id)
                    if record is not None:
                        shard.cancel(record)  # a record it ends leaves the shard
                        final = shard.record(download_id) or self._ended.get(download_id)
                        assert final is not None, "a record its cancel ended is in the shard or the ended"
                        self._forget_locked(shard, final)
                        break
                self._shards.raise_unless_moved(download_id, shard)
        except UnknownDownloadError:
            shard, final = self._ended_shard(download_id)
            with shard.lock:
                if self._ended.get(download_id) is None:
                    raise  # removed meanwhile
                self._forget_locked(shard, final)
        self._dispatch.notify_ended(download_id)
        return final

    def _forget_locked(self, shard: Shard, final: Record) -> None:
        """Delete ``final``'s download from the store and the engine, and say so; ``shard``'s lock held."""
        self._store.delete(final.id)
        shard.downloads.pop(final.id, None)
        self._ended.forget(final.id)
        self._shards.home.pop(final.id, None)
        self._feed.publish(ChangeKind.REMOVED, (final,))

    def _ended_shard(self, download_id: str) -> tuple[Shard, Record]:
        """The ended record ``download_id`` and its source's shard; UnknownDownloadError if none."""
        record = self._ended.get(download_id)
        if record is None:
            raise UnknownDownloadError(download_id)
        return self._shards.of(self._registry.resolve(record.source).name), record

    # -- reading -----------------------------------------------------------

    def subscribe(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new subscription to record changes: new records, state changes, removals.

        The changes come without polling, on a bounded queue the engine never
        waits on; progress is not among them (read it with :meth:`get`). See
        :class:`~headwater.Subscription` for the contract: which thread
        delivers, the order per download, and what an overflow past
        ``maxsize`` changes does. Subscribe before reading :meth:`records` to miss nothing.
        Closed by ``close()`` on it or by :meth:`close`; after :meth:`close`
        the subscription is closed from the start.
        """
        return self._feed.subscribe(maxsize)

    def get(self, download_id: str) -> Record:
        """A snapshot of one download's record; an ended one is read from the store.

        Raises UnknownDownloadError, StoreError when the store cannot be read.
        """
        return snapshot(*self._locate(download_id))

    def _locate(self, download_id: str, shard: Shard | None = None) -> tuple[Shard | None, Record]:
        """The shard a download is on (``shard`` if given and still right) and its record.

        The shard is None for an ended download, whose record is read from
        :class:`Ended`. Reads without a lock. Raises UnknownDownloadError.
        """
        if shard is not None:
            record = shard.record(download_id)
            if record is not None:
                return shard, record
        try:
            while True:
                shard = self._shards.find(download_id)
                record = shard.record(download_id)
                if record is not None:
                    return shard, record
                self._shards.raise_unless_moved(download_id, shard)
        except UnknownDownloadError:
            ended = self._ended.get(download_id)  # it left its shard after it was here
            if ended is None:
                raise
            return None, ended

    def match(self, key: str, limit: int = 2) -> list[Record]:
        """The downloads ``key`` names, as snapshots: the one whose id is ``key``, else up to ``limit``
        whose id starts or ends with it, latest first (how ``headwater status IDS`` reads a key).

        Looks at the unfinished downloads in memory and, through the store's
        :meth:`~headwater.RecordStore.matching`, at the ids of the ended
        ones; reads no other record. Raises StoreError when the store cannot
        be read.
        """
        try:
            return [self.get(key)]
        except UnknownDownloadError:
            pass
        held = {
            r.id: s.snapshot(r)
            for s in list(self._shards.values())
            for r in s.records()
            if r.id.startswith(key) or r.id.endswith(key)
        }
        # Read after the shards: a download that ended meanwhile is here.
        held.update((r.id, r) for r in self._ended.matching(key, limit))
        return heapq.nlargest(limit, held.values(), key=_made)

    def records(self, source: str | None = None) -> list[Record]:
        """Snapshots of all records (of one source, a name or alias), oldest first.

        Reads every ended record of the store, the whole history of a
        journal, and holds them all: to list some, read a :meth:`page` at a
        time. Raises StoreError when the store cannot be read.
        """
        names: set[str] | None = None
        if source is not None:
            found = self._registry.resolve(source)
            shards: Iterable[Shard] = [self._shards.of(found.name)]
            names = {found.name, *found.aliases}
        else:
            shards = list(self._shards.values())
        held = {r.id: s.snapshot(r) for s in shards for r in s.records()}
        held.update((r.id, r) for r in self._ended.scan(names))  # read after: a record ended since is here
        return sorted(held.values(), key=lambda r: r.created_at)

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        after: tuple[float, str] | None = None,
        oldest_first: bool = False,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` records, latest first (with ``oldest_first``, oldest first), as snapshots.

        Only those in one of ``states`` and whose ``source`` is one of
        ``sources`` (None: any). ``after`` is a place in the order of
        making, a record's (``created_at``, ``id``), which no record need
        still hold: the page holds the records past it (below it latest
        first, above it oldest first). Reads the unfinished records in
        memory and, from the store, only the ended records the page can
        hold, through its indexes. Raises StoreError when the store cannot
        be read.
        """

        def wanted(record: Record) -> bool:
            if (states is not None and record.state not in states) or (
                sources is not None and record.source not in sources
            ):
                return False
            place = (record.created_at, record.id)
            return after is None or (place > after if oldest_first else place < after)

        pick = heapq.nsmallest if oldest_first else heapq.nlargest
        held = {
            r.id: s.snapshot(r)
            for s in list(self._shards.values())
            for r in pick(limit, filter(wanted, s.records()), key=_made)
        }
        if states is None or any(state.terminal for state in states):  # read after: one ended since is here
            ended = self._ended.page(
                after, oldest_first=oldest_first, states=states, sources=sources, limit=limit
            )
            held.update((r.id, r) for r in ended)
        return pick(limit, held.values(), key=_made)

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> list[Record]:
        """Block until every download in ``ids`` has ended; return their records in order.

        Raises TimeoutError if ``timeout`` seconds pass first,
        UnknownDownloadError for an unknown id (or one removed meanwhile), and
        EngineClosedError if the engine closes with one of them still queued.
        """
        order = list(ids)
        self._ended.pin(order)  # what ends meanwhile stays at hand, however many
        try:
            return self._wait(order, timeout)
        finally:
            self._ended.unpin(order)

    def _wait(self, order: list[str], timeout: float | None) -> list[Record]:
        """:meth:`wait`'s loop: one :class:`~headwater._dispatch.Waiter` for the ids left, woken once."""
        shards = [self._locate(i)[0] for i in order]
        deadline = None if timeout is None else time.monotonic() + timeout
        places = dict(zip(order, shards, strict=True))
        left = [i for i, s in places.items() if not self._ended_or_raise(s, i)]
        while left:
            if not self._wait_for(left, places, deadline):
                done = sum(1 for s, i in zip(shards, order, strict=True) if self._ended_or_raise(s, i))
                raise TimeoutError(
                    f"{len(order) - done} of {len(order)} downloads had not ended after {timeout} s"
                )
            # Heard of all: some may only have moved (a retry, a chain) or the engine closed.
            left = [i for i in left if not self._ended_or_raise(places[i], i)]
        return [self._waited(s, i) for s, i in zip(shards, order, strict=True)]

    def _wait_for(self, ids: list[str], places: dict[str, Shard | None], deadline: float | None) -> bool:
        """Block until each of ``ids`` has been heard of (ended or moved); False past ``deadline``."""
        # Watch the ids, then read them again: one that ended in between was
        # notified before the registration, and is marked heard here.
        waiter = self._dispatch.watches.for_ids(ids)
        try:
            for download_id in ids:
                if self._ended_or_raise(places[download_id], download_id):
                    waiter.heard(download_id)
            if not waiter.pending:
                return True
            if self._closed:
                first = next(i for i in ids if i in waiter.pending)
                raise EngineClosedError(f"the engine closed before download {first} ended")
            seconds = None if deadline is None else deadline - time.monotonic()
            return (seconds is None or seconds > 0) and waiter.event.wait(seconds)
        finally:
            self._dispatch.watches.unwatch(waiter)  # of the ids not heard of: none once woken

    def _waited(self, shard: Shard | None, download_id: str) -> Record:
        """The record (a snapshot) of a download :meth:`wait` waits for, read where it most likely is.

        First ``shard``, then the ended records in memory, then wherever it went.
        """
        if shard is not None:
            record = shard.record(download_id)
            if record is not None:
                return shard.snapshot(record)
        held = self._ended.held(download_id)  # an ended record never changes: no snapshot to take
        if held is not None:
            return held
        return snapshot(*self._locate(download_id, shard))

    def _ended_or_raise(self, shard: Shard | None, download_id: str) -> bool:
        """Whether the download has ended; looked up again if a chain move took it off ``shard``."""
        if shard is not None:
            record = shard.record(download_id)
            if record is not None:
                return record.state.terminal
        if self._ended.held(download_id) is not None:
            return True
        return self._locate(download_id, shard)[1].state.terminal

    def set_policy(self, source: str, policy: RatePolicy) -> None:
        """Put ``policy`` in force for ``source`` (a name or alias) from its next start on.

        Queued downloads stay queued, none runs twice, and while the change
        settles the number running never exceeds the larger of the old and
        the new concurrency. Timeouts are checked against the new policy at
        once. Raises UnknownSourceError, and TypeError for a non-RatePolicy.
        """
        if not isinstance(policy, RatePolicy):
            raise TypeError(f"policy must be a RatePolicy, got {type(policy).__name__}")
        shard = self._shards.of(self._registry.resolve(source).name)
        with shard.lock:
            shard.source.policy = policy
            shard.worker.set_policy(policy)
        if policy.watched:
            self._dispatch.watchdog.poke()

    def pause(self, source: str | None = None) -> None:
        """Start no more downloads of ``source`` (a name or alias), or of every source if None.

        Queued downloads wait, running ones finish; submitting still works.
        With a journal (``store=``) the pause is recorded and survives a
        restart. Raises UnknownSourceError.
        """
        self._set_paused(source, True)

    def resume(self, source: str | None = None) -> None:
        """Undo :meth:`pause` for ``source`` (or every source): its queued downloads start again."""
        self._set_paused(source, False)

    def _set_paused(self, source: str | None, paused: bool) -> None:
        for shard in self._chosen(source):
            with shard.lock:
                try:
                    self._store.set_paused(shard.source.name, paused)
                except StoreError as exc:
                    log.error("%s; the pause of %r is kept in memory only", exc, shard.source.name)
                if paused:
                    shard.worker.pause()
                else:
                    shard.worker.resume()

    def paused(self) -> list[str]:
        """The names of the paused sources, sorted."""
        return sorted(n for n, s in list(self._shards.items()) if s.worker.paused)

    def _chosen(self, source: str | None) -> list[Shard]:
        if source is not None:
            return [self._shards.of(self._registry.resolve(source).name)]
        return [self._shards.of(info.name) for info in self._registry.infos()]

    # -- closing -----------------------------------------------------------

    def close(self, timeout: float = 5.0, *, interrupt: bool = False) -> list[Record]:
        """Stop: cancel running downloads, leave queued ones QUEUED, end the threads.

        With ``interrupt``, running downloads are stopped without being
        cancelled: their ``ctx.interrupted`` and then ``ctx.cancelled`` are
        set, and each whose ``download_impl`` then returns without a file
        goes back to QUEUED (one that lands its file is COMPLETED), so that a
        later engine on the store resumes it; one whose ``download_impl``
        has not returned stays RUNNING, which a later engine resumes too.

        Returns within about ``timeout`` seconds even if a plugin hangs, with
        the records of downloads whose ``download_impl`` had not returned by
        then (also logged), those the watchdog had already ended included
        (their records say how they ended). Closing twice is harmless.
        """
        self._closed = True
        deadline = time.monotonic() + timeout
        threads: list[threading.Thread] = []
        for shard in list(self._shards.values()):
            with shard.lock:
                shard.worker.close()
                for download_id, ctx in list(shard.running.items()):
                    record = shard.record(download_id)
                    if record is None:
                        continue
                    if not interrupt:
                        shard.cancel(record)
                    elif record.state is State.RUNNING:  # not one cancelled meanwhile
                        ctx.interrupted.set()
                        ctx.cancelled.set()
                threads += shard.worker.thread_objects()
        watchdog = self._dispatch.watchdog.close()
        if watchdog is not None:
            threads.append(watchdog)
        self._dispatch.watches.wake_all()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [
            found
            for shard in self._shards.values()
            for i in shard.running
            if (found := shard.record(i) or self._ended.get(i)) is not None
        ]
        for record in stuck:
            log.warning(
                "closed while download_impl of download %s (%s) of %r from %r had not returned",
                record.id,
                record.state.value,
                record.target,
                record.source,
            )
        self._store.close()
        self._secrets.release()
        self._feed.close()
        return stuck

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- introspection, for tests and benchmarks ------------------------------

    @contextmanager
    def freeze(self, source: str) -> Iterator[None]:
        """Hold ``source`` (a name or alias) still while the context is open: the seam for tests.

        Meanwhile no download of the source starts, ends, changes state or
        moves along its chain, unless the thread that froze it does it: that
        thread may still read, submit, cancel and remove (a cancel or remove
        inside a freeze is settled before any start or end the freeze holds
        back). Progress reports go on. Other sources are not held up, though
        the watchdog checks no timeout while a freeze lasts. Every read
        (:meth:`get`, :meth:`records`) inside it sees the source as one
        consistent state. Freezes of one source nest; never wait inside one
        for a download of that source to end (it cannot).

        :func:`headwater.testing.frozen` is the supported way to use it.
        Raises UnknownSourceError.
        """
        shard = self._shards.of(self._registry.resolve(source).name)
        with shard.lock:
            yield

    def worker_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per source name: (threads, running, queue entries) right now."""
        return {
            n: (s.worker.threads, s.worker.running, s.worker.queued) for n, s in list(self._shards.items())
        }
