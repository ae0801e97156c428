"""The engine: the one object a user holds.

Records are sharded by source: each source has one re-entrant lock that
guards its records and its worker's queue, so a source whose lock is held
never delays another. Every state change goes through :meth:`_Shard.move`,
which enforces :data:`headwater.TRANSITIONS`.

A download of a fallback chain moves from shard to shard: the move holds
both sources' locks (taken in name order) and updates ``Engine._home``, the
id -> shard map kept for chain downloads only, so a reader or a cancel that
finds the record gone from a shard looks again where it went.

Every change is committed to the engine's :class:`~headwater.RecordStore`
before anyone can see it. The shards hold the unfinished records only: a
record that ends leaves its shard once committed, for :class:`Ended`
(the store, and a window of the latest), where a reader that no longer
finds it in a shard looks next.
"""

from __future__ import annotations

import functools
import heapq
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import attrs

from headwater._attempt import (
    completion,
    deadline,
    described_changes,
    failing,
    moved_down,
    run_attempt,
    try_again,
    with_progress,
)
from headwater._chains import Chain, Taker, find_taker, translate
from headwater._changes import DEFAULT_MAXSIZE, ChangeFeed, ChangeKind, Subscription
from headwater._clock import Clock, SystemClock
from headwater._context import DownloadContext
from headwater._discovery import Candidate, discover, one_line
from headwater._download import Download, Phase
from headwater._ended import Ended
from headwater._errors import (
    EngineClosedError,
    HeadwaterError,
    StoreError,
    UnknownDownloadError,
)
from headwater._files import Existing, discard_landed
from headwater._policy import RatePolicy
from headwater._records import Job, Record, State, Tried, changed, may_transition
from headwater._redact import protect, register
from headwater._settings import SettingsInput, SettingsLayers
from headwater._sources import PolicyOverride, Source, SourceInfo, SourceRegistry
from headwater._store import MemoryStore, RecordStore
from headwater._submission import submission
from headwater._watchdog import Watchdog
from headwater._worker import SourceWorker

log = logging.getLogger("headwater")


class _Shard:
    """One source's lock, records, live downloads and worker."""

    def __init__(
        self,
        source: Source,
        store: RecordStore,
        feed: ChangeFeed,
        ended: Ended,
        home: dict[str, _Shard],
        begin: Callable[[Download, float], DownloadContext | None],
        run: Callable[[Download, DownloadContext], tuple[Download, DownloadContext] | None],
        idle_timeout: float,
        clock: Clock,
    ) -> None:
        self.source = source
        self.store = store
        self.feed = feed
        self.ended = ended
        self.home = home
        self.lock = threading.RLock()
        self.records: dict[str, Record] = {}  # unfinished, as committed: what readers see, without the lock
        self._unwritten: dict[str, tuple[State, Record]] | None = None  # the open batch's moves
        self.live: dict[str, Download] = {}  # downloads whose record is not terminal, by id
        self.running: dict[str, DownloadContext] = {}  # attempts whose download_impl has not returned
        self.logger = logging.getLogger(f"headwater.source.{source.name}")
        protect(self.logger)  # settings: no secret value in what the source logs
        self.worker: SourceWorker[Download, DownloadContext] = SourceWorker(
            source.name, self.lock, source.policy, begin, run, idle_timeout, clock
        )

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
        if new.state.terminal:
            self.live.pop(new.id, None)
        if self._unwritten is None:
            self._write({new.id: (record.state, new)})
        else:
            first = self._unwritten.get(new.id)
            self._unwritten[new.id] = (record.state if first is None else first[0], new)
        return new

    def current(self, download_id: str) -> Record | None:
        """The record as the locked step in progress left it (moves of an open batch included)."""
        if self._unwritten:
            moved = self._unwritten.get(download_id)
            if moved is not None:
                return moved[1]
        return self.records.get(download_id)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within it (lock held), moves are committed together at its end, then become visible.

        One store commit instead of one per move: the end of a download and
        the start of the next share a transaction.
        """
        self._unwritten = {}
        try:
            yield
        finally:
            moved, self._unwritten = self._unwritten, None
            if moved:
                self._write(moved)

    def _write(self, moves: Mapping[str, tuple[State, Record]]) -> None:
        """Commit the new records of ``moves`` (id -> (state before, new record)), then make them current.

        A terminal record committed leaves the shard for :attr:`ended` (one
        the store refused stays, as the only copy).
        """
        committed = True
        try:
            self.store.commit([new for _, new in moves.values()])
        except StoreError as exc:
            committed = False
            changes = ", ".join(f"{was.name} -> {new.state.name} of {new.id}" for was, new in moves.values())
            log.error("%s; %s kept in memory only", exc, changes)
        for _, new in moves.values():
            if committed and new.state.terminal:
                self.ended.keep(new)  # before it leaves: a reader missing it here finds it there
                self.records.pop(new.id, None)
                self.home.pop(new.id, None)
            else:
                self.records[new.id] = new
        self.feed.publish(ChangeKind.RECORD, (new for _, new in moves.values()))

    def snapshot(self, record: Record) -> Record:
        """``record`` with the live progress of its download, if it is running."""
        if record.state is not State.RUNNING:
            return record
        ctx = self.running.get(record.id)
        if ctx is None:
            return record
        return with_progress(record, ctx)


def _made(record: Record) -> tuple[float, str]:
    """A record's place in the order of making."""
    return record.created_at, record.id


