"""The cluster's scheduler: one process, holding the leader lease, starts the downloads.

A :class:`Dispatcher` runs in every worker process (and wherever else it
is started); the one that holds the :class:`~headwater._cluster._leader.LeaderLease`
schedules, the others wait to take over within the lease time. The leader:

- when it begins to lead, starts following the records' change feed
  (LISTEN/NOTIFY, :class:`~headwater._cluster._pgfeed.RecordListener`) and
  reads every unfinished record once; a process that does not lead does
  not listen (each change would cost it a wake-up and a decode for
  nothing);
- keeps each source's QUEUED downloads in a :class:`~headwater._scheduler.Scheduler`,
  the rules a single-process engine starts by (first come first served, a
  retry after its backoff, a download given back at the front; the
  concurrency, the delay, the per-minute window, pauses), and for each
  download it decides to start asks Redis for a slot
  (:meth:`~headwater._cluster._limits.RedisLimits.acquire`, which holds
  the same limits for every process and across a change of leader);
  granted, it sends the message; refused, the download goes back to the
  front and the source waits for the time Redis named (for a full
  concurrency, or until one of its downloads ends);
- hears each slot a worker gives back as the worker releases it (the
  release publishes it; a :class:`~headwater._cluster._channel.ChannelListener` hears it),
  and counts that download's start ended at once, so the slot's next
  download starts without waiting for the end's commit and its NOTIFY;
  the change feed still brings the end, which moves the record;
- every third of the lease time, renews the slots of the downloads whose
  messages wait for a free worker thread, and asks Redis which of the
  RUNNING ones still hold their slots: one whose lease is gone (its worker
  died or was frozen) goes back to QUEUED, with one conditional write from
  the attempt it saw, so its next attempt starts (the dead worker's late
  write is then refused); a waiting one whose slot was lost is sent again,
  and so is one still unstarted a lease time after its message was sent
  (:meth:`Dispatcher._send_again_if_due`: a message can be lost while its
  slot stays held).

A message is sent only for a download holding a slot, so no worker waits on
a limit and a queued download costs no worker.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Sequence

import attrs
import redis

from headwater._changes import Change, ChangeKind
from headwater._cluster._channel import ChannelListener
from headwater._cluster._gate import SourceGate
from headwater._cluster._leader import LeaderLease
from headwater._cluster._limits import RedisLimits, Verdict, ended_channel
from headwater._cluster._message import Assignment, broker, send
from headwater._cluster._pgfeed import RecordListener
from headwater._cluster._pgstore import PostgresStore
from headwater._cluster._setup import redis_client
from headwater._config import ClusterConfig
from headwater._errors import HeadwaterError, StoreError
from headwater._policy import RatePolicy
from headwater._records import Record, State
from headwater._scheduler import Scheduler
from headwater._sources import SourceRegistry
from headwater._store import Swap

log = logging.getLogger("headwater.cluster")

#: Seconds the scheduler waits, having found a RUNNING download's lease gone, before it reads the
#: record again and takes the attempt for dead: an attempt gives its slot back just before it
#: writes its end.
RECHECK = 0.1


@attrs.define
class _Source:
    """One source as the leader schedules it: the same rules as one process, and its limits in Redis."""

    rules: Scheduler[str]  # download ids
    limits: RedisLimits
    full_until: float = 0.0  # Redis said every slot is held: ask again then, or at the next end


class Dispatcher:
    """The scheduler of a cluster while this process leads; see the module.

    Args:
        config: the cluster.
        registry: the loaded sources (their policies are the limits sent to Redis).
        holder: this process's name in the leader lease (default: host/pid/random).
        gate: the gate of this process's workers: a download of a frozen
            source, or one this process is ending, is not taken for dead,
            and a download is queued again through it (default: one of its own).

    :meth:`start` begins (a thread); :meth:`close` stops it and gives the
    lease up. Raises StoreError when the records cannot be opened.
    """

    def __init__(
        self,
        config: ClusterConfig,
        registry: SourceRegistry,
        *,
        holder: str | None = None,
        gate: SourceGate | None = None,
    ) -> None:
        self.config = config
        self._gate = SourceGate() if gate is None else gate
        self._registry = registry
        self._client = redis_client(config.broker, one_thread=True)  # the scheduler's thread's (and pub/sub)
        self._store = PostgresStore(config.postgres, schema=config.schema)
        self._broker = broker(config.broker, namespace=config.prefix, one_thread=True)
        name = holder or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._lease = LeaderLease(self._client, name, ttl=config.lease, prefix=config.leader_prefix)
        self._listener: RecordListener | None = None  # while leading
        self._ends: ChannelListener | None = None  # while leading
        self._wake = threading.Condition()
        self._heard_changes: list[Change] = []
        self._heard_ends: list[str] = []  # holders whose slots were given back
        self._stop = threading.Event()
        self._leading = False
        self._records: dict[str, Record] = {}  # the unfinished records, as last heard
        self._sent: dict[str, Assignment] = {}  # downloads holding a slot, by id
        self._sends: dict[str, tuple[float, float]] = {}  # ids of _sent: (sent at, wait before sending again)
        self._sources: dict[str, _Source] = {}
        self._started: set[str] = set()  # the ids of _sent this lead's rules count as running
        self._freed: set[str] = set()  # the ids of _sent whose workers gave their slots back
        self._paused: set[str] = set()  # the sources paused, as the records said at the last sweep
        self._jitter = random.Random()  # its own: a test's use of the global one stays its own
        self._thread = threading.Thread(target=self._run, name="headwater-dispatch", daemon=True)
        #: Terms this process led in, for tests and logs.
        self.terms: list[int] = []

    @property
    def leading(self) -> bool:
        """Whether this process schedules now."""
        return self._leading

    def start(self) -> None:
        """Begin contending for the lead (a thread)."""
        self._thread.start()

    def close(self) -> None:
        """Stop scheduling, give up the lease, close everything (downloads sent keep running)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(10)
        self._stop_listening()
        if self._leading:
            self._give_up_lease()
        self._store.close()
        self._broker.close()
        self._client.close()

    def _give_up_lease(self) -> None:
        """Release the lease, on a connection of its own if the thread still holds the scheduler's one.

        The thread may still be in a Redis call (each waits up to
        REDIS_TIMEOUT) after :meth:`close` stopped waiting for it; the
        scheduler's client keeps one connection, which two threads must
        not share.
        """
        lease, client = self._lease, None
        if self._thread.is_alive():
            client = redis_client(self.config.broker, one_thread=True)
            lease = LeaderLease(client, lease.holder, ttl=self.config.lease, prefix=self.config.leader_prefix)
        try:
            lease.release()
        except redis.RedisError as exc:
            log.warning("could not give up the scheduler's lease: %s", exc)
        finally:
            if client is not None:
                client.close()

    # -- the loop --------------------------------------------------------------------

    def _heard(self, changes: list[Change]) -> None:
        """The change feed's callback (its thread): hand the changes to the loop."""
        with self._wake:
            self._heard_changes.extend(changes)
            self._wake.notify_all()

    def _heard_end(self, holders: list[str]) -> None:
        """The end listener's callback (its thread): hand the slots given back to the loop."""
        with self._wake:
            self._heard_ends.extend(holders)
            self._wake.notify_all()

    def _run(self) -> None:
        renew_every = self.config.lease / 3
        next_renew = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            wake = now + renew_every
            try:
                if now >= next_renew:
                    self._keep_lead()
                    next_renew = now + renew_every
                    if self._leading:
                        self._sweep()
                changes, ends = self._take_changes()  # a process that does not lead has no use for them
                if self._leading:
                    self._apply(changes)
                    self._apply_ends(ends)
                    wake = min(wake, self._start_due(time.monotonic()), next_renew)
            except (redis.RedisError, StoreError) as exc:
                log.warning("the scheduler could not go on (%s); trying again", exc)
                wake = time.monotonic() + min(1.0, renew_every)
            except Exception:  # the last resort: the scheduler's thread must not die
                log.exception("the scheduler's round failed; trying again")
                wake = time.monotonic() + min(1.0, renew_every)
            with self._wake:
                if not (self._heard_changes or self._heard_ends or self._stop.is_set()):
                    self._wake.wait(max(0.0, wake - time.monotonic()))

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        ends, self._ends = self._ends, None
        if ends is not None:
            ends.close(10.0)

    def _take_changes(self) -> tuple[list[Change], list[str]]:
        """The changes and the slots given back heard since the last call."""
        with self._wake:
            taken, self._heard_changes = self._heard_changes, []
            ends, self._heard_ends = self._heard_ends, []
        return taken, ends

    def _keep_lead(self) -> None:
        """Renew the lease while leading; claim it when not; begin leading with the records' state."""
        if self._leading:
            if self._lease.renew():
                return
            log.warning("the scheduler's lease was lost; another process schedules now")
            self._leading = False
            self._stop_listening()
        term = self._lease.claim()
        if term is None:
            return
        self._stop_listening()
        listener = RecordListener(self.config.postgres, self._heard, schema=self.config.schema)
        listener.start()  # every change from now on is heard (StoreError: claimed again next round)
        self._listener = listener
        channel = ended_channel(self.config.limits_prefix)
        ends = ChannelListener(self._client, channel, self._heard_end, name="headwater-ends")
        ends.start(subscribe=True)  # RedisError: claimed again next round
        self._ends = ends
        self.terms.append(term)
        self._take_changes()  # the read below holds what they said
        self._records.clear()
        self._sent.clear()
        self._sends.clear()
        self._started.clear()
        self._freed.clear()
        self._sources.clear()
        self._leading = True
        self._follow_pauses()
        unfinished = list(self._store.records(states=(State.QUEUED, State.RUNNING)))
        log.info("scheduling (term %d): %d unfinished downloads", term, len(unfinished))
        for record in sorted(unfinished, key=lambda r: (r.created_at, r.id)):
            self._records[record.id] = record
            if record.state is State.RUNNING:
                # Its holder: this attempt. The sweep finds it gone if its worker died.
                lease = self.config.lease
                self._sent[record.id] = Assignment(record.id, record.source, record.attempts - 1, lease)
            else:
                self._queue(record, front=False)

    # -- what the records say ----------------------------------------------------------

    def _apply(self, changes: Iterable[Change]) -> None:
        """Bring the view up to the changes heard (oldest first)."""
        for change in changes:
            record = change.record
            before = self._records.get(record.id)
            if change.kind is ChangeKind.REMOVED or record.state.terminal:
                self._records.pop(record.id, None)
                self._ended(record.id)
                continue
            self._records[record.id] = record
            sent = self._sent.get(record.id)
            if record.state is State.RUNNING:
                if sent is None:  # started before this process led: watch its lease too
                    lease = self.config.lease
                    self._sent[record.id] = Assignment(record.id, record.source, record.attempts - 1, lease)
                continue
            if sent is not None and record.attempts == sent.attempts:
                continue  # sent, and its worker has not marked it RUNNING yet
            if sent is not None:  # the attempt sent ended without ending the download
                self._ended(record.id)
                retry = before is not None and record.retries > before.retries
                moved = before is not None and before.source != record.source  # down its chain: at the back
                self._queue(record, front=not (retry or moved), retry=retry)
            elif before is None:
                self._queue(record, front=False)
            elif before.state is State.RUNNING:  # its attempt ended after the sweep gave it up
                self._queue(record, front=True)

    def _apply_ends(self, holders: Iterable[str]) -> None:
        """The slots of ``holders`` were given back: their starts end now (their records move later).

        Only the attempt sent counts (a holder heard late, of an attempt
        that moved on, is ignored); the download stays sent until the change
        feed brings its end, which then ends nothing more.
        """
        now = time.monotonic()
        for holder in holders:
            download_id = holder.rpartition(":")[0]
            sent = self._sent.get(download_id)
            if sent is None or sent.holder != holder or download_id not in self._started:
                continue
            self._started.discard(download_id)
            self._freed.add(download_id)
            source = self._source(sent.source)
            source.rules.ended(now)
            source.full_until = 0.0

    def _ended(self, download_id: str) -> None:
        """The download's attempt holds no slot any more: its source may start another."""
        self._freed.discard(download_id)
        self._sends.pop(download_id, None)
        sent = self._sent.pop(download_id, None)
        if sent is not None:
            source = self._source(sent.source)
            if download_id in self._started:  # started by these rules (not found running at the lead)
                self._started.discard(download_id)
                source.rules.ended(time.monotonic())
            source.full_until = 0.0

    def _queue(self, record: Record, *, front: bool, retry: bool = False) -> None:
        """Put the QUEUED ``record`` in its source's order: at the back, the front, or after its backoff."""
        try:
            name = self._registry.resolve(record.source).name
        except HeadwaterError:
            log.error("download %s: the scheduler has no source %r", record.id, record.source)
            return
        rules = self._source(name).rules
        if retry:
            backoff = rules.policy.retry_wait(record.retries, self._jitter.random())
            rules.put_later(record.id, time.monotonic() + backoff)
        elif front:
            rules.put_front(record.id)
        else:
            rules.put(record.id)

    def _source(self, name: str) -> _Source:
        found = self._sources.get(name)
        if found is None:
            policy = self._policy(name)
            limits = RedisLimits(
                self._client, name, policy, lease=self.config.lease, prefix=self.config.limits_prefix
            )
            found = self._sources[name] = _Source(Scheduler(policy), limits)
            if name in self._paused:
                found.rules.pause()
        return found

    def _policy(self, name: str) -> RatePolicy:
        try:
            return self._registry.resolve(name).policy
        except HeadwaterError:
            return RatePolicy()

    # -- starting --------------------------------------------------------------------

    def _start_due(self, now: float) -> float:
        """Send every download its source's rules and Redis allow to start now; when to look again."""
        wake = now + self.config.lease
        for source in self._sources.values():
            if source.full_until > now:
                wake = min(wake, source.full_until)
                continue
            decision = source.rules.decide(now)
            verdict = self._send(source, decision.start, now)
            if verdict is not None:
                if verdict.reason == "concurrency":
                    source.full_until = verdict.at  # or the next end of one of its downloads
                else:  # a pause, the delay, the window, or a state Redis lost: a wait in time
                    source.rules.retry_after(verdict.at)
            at = source.full_until if source.full_until > now else decision.wake_at
            if at is not None:
                wake = min(wake, at)
        return wake

    def _send(self, source: _Source, ids: Sequence[str], now: float) -> Verdict | None:
        """Take slots for the downloads ``ids`` (one round trip) and send those granted; the refusal, if any.

        The refused download and those after it go back to the front, in
        order; one no longer to start (cancelled or removed meanwhile, or
        already sent) is dropped.
        """
        starting: list[Assignment] = []
        for download_id in ids:
            record = self._records.get(download_id)
            if record is None or record.state is not State.QUEUED or download_id in self._sent:
                source.rules.dropped(now)
            else:
                starting.append(Assignment(record.id, record.source, record.attempts, self.config.lease))
        try:
            verdicts = source.limits.acquire_each([a.holder for a in starting], now)
        except BaseException:
            self._put_back(source, starting, now)
            raise
        granted = starting[: sum(v.granted for v in verdicts)]
        for assignment in granted:  # each holds a slot now: the sweep keeps its lease until it is RUNNING
            self._sent[assignment.download_id] = assignment
            self._sends[assignment.download_id] = (now, self.config.lease)
            self._started.add(assignment.download_id)
        for count, assignment in enumerate(granted):
            try:
                send(self._broker, assignment)
            except BaseException:
                self._put_back(source, granted[count:], now, holding=True)
                raise
        self._put_back(source, starting[len(granted) :], now)  # the refused one and those not asked
        return verdicts[-1] if verdicts and not verdicts[-1].granted else None

    def _put_back(
        self, source: _Source, assignments: Sequence[Assignment], now: float, *, holding: bool = False
    ) -> None:
        """Queue ``assignments`` again at the front of their source, in order, their starts at ``now`` undone.

        ``holding``: they were granted slots but their messages were not sent
        (the broker failed): the slots are given back unused, or, if Redis
        cannot be told, left to expire within the lease (nothing renews them
        any more), and the downloads are sent again once the scheduler can.
        """
        for assignment in reversed(assignments):
            if holding:
                self._sent.pop(assignment.download_id, None)
                self._sends.pop(assignment.download_id, None)
                self._started.discard(assignment.download_id)
                try:
                    source.limits.release(assignment.holder, time.monotonic(), started=False)
                except redis.RedisError as exc:
                    log.warning(
                        "download %s: its unused slot is left to expire (%s)", assignment.download_id, exc
                    )
            source.rules.dropped(now)
            source.rules.put_front(assignment.download_id)

    # -- finding the dead ---------------------------------------------------------------

    def _sweep(self) -> None:
        """Keep the slots of messages waiting for a worker; find the downloads whose worker is gone.

        A download sent and not yet RUNNING holds its slot while its message
        waits for a free worker thread: the leader renews that lease (a
        renewal refused: the slot was lost, and the message is sent again),
        and sends the message again if it is still unstarted long after
        (:meth:`_send_again_if_due`).
        A RUNNING download's lease is its worker's to renew; one that is gone
        sends the download back to QUEUED.
        """
        self._follow_pauses()
        by_source: dict[str, list[Assignment]] = {}
        for assignment in list(self._sent.values()):
            record = self._records.get(assignment.download_id)
            if assignment.download_id in self._freed and record is not None and record.state is State.QUEUED:
                continue  # it ran and gave its slot back; its RUNNING is yet to be heard
            if record is not None and record.state is State.QUEUED and record.attempts == assignment.attempts:
                now = time.monotonic()
                if not self._source(assignment.source).limits.renew(assignment.holder, now):
                    self._recover(assignment)
                else:
                    self._send_again_if_due(assignment, now)
                continue
            by_source.setdefault(assignment.source, []).append(assignment)
        gone: list[Assignment] = []
        for name, sent in by_source.items():
            if self._gate.is_frozen(name):
                continue  # its ends are held back: judged at the next sweep
            held = self._source(name).limits.held([a.holder for a in sent])
            gone += [a for a, alive in zip(sent, held, strict=True) if not alive]
        if gone:
            self._stop.wait(RECHECK)  # an end written just after its slot was given back shows by then
            found = self._store.fetch([a.download_id for a in gone])
            for assignment in gone:
                record = found.get(assignment.download_id)
                if record is None or (record.state, record.attempts) != (State.RUNNING, assignment.attempt):
                    continue  # its end (or removal) was written: the change feed brings it
                if not self._gate.is_ending(assignment.holder):
                    self._recover(assignment, record)

    def _send_again_if_due(self, assignment: Assignment, now: float) -> None:
        """Send ``assignment``'s message again if its download, holding its slot, waited long unstarted.

        A message can be lost while its slot stays held (renewed here): a
        worker took it but could not check the slot (Redis failed the call,
        and the message was acknowledged), or died before starting it, or
        Redis lost it. It is sent again a lease time after it was sent, then
        after twice each wait before (a message merely waiting for a busy
        worker is copied a few times at most). Of two copies, the worker of
        the second finds the attempt started (``start_if`` refuses it, and
        the slot is left to the first) or its slot gone, and drops it. Not
        while its source is frozen in this process (its start may be held
        back at the gate).
        """
        sent_at, wait = self._sends.setdefault(assignment.download_id, (now, self.config.lease))
        if now - sent_at < wait or self._gate.is_frozen(assignment.source):
            return  # frozen: its start may be held back here; judged at the next sweep
        log.info(
            "download %s: unstarted %.1f s after its message was sent; sending it again",
            assignment.download_id,
            now - sent_at,
        )
        send(self._broker, assignment)
        self._sends[assignment.download_id] = (now, 2 * wait)

    def _follow_pauses(self) -> None:
        """Pause and resume the sources as the records say (``headwater pause``, ``Engine.pause``)."""
        paused = set(self._store.paused())
        for name, source in self._sources.items():
            if name in paused and not source.rules.paused:
                source.rules.pause()
            elif name not in paused and source.rules.paused:
                source.rules.resume()
        self._paused = paused

    def _recover(self, assignment: Assignment, record: Record | None = None) -> None:
        """Send again a download whose slot was lost: ``record`` as read now, else as last heard."""
        record = self._records.get(assignment.download_id) if record is None else record
        self._ended(assignment.download_id)
        if record is None:
            return
        if record.state is State.QUEUED and record.attempts == assignment.attempts:
            log.info("download %s: its message found no worker in time; sending it again", record.id)
            self._queue(record, front=True)
            return
        if record.state is State.RUNNING and record.attempts == assignment.attempt:
            now = time.time()
            again = attrs.evolve(record, state=State.QUEUED, updated_at=now, speed=0.0, time_remaining=None)
            with self._gate.writing(record.source):
                taken = self._store.commit_if([Swap.over(record, again)])[0]
            if taken:
                log.warning(
                    "download %s: attempt %d lost its slot (its worker died or froze); queued again",
                    record.id,
                    record.attempts,
                )
                self._records[record.id] = again
                self._queue(again, front=True)
