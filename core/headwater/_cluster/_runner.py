"""A cluster's worker: runs the downloads the scheduler sends it, one per Dramatiq worker thread.

:meth:`ClusterWorker.run` is the body of the actor. For one
:class:`~headwater._cluster._message.Assignment` (a download holding a slot
of its source) it:

1. checks the slot's lease is still held (else the message is stale:
   redelivered after its worker died, and it does nothing; a check that
   raises does nothing either: the scheduler sends again a message whose
   download it finds unstarted after a lease time);
2. marks the record RUNNING with one conditional write from the state and
   attempts the scheduler wrote, which returns the record
   (:meth:`~headwater._cluster._pgstore.PostgresStore.start_if`: its read
   and write in one round trip); refused (cancelled meanwhile, its attempt
   moved on, or another worker took it), it gives the slot back unused;
3. builds the same ``ctx`` a local engine gives plugins and runs the attempt
   with the code the local engine runs it with
   (:func:`~headwater._attempt.run_attempt`), while the process's
   :class:`~headwater._cluster._keeper.LeaseKeeper` renews the lease and
   its :class:`~headwater._cluster._cancels.CancelWatch` listens for a
   cancel; a lost lease or a cancel sets ``ctx.cancelled``;
4. releases the slot, as soon as the outcome is known, and announces it
   in the same step (:meth:`~headwater._cluster._limits.RedisLimits.release`): the scheduler
   starts the slot's next download at once;
5. ends the record with one conditional write (COMPLETED, FAILED, QUEUED
   again for a retry, a Retry-After pause, an interrupt or a lost lease, or
   on the next source of its chain), which a cancel or a later attempt
   makes refuse; a file landed by an attempt whose end was refused is
   deleted, as a local engine deletes one landed after a cancel. The ends
   are written by a thread per source (:class:`_EndWriter`), those waiting
   at once in one statement, so that the Dramatiq thread, with
   ``wait=False``, takes its next message as soon as the slot is given back.

Nothing it raises reaches Dramatiq, so every message is acknowledged when
its download's attempt has ended (with ``wait=False``, before its end is
written: a process that dies meanwhile leaves the record RUNNING without a
slot, which the scheduler's sweep queues again, as for a worker killed
mid-download).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import attrs
import redis

from headwater._attempt import (
    Attempt,
    completion,
    deadline,
    described_changes,
    failing,
    moved_down,
    run_attempt,
    try_again,
    with_progress,
)
from headwater._chains import Taker, find_taker, translate
from headwater._clock import SystemClock
from headwater._cluster._cancels import CancelWatch
from headwater._cluster._gate import SourceGate
from headwater._cluster._keeper import LeaseKeeper
from headwater._cluster._limits import RedisLimits, ended_channel
from headwater._cluster._message import Assignment
from headwater._cluster._pgstore import PostgresStore, Start
from headwater._context import DownloadContext
from headwater._errors import HeadwaterError, RetryAfter, StoreError
from headwater._files import discard_landed
from headwater._policy import RatePolicy
from headwater._records import Job, Record, State, Tried
from headwater._redact import protect, register
from headwater._sources import Source, SourceRegistry
from headwater._store import Swap
from headwater._watchdog import Watchdog

log = logging.getLogger("headwater.cluster")


@attrs.define(eq=False)
class _Ending:
    """An attempt's end to write: ``new`` over ``running``, conditionally; then ``done`` is set."""

    assignment: Assignment
    running: Record
    new: Record
    landed: tuple[Path, str | os.PathLike[str]] | None  # (folder, file) landed: deleted if refused
    written: Record | None = None  # ``new``, once written
    done: threading.Event = attrs.field(factory=threading.Event)