def _snapshot(shard: _Shard | None, record: Record) -> Record:
    """``record`` with its live progress if ``shard`` holds it; an ended one (no shard) as it is."""
    return record if shard is None else shard.snapshot(record)


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

    Raises :class:`~headwater.UnknownSourceError` for a policy or
    settings naming a source that does not exist, ConfigError for a secrets
    store that cannot be read, and StoreError (the store is closed again)
    when the store cannot be read. A source whose settings are missing or
    invalid is no error here: it needs configuration (see :meth:`submit`).
    The engine owns ``store`` and closes it in :meth:`close`. Use as a
    context manager, or call :meth:`close`.
    """

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
    ) -> None:
        self._store: RecordStore = MemoryStore() if store is None else store
        self._secrets = register(())
        self._feed = ChangeFeed()
        try:
            self.dest_dir = Path(dest_dir).expanduser()
            self.dest_dir.mkdir(parents=True, exist_ok=True)
            self.dest_dir = self.dest_dir.resolve()
            if plugins is None:
                candidates = discover(only=load, block=block)
            else:
                candidates = [Candidate(n, p) for n, p in plugins.items()]
            inputs = SettingsInput.read(settings, settings_layers)
            self._registry = SourceRegistry(candidates, policies, inputs)
            self._secrets = register(self._registry.secret_values())  # settings: redacted until close
            self._idle_timeout = idle_timeout
            self._clock: Clock = SystemClock() if clock is None else clock
            self._watchdog = Watchdog(self._clock, self._expire, "headwater-watchdog")
            loaded = frozenset(n for info in self._registry.infos() for n in (info.name, *info.aliases))
            self._ended = Ended(self._store, loaded.__contains__)
            self._home: dict[str, _Shard] = {}  # chain download id -> the shard it is on now
            self._shards: dict[str, _Shard] = {}
            self._meta = threading.Lock()
            self._closed = False
            self._watch: dict[str, threading.Event] = {}  # download id -> set when it ends
            self._restore_pauses()
            if not hold:
                self._requeue(self._store.take_over(self._registry.names()))
        except BaseException:
            self._store.close()
            self._secrets.release()
            raise
        self._store.attach(self._running_snapshots)

    # -- sources ---------------------------------------------------------

    def sources(self, include_broken: bool = False) -> list[SourceInfo]:
        """The loaded sources by name, and with ``include_broken`` those left out.

        A loaded source that needs configuration is listed with its problems
        (``SourceInfo.status`` is ``"needs-configuration"``).
        """
        return self._registry.infos(include_broken)

    def _shard(self, name: str) -> _Shard:
        """The shard of the source ``name`` names, made on first use; one per source, aliases included.

        Raises UnknownSourceError for a name no loaded source has.
        """
        shard = self._shards.get(name)
        if shard is None:
            with self._meta:
                source = self._registry.resolve(name)  # an alias (from an old journal) finds its source
                shard = self._shards.get(source.name)
                if shard is None:
                    shard = _Shard(
                        source,
                        self._store,
                        self._feed,
                        self._ended,
                        self._home,
                        self._begin,
                        self._run,
                        self._idle_timeout,
                        self._clock,
                    )
                    self._shards[source.name] = shard
        return shard

    def _find(self, download_id: str, source_hint: str | None = None) -> _Shard:
        home = self._home.get(download_id)
        if home is not None:
            return home
        if source_hint is not None:
            shard = self._shards.get(self._registry.resolve(source_hint).name)
            if shard is not None and download_id in shard.records:
                return shard
        for shard in list(self._shards.values()):
            if download_id in shard.records:
                return shard
        raise UnknownDownloadError(download_id)

    # -- the journal ---------------------------------------------------------

    def _restore_pauses(self) -> None:
        """Pause again the sources the store says were paused (before any job is queued)."""
        for name in self._store.paused():
            try:
                shard = self._shard(self._registry.resolve(name).name)
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
        requeued: list[tuple[_Shard, Record]] = []
        for record in records:
            shard = self._shard(self._registry.resolve(record.source).name)  # it may be an alias now
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
                    shard.records[record.id] = record
                continue
            mapped, _ = translate(shard.source, record.target)  # a chain source's own form of it
            job = Job(record.id, name, mapped or record.target, record.display_name, record.attempts + 1)
            with shard.lock:
                shard.records[record.id] = record
                download = Download(job)
                shard.live[record.id] = download
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

    def _running_snapshots(self) -> list[Record]:
        """Snapshots of the running records, for the store's progress writes (any thread)."""
        found: list[Record] = []
        for shard in list(self._shards.values()):
            for download_id in list(shard.running):
                record = shard.records.get(download_id)
                if record is not None:
                    found.append(shard.snapshot(record))
        return found

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
        shard = self._shard(record.source)
        if record.fallbacks or record.tried:
            self._home[job.id] = shard
        with shard.lock:
            self._store.add(record)
            shard.records[job.id] = record
            self._feed.publish(ChangeKind.RECORD, (record,))
            download = Download(job)
            shard.live[job.id] = download
            shard.worker.put(download)
        return job.id

    # -- running (called by the worker) ----------------------------------------

    def _begin(self, download: Download, now: float) -> DownloadContext | None:
        """Start ``download`` (the source lock held); None if a cancel came first.

        ``now`` is the clock time the worker decided to start at: the
        download's start for its timeout and its speed. Whether it starts
        is :meth:`Download.start`'s answer; the RUNNING record follows.
        """
        job = download.job
        shard = self._shards[job.source]
        record = shard.current(job.id)
        if record is None or download.phase is not Phase.QUEUED:
            return None
        folder = Path(record.dest_dir) if record.dest_dir is not None else self.dest_dir
        existing = record.existing or shard.source.policy.existing
        ctx = DownloadContext(
            folder,
            shard.logger,
            self._clock.now,
            now,
            existing,
            shard.source.settings.values,  # settings: ctx.settings; describe: ctx.describe
            functools.partial(self._describe, shard, download),
        )
        if not download.start(ctx):
            return None
        shard.move(record, State.RUNNING, attempts=record.attempts + 1, started_at=time.time())
        shard.running[job.id] = ctx
        if shard.source.policy.watched:
            self._watchdog.poke()
        return ctx

    def _describe(
        self,
        shard: _Shard,
        download: Download,
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
            record = shard.current(download.id)
            ours = download.ctx is ctx and download.phase is Phase.RUNNING
            if not ours or record is None or record.state is not State.RUNNING:
                return
            shard.amend(record, **described_changes(record, display_name, username, fields))

    def _run(self, download: Download, ctx: DownloadContext) -> tuple[Download, DownloadContext] | None:
        """Call the source's ``download_impl`` and write the outcome, unless cancelled.

        An interrupted download (see :meth:`close`) that did not land its
        file goes back to QUEUED, whatever ``download_impl`` raised.

        In the same locked step, and the same store commit, it begins the
        source's next job if one may start right now, and returns it for the
        worker thread to run next (None if none was due). Never raises, and
        always calls the worker's ``finish``: nothing ``download_impl`` returns
        or raises stops the source's worker (a step that breaks on it FAILS the
        download instead; see :meth:`_end_broken_locked`).
        """
        job = download.job
        shard = self._shards[job.source]
        tried = run_attempt(shard.source, job, ctx)
        returned, path, skipped = tried.returned, tried.path, tried.skipped
        error, failure = tried.error, tried.failure
        fall_back = False
        wrote: Record | None = None
        with shard.lock, shard.batch():
            try:
                if shard.running.get(job.id) is ctx:
                    del shard.running[job.id]
                ours = download.end(ctx)  # not if cancelled, or the watchdog ended it
                record = shard.records.get(job.id)
                if ours and record is not None and record.state is State.RUNNING:
                    if path is not None:
                        wrote = shard.move(record, State.COMPLETED, **completion(tried))
                    elif ctx.interrupted.is_set():  # stopped, not ended: unfinished, for a later engine
                        stopped = with_progress(record, ctx)
                        wrote = shard.move(stopped, State.QUEUED, speed=0.0, time_remaining=None)
                    else:
                        latest = with_progress(record, ctx)
                        ended = self._try_again_locked(shard, download, latest, error, failure)
                        if ended is not None:
                            error, wrote, fall_back = ended, record, bool(record.fallbacks)
                            if not fall_back:
                                wrote = self._fail_locked(shard, latest, error, ())
                if wrote is None and returned is not None and not skipped:
                    # Cancelled or removed meanwhile: the file goes before the job counts as ended.
                    discard_landed(ctx.dest_dir, returned)
            except BaseException as exc:  # the last resort: whatever broke here, the job ends
                fall_back = False
                self._end_broken_locked(shard, job.id, exc)
            finally:
                shard.worker.finish()
                follow = shard.worker.next_due()
        if fall_back:
            self._fall_back(shard, job.id, error)
        elif wrote is not None and wrote.state is State.FAILED:
            shard.logger.info("download %s of %r failed: %s", job.id, job.target, error)
        self._notify_ended(job.id)
        return follow

    def _try_again_locked(
        self, shard: _Shard, download: Download, record: Record, error: str, failure: BaseException | None
    ) -> str | None:
        """Queue ``download`` again on its source if :func:`~headwater._attempt.try_again` allows; lock held.

        A Retry-After pauses the source's worker and puts the job back at the
        front; a retry waits the policy's backoff apart from the queue.
        Returns None when the job was queued again (the record is then
        QUEUED), else the error to end the attempt with.
        """
        policy = shard.source.policy
        again = try_again(policy, download.job, record, error, failure)
        if isinstance(again, str):
            return again
        now = self._clock.now()
        download.again(again.job)
        if again.pause is not None:
            shard.move(record, State.QUEUED, error=error, speed=0.0, time_remaining=None)
            shard.worker.pause_until(now + again.pause)
            shard.worker.put_front(download)
            shard.logger.info("source %s paused for %g s: %s", download.job.source, again.pause, error)
            return None
        retry = again.retries
        shard.move(record, State.QUEUED, error=error, retries=retry, speed=0.0, time_remaining=None)
        shard.worker.put_later(download, now + policy.retry_wait(retry, random.random()))
        return None

    def _fail_locked(self, shard: _Shard, record: Record, error: str, skipped: tuple[Tried, ...]) -> Record:
        """RUNNING -> FAILED with ``error``; ``tried`` gains ``skipped`` and this source. Lock held."""
        wrote = shard.move(record, State.FAILED, **failing(record, error, skipped))
        assert wrote is not None, "RUNNING -> FAILED is always legal"
        return wrote

    def _end_broken_locked(self, shard: _Shard, download_id: str, exc: BaseException) -> None:
        """End ``download_id`` on ``shard`` after the engine's own step ending it raised ``exc``; lock held.

        The last resort of the steps after ``download_impl``, which a plugin's
        odd return value or exception could break: logs the traceback, takes
        the attempt's context away and, if the record is still RUNNING on
        ``shard``, writes it FAILED with ``exc`` as its error, so the download
        ends and whoever waits for it can be woken.
        """
        shard.logger.error("ending download %s failed: %s", download_id, one_line(exc), exc_info=exc)
        shard.running.pop(download_id, None)
        record = shard.current(download_id)
        if record is not None and record.state is State.RUNNING:
            self._fail_locked(shard, record, f"could not end the download: {one_line(exc)}", ())

    def _fall_back(self, shard: _Shard, download_id: str, error: str) -> None:
        """Move a chain download that failed on ``shard`` with ``error`` to the next source that takes it.

        Called without locks by the thread that ended the attempt, while the
        record is still RUNNING on ``shard``. The fallbacks'
        ``translate_target`` hooks run without locks; the move itself is
        :meth:`_move_down`. Fails the download when no source is left, unless
        it was cancelled or removed meanwhile. Never raises: if a step fails
        (a fallback's ``translate_target`` raising what its boundary lets
        through, such as KeyboardInterrupt), the download FAILS instead.
        """
        try:
            record = shard.records.get(download_id)
            if record is None:
                return
            fallbacks = (self._registry.resolve(name) for name in record.fallbacks)
            taker, declined = find_taker(fallbacks, record.target)
            if taker is not None:
                self._move_down(shard, record, error, taker, declined)
                return
            with shard.lock:
                current = shard.records.get(download_id)
                if current is not None and current.state is State.RUNNING:
                    self._fail_locked(shard, current, error, declined)
                    shard.logger.info("download %s failed on every source of its chain", download_id)
        except BaseException as exc:  # the last resort: this runs on a worker or the watchdog thread
            with shard.lock:
                self._end_broken_locked(shard, download_id, exc)

    def _move_down(
        self, shard: _Shard, record: Record, error: str, taker: Taker, declined: tuple[Tried, ...]
    ) -> None:
        """Requeue ``record``'s download, which failed with ``error`` on ``shard``, on ``taker``'s source.

        ``record`` is as read without a lock while it was RUNNING on
        ``shard``; ``taker`` and ``declined`` are :func:`find_taker`'s answer
        for its ``fallbacks``. Its ``tried`` gains this source's failure and
        ``declined``. Call it with no lock held: it takes both sources' locks
        in name order, so a cancel either lands first (and nothing moves) or
        finds the record on its new source. The QUEUED record is committed
        through :meth:`_Shard.move`, entered in ``_home`` before it leaves
        ``shard`` (see :meth:`_raise_unless_moved`), then queued on the new
        source's worker.
        """
        download_id, name = record.id, taker.source.name  # the name now, should the chain say an alias
        dest = self._shard(name)
        first, second = sorted((shard, dest), key=lambda s: s.source.name)
        with first.lock, second.lock:
            current = shard.records.get(download_id)
            download = shard.live.get(download_id)
            if current is None or current.state is not State.RUNNING or download is None:
                return  # cancelled or removed meanwhile
            moved = shard.move(current, State.QUEUED, **moved_down(current, error, taker, declined))
            assert moved is not None, "RUNNING -> QUEUED is always legal"
            dest.records[download_id] = moved
            self._home[download_id] = dest
            del shard.records[download_id]
            del shard.live[download_id]
            dest.live[download_id] = download
            download.again(Job(download_id, name, taker.target, moved.display_name))
            dest.worker.put(download)
        shard.logger.info("download %s failed on %s (%s); trying %s", download_id, record.source, error, name)

    def _expire(self, now: float) -> float | None:
        """End every watched download past its timeout or stall timeout; the watchdog's check.

        Runs on the watchdog thread. An expired download gets ``ctx.cancelled``
        set and is FAILED (or moves on along its chain) at once; its thread is
        not waited for and keeps its place in the concurrency limit until
        ``download_impl`` returns. Returns the next deadline, or None.
        """
        next_due: float | None = None
        ended: list[tuple[_Shard, str, str, bool]] = []
        for shard in list(self._shards.values()):
            policy = shard.source.policy
            if not policy.watched or not shard.running:
                continue
            with shard.lock:
                for download_id, ctx in list(shard.running.items()):
                    download = shard.live.get(download_id)
                    if download is None or download.ctx is not ctx or download.phase is not Phase.RUNNING:
                        continue  # cancelled, or expired before: its download_impl has not returned
                    due, why = deadline(policy, ctx)
                    if due > now:
                        next_due = due if next_due is None else min(next_due, due)
                        continue
                    download.expire(ctx)
                    record = shard.records.get(download_id)
                    if record is None or record.state is not State.RUNNING:
                        continue
                    if not record.fallbacks:
                        self._fail_locked(shard, with_progress(record, ctx), why, ())
                    ended.append((shard, download_id, why, bool(record.fallbacks)))
        for shard, download_id, why, fall_back in ended:
            shard.logger.info("download %s %s", download_id, why)
            if fall_back:
                self._fall_back(shard, download_id, why)
            self._notify_ended(download_id)
        return next_due

    def _notify_ended(self, download_id: str) -> None:
        """Wake whoever waits for ``download_id`` (its record just ended or went away)."""
        ended = self._watch.pop(download_id, None)
        if ended is not None:
            ended.set()

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
                shard = self._find(download_id, source_hint)
                with shard.lock:
                    record = shard.records.get(download_id)
                    if record is not None:
                        cancelled = self._cancel_locked(shard, record)
                        break
                self._raise_unless_moved(download_id, shard)
        except UnknownDownloadError:
            if self._ended.get(download_id) is not None:
                return False
            return self._store.cancel_left(download_id)[1]
        if cancelled:
            self._notify_ended(download_id)
        return cancelled

    def _raise_unless_moved(self, download_id: str, shard: _Shard) -> None:
        """Raise UnknownDownloadError unless a chain move took ``download_id`` off ``shard``.

        A move writes the new shard into ``_home`` before it takes the record
        off the old one, so after a miss ``_home`` already names where it went.
        """
        if self._home.get(download_id, shard) is shard:
            raise UnknownDownloadError(download_id)

    def _cancel_locked(self, shard: _Shard, record: Record) -> bool:
        """Cancel ``record``'s download on ``shard`` (lock held); True if this call cancelled it.

        The download's own check-and-set (:meth:`Download.cancel`) settles a
        race with its start or end; the CANCELLED record follows.
        """
        download = shard.live.get(record.id)
        if download is not None:
            download.cancel()
        moved = shard.move(
            shard.snapshot(record), State.CANCELLED, finished_at=time.time(), speed=0.0, time_remaining=None
        )
        return moved is not None

    def remove(self, download_id: str) -> Record:
        """Forget a download, cancelling it first if it has not ended; return its last record.

        Files of completed downloads stay where they are. Raises
        UnknownDownloadError for an id the engine does not know (an ended
        download is looked up in the store), StoreError when the store
        cannot be used.
        """
        try:
            while True:
                shard = self._find(download_id)
                with shard.lock:
                    record = shard.records.get(download_id)
                    if record is not None:
                        self._cancel_locked(shard, record)  # a record it ends leaves the shard
                        final = shard.records.get(download_id) or self._ended.get(download_id)
                        assert final is not None, "a record its cancel ended is in the shard or the ended"
                        self._forget_locked(shard, final)
                        break
                self._raise_unless_moved(download_id, shard)
        except UnknownDownloadError:
            shard, final = self._ended_shard(download_id)
            with shard.lock:
                if self._ended.get(download_id) is None:
                    raise  # removed meanwhile
                self._forget_locked(shard, final)
        self._notify_ended(download_id)
        return final

    def _forget_locked(self, shard: _Shard, final: Record) -> None:
        """Delete ``final``'s download from the store and the engine, and say so; ``shard``'s lock held."""
        self._store.delete(final.id)
        shard.records.pop(final.id, None)
        self._ended.forget(final.id)
        self._home.pop(final.id, None)
        self._feed.publish(ChangeKind.REMOVED, (final,))

    def _ended_shard(self, download_id: str) -> tuple[_Shard, Record]:
        """The ended record ``download_id`` and its source's shard; UnknownDownloadError if none."""
        record = self._ended.get(download_id)
        if record is None:
            raise UnknownDownloadError(download_id)
        return self._shard(self._registry.resolve(record.source).name), record

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
        return _snapshot(*self._locate(download_id))

    def _locate(self, download_id: str, shard: _Shard | None = None) -> tuple[_Shard | None, Record]:
        """The shard a download is on (``shard`` if given and still right) and its record.

        The shard is None for an ended download, whose record is read from
        :class:`Ended`. Reads without a lock. Raises UnknownDownloadError.
        """
        if shard is not None:
            record = shard.records.get(download_id)
            if record is not None:
                return shard, record
        try:
            while True:
                shard = self._find(download_id)
                record = shard.records.get(download_id)
                if record is not None:
                    return shard, record
                self._raise_unless_moved(download_id, shard)
        except UnknownDownloadError:
            ended = self._ended.get(download_id)  # it left its shard after it was here
            if ended is None:
                raise
            return None, ended

    def records(self, source: str | None = None) -> list[Record]:
        """Snapshots of all records (of one source, a name or alias), oldest first.

        Reads every ended record of the store, the whole history of a
        journal, and holds them all: to list some, read a :meth:`page` at a
        time. Raises StoreError when the store cannot be read.
        """
        names: set[str] | None = None
        if source is not None:
            found = self._registry.resolve(source)
            shards: Iterable[_Shard] = [self._shard(found.name)]
            names = {found.name, *found.aliases}
        else:
            shards = list(self._shards.values())
        held = {r.id: s.snapshot(r) for s in shards for r in list(s.records.values())}
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
            for r in pick(limit, filter(wanted, list(s.records.values())), key=_made)
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
        """:meth:`wait`'s loop."""
        shards = [self._locate(i)[0] for i in order]
        deadline = None if timeout is None else time.monotonic() + timeout
        for shard, download_id in zip(shards, order, strict=True):
            while not self._ended_or_raise(shard, download_id):
                # Watch this one id: the terminal write sets the event. Check again
                # after registering, in case it ended in between.
                ended = self._watch.setdefault(download_id, threading.Event())
                if self._ended_or_raise(shard, download_id):
                    break
                if self._closed:
                    raise EngineClosedError(f"the engine closed before download {download_id} ended")
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not ended.wait(left):
                    done = sum(1 for s, i in zip(shards, order, strict=True) if self._ended_or_raise(s, i))
                    raise TimeoutError(
                        f"{len(order) - done} of {len(order)} downloads had not ended after {timeout} s"
                    )
        return [_snapshot(*self._locate(i, s)) for s, i in zip(shards, order, strict=True)]

    def _ended_or_raise(self, shard: _Shard | None, download_id: str) -> bool:
        """Whether the download has ended; looked up again if a chain move took it off ``shard``."""
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
        shard = self._shard(self._registry.resolve(source).name)
        with shard.lock:
            shard.source.policy = policy
            shard.worker.set_policy(policy)
        if policy.watched:
            self._watchdog.poke()

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

    def _chosen(self, source: str | None) -> list[_Shard]:
        if source is not None:
            return [self._shard(self._registry.resolve(source).name)]
        return [self._shard(info.name) for info in self._registry.infos()]

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
                    record = shard.records.get(download_id)
                    if record is None:
                        continue
                    if not interrupt:
                        self._cancel_locked(shard, record)
                    elif record.state is State.RUNNING:  # not one cancelled meanwhile
                        ctx.interrupted.set()
                        ctx.cancelled.set()
                threads += shard.worker.thread_objects()
        watchdog = self._watchdog.close()
        if watchdog is not None:
            threads.append(watchdog)
        for ended in list(self._watch.values()):
            ended.set()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [
            found
            for shard in self._shards.values()
            for i in shard.running
            if (found := shard.records.get(i) or self._ended.get(i)) is not None
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

    def __enter__(self) -> Engine:
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
        shard = self._shard(self._registry.resolve(source).name)
        with shard.lock:
            yield

    def worker_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per source name: (threads, running, queue entries) right now."""
        return {
            n: (s.worker.threads, s.worker.running, s.worker.queued) for n, s in list(self._shards.items())
        }
