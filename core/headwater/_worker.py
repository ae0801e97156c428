"""The in-process executor: one source's threads, which run what its scheduler decides.

A :class:`SourceWorker` runs one source's jobs. It starts a thread only when
work arrives and no idle thread can take it, never more than the policy's
concurrency, and a thread ends after ``idle_timeout`` seconds with nothing
to do. Queued jobs cost a queue entry, not a thread.

A thread's round is one way down the pipeline: ask the source's
:class:`~headwater._scheduler.Scheduler` what may start (the one place the
policy's rules live), ``begin`` it (the check-and-set on the download, under
the source's lock), ``execute`` it (``download_impl``, no lock), ``settle``
the outcome (the record's end, under the lock), which answers with a
:class:`Verdict` the worker applies to its scheduler itself; the end and the
next start share that locked step (and one store commit, in ``batch``).
Nothing it calls calls back into it. When nothing may start yet, a thread
waits on the engine's :class:`~headwater.Clock` until the time the
scheduler names, or an event (an end, a put, a resume, a policy change).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, Protocol, TypeVar

import attrs

from headwater._clock import Clock
from headwater._policy import RatePolicy
from headwater._records import slot_init
from headwater._scheduler import Scheduler

Item = TypeVar("Item")
Item_contra = TypeVar("Item_contra", contravariant=True)
T = TypeVar("T")
O = TypeVar("O")  # noqa: E741

log = logging.getLogger("headwater")


@slot_init
@attrs.frozen
class Verdict:
    """What the end of an attempt asks of the worker.

    Attributes:
        again_at: queue the item again, at the front once the clock reaches
            this (a retry after its backoff), or None.
        front: queue the item again at the front now (a Retry-After).
        pause_until: start nothing of the source before this clock time (a
            Retry-After), or None.
        then: run once the lock is released (a move down a chain, waking
            waiters), or None; it should not raise (if it does, the error is
            logged and the thread goes on).
    """

    again_at: float | None = None
    front: bool = False
    pause_until: float | None = None
    then: Callable[[], None] | None = None


#: The verdict of an attempt that ends for good, with nothing to do after it.
_ENDED = Verdict()


class Steps(Protocol[Item_contra, T, O]):
    """The steps an executor runs each item through, one way down; the seam below :class:`SourceWorker`.

    A worker calls, for each item the scheduler gives out: :meth:`begin`,
    then :meth:`execute`, then :meth:`settle` inside :meth:`batch`; none of
    them calls back into the worker. :class:`headwater._dispatch.Dispatcher`
    gives each source's worker the engine's steps. (The cluster's worker,
    :mod:`headwater._cluster._runner`, runs one item a Dramatiq message with
    conditional writes to PostgreSQL instead of a lock; it shares
    :func:`~headwater._attempt.run_attempt` and
    :func:`~headwater._attempt.try_again` with the engine's steps, not this
    interface.)
    """

    def begin(self, item: Item_contra, now: float) -> T | None:
        """With the lock held, when the scheduler gives out ``item`` at clock time ``now``.

        Returns a token to run it with, or None to drop it (it was cancelled).
        Should not raise: if it does, the exception is logged, the item is
        dropped (its slot freed), and the thread goes on.
        """

    def execute(self, item: Item_contra, token: T) -> O:
        """Without the lock: run ``item``; its outcome.

        Never raises: if it does anyway, the exception is logged, the item's
        slot is freed (nothing is settled), and the thread goes on.
        """

    def settle(self, item: Item_contra, token: T, outcome: O) -> Verdict:
        """With the lock held, inside :meth:`batch`: write the end; say whether the item goes again.

        Should not raise: if it does, the exception is logged, the attempt
        counts as ended, and the thread goes on with the next item.
        """

    def batch(self) -> AbstractContextManager[None]:
        """The context the end of one item and the start of the next share, entered with the lock held."""


class SourceWorker(Generic[Item, T, O]):
    """Runs one source's jobs within its :class:`RatePolicy`.

    Args:
        name: the source name, used for thread names.
        lock: the source's lock; every method here must be called with it held
            except :meth:`thread_objects`.
        policy: the policy in force; :meth:`set_policy` changes it.
        steps: what each item is run through (see :class:`Steps`).
        idle_timeout: real seconds an idle thread waits for work before it ends.
        clock: the clock every scheduling wait is measured on.
    """

    def __init__(
        self,
        name: str,
        lock: threading.RLock,
        policy: RatePolicy,
        steps: Steps[Item, T, O],
        idle_timeout: float,
        clock: Clock,
    ) -> None:
        self._name = name
        self._lock = lock
        self._changed = threading.Condition(lock)
        self._waiting = 0  # threads waiting on _changed: a put with none waiting notifies no one
        self._scheduler: Scheduler[Item] = Scheduler(policy)
        self._begin = steps.begin
        self._execute = steps.execute
        self._settle = steps.settle
        self._batch = steps.batch
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._spawned = 0

    @property
    def running(self) -> int:
        """Jobs whose ``run`` has started and not returned."""
        return self._scheduler.running

    @property
    def threads(self) -> int:
        """Live worker threads of this source."""
        return len(self._threads)

    @property
    def queued(self) -> int:
        """Queue entries (retries in backoff included), cancelled jobs not yet skipped included."""
        return self._scheduler.queued

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in force."""
        return self._scheduler.paused

    def put(self, item: Item) -> None:
        """Queue ``item`` at the back; start a thread if no idle one can take it."""
        if self._closed:
            return
        scheduler = self._scheduler
        scheduler.put(item)
        threads = len(self._threads)
        if (  # the cheapest test first: at full strength (the usual case with a queue) no more
            not scheduler.paused
            and threads < scheduler.policy.concurrency
            and threads - scheduler.running < scheduler.queued
        ):
            self._spawn()
        if self._waiting:
            self._changed.notify()

    def pause(self) -> None:
        """Start nothing until :meth:`resume`; running jobs go on."""
        self._scheduler.pause()

    def resume(self) -> None:
        """Undo :meth:`pause`; queued jobs start again."""
        self._scheduler.resume()
        self._fill()
        self._changed.notify_all()

    def set_policy(self, policy: RatePolicy) -> None:
        """Use ``policy`` from the next start on; waiting threads see it at once.

        Lowering the concurrency ends surplus threads as their current jobs
        end, so the number running never exceeds the larger of the two limits.
        """
        self._scheduler.set_policy(policy)
        self._fill()
        self._changed.notify_all()

    def close(self) -> None:
        """Start nothing more; idle and waiting threads end."""
        self._closed = True
        self._changed.notify_all()

    def thread_objects(self) -> list[threading.Thread]:
        return list(self._threads)

    # -- the threads -----------------------------------------------------

    def _fill(self) -> None:
        """Start threads up to the concurrency, or the work waiting if less."""
        scheduler = self._scheduler
        if scheduler.paused or self._closed:
            return
        while len(self._threads) < min(scheduler.policy.concurrency, scheduler.queued):
            self._spawn()

    def _spawn(self) -> None:
        self._spawned += 1
        thread = threading.Thread(
            target=self._loop, name=f"headwater-{self._name}-{self._spawned}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _loop(self) -> None:
        picked: tuple[Item, T] | None = None
        while True:
            try:  # the last resort: one job (its begin, its run) must not end the source's thread
                if picked is None:
                    with self._lock:
                        picked = self._next()
                        if picked is None:
                            self._threads.discard(threading.current_thread())
                            return
                item, token = picked
                picked = None
                picked = self._round(item, token)
            except BaseException:
                log.exception("worker of %s: a job raised; going on", self._name)

    def _round(self, item: Item, token: T) -> tuple[Item, T] | None:
        """Run ``item``, settle its outcome, and begin the next item if one may start at once."""
        try:
            outcome = self._execute(item, token)
        except BaseException:  # broke its contract: no outcome to settle, but the slot is ended all the same
            with self._lock:
                self._scheduler.ended(self._clock.now())
            raise
        with self._lock, self._batch():
            try:
                verdict = self._settle(item, token, outcome)
            except BaseException:  # the last resort: the attempt ends all the same
                log.exception("worker of %s: settling %r raised; going on", self._name, item)
                verdict = _ENDED
            scheduler = self._scheduler
            if verdict.pause_until is not None:
                scheduler.retry_after(verdict.pause_until)
            if verdict.front:
                scheduler.put_front(item)
            elif verdict.again_at is not None:
                scheduler.put_later(item, verdict.again_at)
            scheduler.ended(self._clock.now())
            if verdict.front or verdict.again_at is not None:
                self._fill()
            if self._waiting:
                self._changed.notify()
            follow = self._next(wait=False)
        if verdict.then is not None:
            try:
                verdict.then()
            except BaseException:
                log.exception("worker of %s: the step after %r raised; going on", self._name, item)
        return follow

    def _next(self, wait: bool = True) -> tuple[Item, T] | None:
        """Wait (lock held) for the scheduler to give out a job, begin it, and return it.

        Returns None when the worker is closed, the thread has been idle for
        ``idle_timeout``, or there are more threads than the concurrency; and,
        if not ``wait``, when no job may start right now.
        """
        scheduler = self._scheduler
        idle_since: float | None = None
        while not self._closed:
            if len(self._threads) > scheduler.policy.concurrency:
                return None  # the limit was lowered: surplus threads end between jobs
            now = self._clock.now()
            decision = scheduler.decide(now, 1)
            if decision.start:
                idle_since = None
                item = decision.start[0]
                try:
                    token = self._begin(item, now)
                except BaseException:  # broke its contract: not started, its slot is free again
                    scheduler.dropped(now)
                    raise
                if token is not None:
                    return item, token
                scheduler.dropped(now)  # cancelled while queued
                continue
            if not wait:
                return None
            if decision.wake_at is not None:
                idle_since = None
                self._waiting += 1
                try:
                    self._clock.wait(self._changed, decision.wake_at - now)
                finally:
                    self._waiting -= 1
                continue
            real = time.monotonic()  # nothing may start until an event: idle, on real time
            if idle_since is None:
                idle_since = real
            elif real - idle_since >= self._idle_timeout:
                return None
            self._waiting += 1
            try:
                self._changed.wait(self._idle_timeout - (real - idle_since))
            finally:
                self._waiting -= 1
        return None