class _EndWriter:
    """Writes the ends of a worker's attempts: a thread per source, all the ends waiting at once together.

    Each end is written inside its source's
    :meth:`~headwater._cluster._gate.SourceGate.writing` (a freeze of one
    source holds back its ends only); the attempt's
    :meth:`~headwater._cluster._gate.SourceGate.ending` mark is lifted once
    its end is written or refused. Thread-safe.
    """

    def __init__(self, store: PostgresStore, gate: SourceGate) -> None:
        self._store = store
        self._gate = gate
        self._changed = threading.Condition()
        self._waiting: dict[str, list[_Ending]] = {}  # source -> ends to write
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    def put(self, ending: _Ending) -> None:
        """Write ``ending`` soon (at once, in the caller's thread, once closed)."""
        source = ending.running.source
        with self._changed:
            if not self._closed:
                self._waiting.setdefault(source, []).append(ending)
                if source not in self._threads:
                    thread = threading.Thread(
                        target=self._run, args=(source,), name="headwater-end-writer", daemon=True
                    )
                    self._threads[source] = thread
                    thread.start()
                self._changed.notify_all()
                return
        self._write(source, [ending])

    def close(self, timeout: float) -> None:
        """Write the ends waiting, then end the threads (waiting up to ``timeout`` seconds for each)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def _run(self, source: str) -> None:
        while True:
            with self._changed:
                while not self._waiting.get(source) and not self._closed:
                    self._changed.wait()
                taken = self._waiting.pop(source, [])
                if not taken:
                    return
            ids: set[str] = set()
            now: list[_Ending] = []
            later: list[_Ending] = []
            for ending in taken:  # a record once per statement (two ends of one download: one waits)
                (later if ending.running.id in ids else now).append(ending)
                ids.add(ending.running.id)
            self._write(source, now)
            if later:
                with self._changed:
                    self._waiting.setdefault(source, [])[:0] = later

    def _write(self, source: str, endings: Sequence[_Ending]) -> None:
        """Write ``endings`` (of ``source``, distinct records) in one statement; finish each."""
        try:
            with self._gate.writing(source):
                applied = self._store.commit_if([Swap.over(e.running, e.new) for e in endings])
        except Exception as exc:  # StoreError, or a record that cannot be stored: none is written
            for e in endings:
                state = e.new.state.value
                log.error("%s; the end of download %s (%s) is not written", exc, e.running.id, state)
            applied = [False] * len(endings)
            refused = False
        else:
            refused = True
        for ending, ok in zip(endings, applied, strict=True):
            try:
                self._finish(ending, ok, refused)
            except Exception:  # the last resort: the others are finished all the same
                log.exception("finishing the end of download %s failed", ending.running.id)
            finally:
                self._gate.ended(ending.assignment.holder)
                ending.done.set()

    @staticmethod
    def _finish(ending: _Ending, written: bool, refused: bool) -> None:
        a, new = ending.assignment, ending.new
        if written:
            ending.written = new
            if new.state is State.FAILED:
                log.info("download %s of %r failed: %s", a.download_id, ending.running.target, new.error)
            return
        if refused:
            log.info("download %s: the end of attempt %d was refused", a.download_id, a.attempt)
        if ending.landed is not None:
            discard_landed(*ending.landed, (a.download_id, a.attempt))  # not ours: cancelled, or taken over


@attrs.define
class _Running:
    """A download this worker runs: its record as last written, its context, its slot."""

    record: Record
    ctx: DownloadContext
    assignment: Assignment
    lost: threading.Event = attrs.field(factory=threading.Event)  # its lease was lost
    policy: RatePolicy = attrs.field(factory=RatePolicy)  # its source's, for its timeouts


class ClusterWorker:
    """Runs assignments of a cluster in this process (see the module's steps).

    Args:
        dest_dir: where downloads land whose record names no ``dest_dir``.
            Records name theirs (chosen at submit): the folder must be the
            same, shared, on every worker host.
        store: the cluster's records; the worker owns it (closes it).
        client: a redis-py client of the Redis holding the limits (with a
            ``socket_timeout``).
        registry: the loaded sources (:func:`~headwater._sources.load_sources`);
            every worker host has the same installed.
        prefix: the limits' key prefix (as the scheduler's: ``ClusterConfig.limits_prefix``).
        channel: the cancel channel (as the cancellers': ``ClusterConfig.cancel_channel``).
        poll: seconds between checks of the running downloads' records
            (the cancel's fallback; also how soon a lost cancel is seen).
        gate: every change of a download's state is written inside its
            source's :meth:`~headwater._cluster._gate.SourceGate.writing`
            (a freeze holds them back); default: a gate of its own.

    Thread-safe: :meth:`run` is called from any number of threads at once.
    """

    def __init__(
        self,
        dest_dir: str | os.PathLike[str],
        *,
        store: PostgresStore,
        client: redis.Redis,
        registry: SourceRegistry,
        prefix: str,
        channel: str,
        poll: float = 1.0,
        gate: SourceGate | None = None,
    ) -> None:
        self.dest_dir = Path(dest_dir).expanduser().resolve()
        self._gate = SourceGate() if gate is None else gate
        self._store = store
        self._client = client
        self._prefix = prefix
        self._ended = ended_channel(prefix)
        self._registry = registry
        self._secrets = register(self._registry.secret_values())
        self._limits: dict[str, RedisLimits] = {}
        self._loggers: dict[str, logging.Logger] = {}
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._keeper: LeaseKeeper | None = None
        self._watchdog = Watchdog(SystemClock(), self._expire, "headwater-cluster-watchdog")
        self._watch = CancelWatch(client, self._gone, poll=poll, channel=channel)
        self._ends = _EndWriter(store, self._gate)
        store.attach(self._snapshots)

    # -- the actor's body ----------------------------------------------------------

    def run(self, assignment: Assignment, *, wait: bool = True) -> Record | None:
        """Run the download ``assignment`` names, if it is still its to run; the record as it ended.

        Returns None when it did not run (a stale message, a cancel before
        it began, the records unreachable), or its end was refused. With
        ``wait=False`` it returns None once the attempt has ended and its
        slot is given back, and its end is written meanwhile by the worker's
        writer (see the module). Never raises.
        """
        try:
            return self._run(assignment, wait)
        except Exception:  # the last resort: the message is acknowledged, the scheduler sees the record
            log.exception("running download %s failed", assignment.download_id)
            return None

    def _run(self, a: Assignment, wait: bool) -> Record | None:
        source = self._source(a.source)
        limits = self._limits_of(a.source, a.lease)
        if not limits.renew(a.holder, time.monotonic()):
            log.info("download %s: the slot of attempt %d is no longer held", a.download_id, a.attempt)
            return None
        running: Record | None = None
        with self._gate.writing(a.source):
            if not self._closing:
                start = Start(a.download_id, a.attempts, str(self.dest_dir), time.time())
                running = self._store.start_if([start])[0]
        if running is None:  # a stale message (its attempt moved on, or runs elsewhere), or a cancel
            log.info("download %s: the message of attempt %d is stale", a.download_id, a.attempt)
            self._give_back(a, limits, self._store.fetch([a.download_id]).get(a.download_id))
            return None
        if source is None:
            error = f"source {a.source!r} is not loaded on worker {socket.gethostname()}/{os.getpid()}"
            return self._end(a, limits, running, None, Attempt(None, None, 0, error, None, False), wait)
        folder = Path(running.dest_dir or self.dest_dir)
        ctx = DownloadContext(
            folder,
            self._logger(source.name),
            time.monotonic,
            None,
            running.existing or source.policy.existing,
            source.settings.values,
            functools.partial(self._describe, a.download_id),
        )
        mine = _Running(running, ctx, a, policy=source.policy)
        with self._lock:
            self._running[a.download_id] = mine
        self._keep(mine, limits)
        self._watch.watch(a.download_id, ctx.cancelled.set)
        if source.policy.watched:
            self._watchdog.poke()
        mapped, why = translate(source, running.target)
        if mapped is None:
            tried = Attempt(None, None, 0, f"declined: {why}", None, False)
        else:
            job = Job(a.download_id, source.name, mapped, running.display_name, a.attempt)
            tried = run_attempt(source, job, ctx)
        return self._end(a, limits, mine.record, mine, tried, wait)

    def _give_back(self, a: Assignment, limits: RedisLimits, now: Record | None) -> None:
        """Release the unused slot of an assignment that will not run, unless its attempt runs elsewhere.

        A message can come twice for one attempt (sent again by a scheduler
        that found it unstarted, or after a change of scheduler): the slot's
        holder is then the same, and the worker running it keeps it.
        """
        if now is None or now.state is not State.RUNNING or now.attempts != a.attempt:
            limits.release(a.holder, time.monotonic(), started=False)

    def _end(
        self,
        a: Assignment,
        limits: RedisLimits,
        running: Record,
        mine: _Running | None,
        tried: Attempt,
        wait: bool,
    ) -> Record | None:
        """Give the slot back, then have the end written over ``running``; with ``wait``, the record written.

        The slot is released as soon as the outcome is known (a Retry-After's
        pause set first), before the end is written: the scheduler finds the
        slot free, and meanwhile the attempt is marked ending in the gate, so
        that this process's scheduler does not take it for dead. A file the
        attempt landed whose end is refused is deleted. None if refused, or
        not waited for.
        """
        self._gate.ending(a.holder)
        try:
            new = self._outcome_kept(a, limits, running, mine, tried)
        except BaseException:
            self._gate.ended(a.holder)
            raise
        landed = None
        if tried.returned is not None and not tried.skipped and mine is not None:
            landed = (mine.ctx.dest_dir, tried.returned)
        ending = _Ending(a, running, new, landed)
        self._ends.put(ending)
        if not wait:
            return None
        ending.done.wait()
        return ending.written

    def _outcome_kept(
        self, a: Assignment, limits: RedisLimits, running: Record, mine: _Running | None, tried: Attempt
    ) -> Record:
        """The attempt's end to write; its Retry-After kept in Redis, the download let go, its slot freed."""
        try:
            new, pause, waited = self._outcome(a, limits, running, mine, tried)
            try:
                if pause is not None:
                    limits.pause_until(time.monotonic() + pause, time.monotonic())
                if waited is not None:
                    limits.wait_more(a.download_id, waited.retry_after_rounds, waited.retry_after_total)
            except redis.RedisError as exc:  # the end is written all the same
                log.warning(
                    "download %s: the Retry-After pause could not be kept in Redis: %s", a.download_id, exc
                )
        finally:
            if mine is not None:
                self._watch.unwatch(a.download_id)
                if self._keeper is not None:
                    self._keeper.drop(a.holder)
                with self._lock:
                    self._running.pop(a.download_id, None)
            try:
                limits.release(a.holder, time.monotonic(), announce=self._ended)
            except redis.RedisError as exc:  # its lease runs out by itself; the end is written all the same
                log.warning(
                    "download %s: its slot could not be given back (%s); its lease runs out",
                    a.download_id,
                    exc,
                )
        return new

    def _outcome(
        self, a: Assignment, limits: RedisLimits, running: Record, mine: _Running | None, tried: Attempt
    ) -> tuple[Record, float | None, Job | None]:
        """The attempt's end: the record to write, a Retry-After pause, and the job counting that pause.

        A Retry-After is judged with the pauses the download waited out on
        its source so far, which Redis keeps across attempts and workers.
        """
        latest = running if mine is None else with_progress(running, mine.ctx)
        pause: float | None = None
        waited: Job | None = None
        if tried.path is not None:
            changes = completion(tried)
            state = State.COMPLETED
        elif mine is not None and (mine.ctx.interrupted.is_set() or mine.lost.is_set()):
            changes, state = {"speed": 0.0, "time_remaining": None}, State.QUEUED  # to run again
        else:
            rounds, total = 0, 0.0
            if isinstance(tried.failure, RetryAfter):
                try:
                    rounds, total = limits.waited(a.download_id)
                except redis.RedisError as exc:  # counted from naught: the policy's bounds start over
                    log.warning("download %s: its Retry-After count is not readable: %s", a.download_id, exc)
            job = Job(a.download_id, a.source, running.target, None, a.attempt, rounds, total)
            policy = self._policy(a.source)
            again = try_again(policy, job, latest, tried.error, tried.failure)
            if isinstance(again, str):
                changes, state = self._next_source(latest, again)
            else:
                changes = {"error": tried.error, "retries": again.retries, "speed": 0.0}
                changes["time_remaining"] = None
                state, pause = State.QUEUED, again.pause
                waited = again.job if again.pause is not None else None
        new = attrs.evolve(latest, state=state, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        return new, pause, waited

    def _next_source(self, record: Record, error: str) -> tuple[dict[str, object], State]:
        """A failed download: QUEUED on the next source of its chain that takes it, else FAILED (``error``).

        Asks the fallbacks' ``translate_target`` in turn (here, on the
        worker), as a local engine does; a fallback not loaded here fails it.
        """
        taker: Taker | None = None
        declined: tuple[Tried, ...] = ()
        if record.fallbacks:
            try:
                taker, declined = find_taker(
                    (self._registry.resolve(n) for n in record.fallbacks), record.target
                )
            except HeadwaterError as exc:
                error = f"{error}; its fallback cannot be asked on this worker: {exc}"
        if taker is None:
            return failing(record, error, declined), State.FAILED
        log.info(
            "download %s failed on %s (%s); trying %s", record.id, record.source, error, taker.source.name
        )
        return moved_down(record, error, taker, declined), State.QUEUED

    # -- what runs beside the downloads ----------------------------------------------

    def _keep(self, mine: _Running, limits: RedisLimits) -> None:
        """Renew ``mine``'s lease while it runs; a lost lease stops it (``ctx.cancelled``)."""
        a = mine.assignment
        with self._lock:
            if self._keeper is None:
                self._keeper = LeaseKeeper(a.lease / 3)
            keeper = self._keeper

        def lost() -> None:
            mine.lost.set()
            mine.ctx.cancelled.set()

        keeper.keep(a.holder, lambda: limits.renew(a.holder, time.monotonic()), a.lease, lost)

    def _expire(self, now: float) -> float | None:
        """End every download past its source's timeout or stall timeout; the watchdog's check.

        As in one process: the download is FAILED (or moves down its chain)
        at once and its ``ctx.cancelled`` set; its attempt's own end is
        then refused (a file it lands is deleted), and it keeps its slot
        until ``download_impl`` returns. Returns the next deadline, or None.
        """
        with self._lock:
            watched = [m for m in self._running.values() if m.policy.watched and not m.ctx.cancelled.is_set()]
        next_due: float | None = None
        for mine in watched:
            due, why = deadline(mine.policy, mine.ctx)
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            mine.ctx.cancelled.set()
            with self._lock:
                record = mine.record
            latest = with_progress(record, mine.ctx)
            changes, state = self._next_source(latest, why)
            new = attrs.evolve(latest, state=state, updated_at=time.time(), **changes)  # type: ignore[arg-type]
            try:
                with self._gate.writing(record.source):
                    self._store.commit_if([Swap.over(record, new)])
            except StoreError as exc:
                log.error("%s; download %s %s, not written", exc, record.id, why)
            mine.ctx.logger.info("download %s %s", record.id, why)
        return next_due

    def _gone(self, ids: Collection[str]) -> list[str]:
        """Of ``ids`` (downloads this worker runs), those whose records say they are no longer its own."""
        found = self._store.fetch(ids)
        with self._lock:
            mine = {i: self._running[i].assignment.attempt for i in ids if i in self._running}
        return [
            i
            for i, attempt in mine.items()
            if (r := found.get(i)) is None or r.state is not State.RUNNING or r.attempts != attempt
        ]

    def _describe(
        self,
        download_id: str,
        ctx: DownloadContext,
        display_name: str | None,
        username: str | None,
        fields: Mapping[str, object],
    ) -> None:
        """``ctx.describe``'s effect: the RUNNING record gains the name and fields, conditionally written."""
        mine = self._running.get(download_id)
        if mine is None or mine.ctx is not ctx:
            return
        with self._gate.writing(mine.record.source), self._lock:  # the gate first: no freeze waits on _lock
            record = mine.record
            changes = described_changes(record, display_name, username, fields)
            new = attrs.evolve(record, updated_at=time.time(), **changes)  # type: ignore[arg-type]
            if self._store.commit_if([Swap.over(record, new)])[0]:
                mine.record = new

    def _snapshots(self) -> list[Record]:
        """The running records with their progress, for the store's progress writes."""
        with self._lock:
            running = list(self._running.values())
        return [with_progress(m.record, m.ctx) for m in running]

    # -- lookups -----------------------------------------------------------------------

    def _source(self, name: str) -> Source | None:
        try:
            return self._registry.resolve(name)
        except HeadwaterError:
            return None

    def _policy(self, name: str) -> RatePolicy:
        source = self._source(name)
        return RatePolicy() if source is None else source.policy

    def _limits_of(self, name: str, lease: float) -> RedisLimits:
        """The source's limits (for renewals and releases: the policy is the scheduler's to apply)."""
        with self._lock:
            found = self._limits.get(name)
            if found is None or found.lease != lease:
                found = RedisLimits(self._client, name, self._policy(name), lease=lease, prefix=self._prefix)
                self._limits[name] = found
            return found

    def _logger(self, name: str) -> logging.Logger:
        logger = logging.getLogger(f"headwater.source.{name}")
        protect(logger)  # settings: no secret value in what the source logs
        return logger

    # -- stopping ------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop every running download without cancelling it: each goes back to QUEUED, for the scheduler.

        Sets ``ctx.interrupted``, then ``ctx.cancelled``, as a local engine
        does on Ctrl-C; runs nothing new from now on. The running
        ``run`` calls end their attempts as their plugins return.
        """
        self._closing = True
        with self._lock:
            running = list(self._running.values())
        for mine in running:
            mine.ctx.interrupted.set()
            mine.ctx.cancelled.set()

    def running(self) -> int:
        """Downloads running in this worker now."""
        return len(self._running)

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """Per source: (threads, running, 0) in this worker now (a thread runs one download)."""
        counts: dict[str, int] = {}
        with self._lock:
            for mine in self._running.values():
                counts[mine.assignment.source] = counts.get(mine.assignment.source, 0) + 1
        return {name: (n, n, 0) for name, n in counts.items()}

    def close(self) -> None:
        """Interrupt what runs, stop the keeper and the watch, write the ends waiting, close the store."""
        self.interrupt()
        self._watch.close(5.0)
        watchdog = self._watchdog.close()
        if watchdog is not None:
            watchdog.join(5.0)
        if self._keeper is not None:
            self._keeper.close(5.0)
        self._ends.close(self._store.retry_for + 5.0)
        self._store.close()
        self._secrets.release()
