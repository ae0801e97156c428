"""The shared worker: the threads that run one source's jobs, as its scheduler decides.

A :class:`SourceWorker` runs one source's jobs. It starts a thread only when
work arrives and no idle thread can take it, never more than the policy's
concurrency, and a thread ends after ``idle_timeout`` seconds with nothing
to do. Queued jobs cost a queue entry, not a thread.

Which job starts when is the source's :class:`~headwater._scheduler.Scheduler`'s
decision, the one place the policy's rules live; a thread with nothing it
may start yet waits, on the engine's :class:`~headwater.Clock`, until the time
the scheduler names or an event (an end, a put, a resume, a policy change).

The worker shares the source's lock with the engine's records of that
source, so "is this job still wanted?" and "mark it running" happen in one
step (the ``begin`` callback runs with the lock held).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from headwater._clock import Clock
from headwater._policy import RatePolicy
from headwater._scheduler import Scheduler

Item = TypeVar("Item")
T = TypeVar("T")

log = logging.getLogger("headwater")


class SourceWorker(Generic[Item, T]):
    """Runs one source's jobs within its :class:`RatePolicy`.

    Args:
        name: the source name, used for thread names.
        lock: the source's lock; every method here must be called with it held
            except :meth:`thread_objects`.
        policy: the policy in force; :meth:`set_policy` changes it.
        begin: called with the lock held when a job is due to start, with the
            clock time the start was decided at; returns a token to run it
            with, or None to drop it (it was cancelled).
        run: called without the lock to do the job; must call :meth:`finish`
            (with the lock held) once when the job has ended, and should not
            raise: if it does, the exception is logged and the thread goes on
            with the next job. Returns None, or the next job and token when it
            began one with :meth:`next_due` in that same locked step; the
            thread runs that one next.
        idle_timeout: real seconds an idle thread waits for work before it ends.
        clock: the clock every scheduling wait is measured on.
    """

    def __init__(
        self,
        name: str,
        lock: threading.RLock,
        policy: RatePolicy,
        begin: Callable[[Item, float], T | None],
        run: Callable[[Item, T], tuple[Item, T] | None],
        idle_timeout: float,
        clock: Clock,
    ) -> None:
        self._name = name
        self._lock = lock
        self._changed = threading.Condition(lock)
        self._scheduler: Scheduler[Item] = Scheduler(policy)
        self._begin = begin
        self._run = run
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
        if (
            threads - scheduler.running < scheduler.queued
            and threads < scheduler.policy.concurrency
            and not scheduler.paused
        ):
            self._spawn()
        self._changed.notify()

    def put_front(self, item: Item) -> None:
        """Queue ``item`` at the front (it was started before and keeps its place)."""
        if self._closed:
            return
        self._scheduler.put_front(item)
        self._fill()
        self._changed.notify()

    def put_later(self, item: Item, due: float) -> None:
        """Queue ``item`` at the front once the clock reaches ``due`` (a retry's backoff)."""
        if self._closed:
            return
        self._scheduler.put_later(item, due)
        self._fill()
        self._changed.notify()

    def pause_until(self, when: float) -> None:
        """Start nothing before the clock reaches ``when`` (a Retry-After); later pauses win."""
        self._scheduler.retry_after(when)

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

    def finish(self) -> None:
        """Record that a started job has ended; call with the lock held, once per job.

        ``run`` calls this in the same locked step in which it writes the
        job's outcome, so the delay counts from the moment the end is visible.
        """
        self._scheduler.ended(self._clock.now())
        self._changed.notify()

    def next_due(self) -> tuple[Item, T] | None:
        """Begin the next job if one may start right now, else None; call with the lock held.

        For ``run``, right after :meth:`finish`: the thread that just ended a
        job begins the next one in the same locked step, without waiting.
        """
        return self._next(wait=False)

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
            if picked is None:
                with self._lock:
                    picked = self._next()
                    if picked is None:
                        self._threads.discard(threading.current_thread())
                        return
            item, token = picked
            try:
                picked = self._run(item, token)
            except BaseException:  # the last resort: one job must not end the source's thread
                log.exception("worker of %s: running %r raised; going on", self._name, item)
                picked = None

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
                token = self._begin(item, now)
                if token is not None:
                    return item, token
                scheduler.dropped(now)  # cancelled while queued
                continue
            if not wait:
                return None
            if decision.wake_at is not None:
                idle_since = None
                self._clock.wait(self._changed, decision.wake_at - now)
                continue
            real = time.monotonic()  # nothing may start until an event: idle, on real time
            if idle_since is None:
                idle_since = real
            elif real - idle_since >= self._idle_timeout:
                return None
            self._changed.wait(self._idle_timeout - (real - idle_since))
        return None
