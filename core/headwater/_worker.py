"""The shared worker: one FIFO queue and a few threads per source.

A :class:`SourceWorker` runs one source's jobs. It starts a thread only when
work arrives and no idle thread can take it, never more than the policy's
concurrency, and a thread ends after ``idle_timeout`` seconds with nothing
to do. Queued jobs cost a queue entry, not a thread.

Before each start a thread waits, on the engine's :class:`~headwater.Clock`,
until the start is allowed: the source is not paused, any Retry-After pause
is over, the policy's ``delay`` has passed since the last end, and the
``per_minute`` window has room. Retries wait apart from the queue until their
backoff has passed, then go to its front. Every limit is read from the
current policy on each pass, so :meth:`SourceWorker.set_policy` reaches
threads that are already waiting.

The worker shares the source's lock with the engine's records of that
source, so "is this job still wanted?" and "mark it running" happen in one
step (the ``begin`` callback runs with the lock held).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from headwater._clock import Clock
from headwater._policy import RatePolicy
from headwater._records import Job

T = TypeVar("T")

log = logging.getLogger("headwater")

#: The window ``RatePolicy.per_minute`` counts starts in, in seconds.
WINDOW = 60.0


class SourceWorker(Generic[T]):
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
        begin: Callable[[Job, float], T | None],
        run: Callable[[Job, T], tuple[Job, T] | None],
        idle_timeout: float,
        clock: Clock,
    ) -> None:
        self._name = name
        self._lock = lock
        self._changed = threading.Condition(lock)
        self._policy = policy
        self._begin = begin
        self._run = run
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._queue: deque[Job] = deque()
        self._later: list[tuple[float, int, Job]] = []  # (due, tie-break, job): retries in backoff
        self._order = itertools.count()
        self._starts: deque[float] = deque()  # with a per_minute cap: starts in the last WINDOW
        self._threads: set[threading.Thread] = set()
        self._running = 0
        self._last_end: float | None = None
        self._resume_at = float("-inf")
        self._paused = False
        self._closed = False
        self._spawned = 0

    @property
    def running(self) -> int:
        """Jobs whose ``run`` has started and not returned."""
        return self._running

    @property
    def threads(self) -> int:
        """Live worker threads of this source."""
        return len(self._threads)

    @property
    def queued(self) -> int:
        """Queue entries (retries in backoff included), cancelled jobs not yet skipped included."""
        return len(self._queue) + len(self._later)

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in force."""
        return self._paused

    def put(self, job: Job) -> None:
        """Queue ``job`` at the back; start a thread if no idle one can take it."""
        if self._closed:
            return
        self._queue.append(job)
        threads = len(self._threads)
        if (
            threads - self._running < len(self._queue)
            and threads < self._policy.concurrency
            and not self._paused
        ):
            self._spawn()
        self._changed.notify()

    def put_front(self, job: Job) -> None:
        """Queue ``job`` at the front (it was started before and keeps its place)."""
        if self._closed:
            return
        self._queue.appendleft(job)
        self._fill()
        self._changed.notify()

    def put_later(self, job: Job, due: float) -> None:
        """Queue ``job`` at the front once the clock reaches ``due`` (a retry's backoff)."""
        if self._closed:
            return
        heapq.heappush(self._later, (due, next(self._order), job))
        self._fill()
        self._changed.notify()

    def pause_until(self, when: float) -> None:
        """Start nothing before the clock reaches ``when`` (a Retry-After); later pauses win."""
        self._resume_at = max(self._resume_at, when)

    def pause(self) -> None:
        """Start nothing until :meth:`resume`; running jobs go on."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`; queued jobs start again."""
        self._paused = False
        self._fill()
        self._changed.notify_all()

    def set_policy(self, policy: RatePolicy) -> None:
        """Use ``policy`` from the next start on; waiting threads see it at once.

        Lowering the concurrency ends surplus threads as their current jobs
        end, so the number running never exceeds the larger of the two limits.
        Starts are counted for ``per_minute`` only while a cap is set, so a
        cap set at run time counts from then on.
        """
        self._policy = policy
        self._fill()
        self._changed.notify_all()

    def finish(self) -> None:
        """Record that a started job has ended; call with the lock held, once per job.

        ``run`` calls this in the same locked step in which it writes the
        job's outcome, so the delay counts from the moment the end is visible.
        """
        self._running -= 1
        self._last_end = self._clock.now()
        self._changed.notify()

    def next_due(self) -> tuple[Job, T] | None:
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
        if self._paused or self._closed:
            return
        while len(self._threads) < min(self._policy.concurrency, self.queued):
            self._spawn()

    def _spawn(self) -> None:
        self._spawned += 1
        thread = threading.Thread(
            target=self._loop, name=f"headwater-{self._name}-{self._spawned}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _loop(self) -> None:
        picked: tuple[Job, T] | None = None
        while True:
            if picked is None:
                with self._lock:
                    picked = self._next()
                    if picked is None:
                        self._threads.discard(threading.current_thread())
                        return
            job, token = picked
            try:
                picked = self._run(job, token)
            except BaseException:  # the last resort: one job must not end the source's thread
                log.exception("worker of %s: running job %s raised; going on", self._name, job.id)
                picked = None

    def _next(self, wait: bool = True) -> tuple[Job, T] | None:
        """Wait (lock held) for a job that is due, mark it started, and return it.

        Returns None when the worker is closed, the thread has been idle for
        ``idle_timeout``, or there are more threads than the concurrency; and,
        if not ``wait``, when no job may start right now.
        """
        idle_since: float | None = None
        while not self._closed:
            policy = self._policy
            if len(self._threads) > policy.concurrency:
                return None  # the limit was lowered: surplus threads end between jobs
            now = self._clock.now()
            if self._later and self._later[0][0] <= now:
                due: list[Job] = []
                while self._later and self._later[0][0] <= now:
                    due.append(heapq.heappop(self._later)[2])
                self._queue.extendleft(reversed(due))
            if self._paused or not (self._queue or self._later):
                if not wait:
                    return None
                real = time.monotonic()
                if idle_since is None:
                    idle_since = real
                elif real - idle_since >= self._idle_timeout:
                    return None
                self._changed.wait(self._idle_timeout - (real - idle_since))
                continue
            idle_since = None
            # Here running < concurrency: this thread runs nothing and there are
            # at most `concurrency` threads.
            limited = policy.delay > 0 or policy.per_minute is not None
            if limited or not self._queue or self._resume_at > now:
                start_at = self._start_allowed_at(policy, now)
                if start_at > now:
                    if not wait:
                        return None
                    self._clock.wait(self._changed, start_at - now)
                    continue
            job = self._queue.popleft()
            token = self._begin(job, now)
            if token is not None:
                self._running += 1
                if policy.per_minute is not None:
                    self._starts.append(now)
                return job, token
        return None

    def _start_allowed_at(self, policy: RatePolicy, now: float) -> float:
        """The earliest clock time a queued job may start (``now`` if it may start now)."""
        at = max(now, self._resume_at)
        if not self._queue:
            at = max(at, self._later[0][0])  # only retries in backoff wait
        if self._last_end is not None and policy.delay > 0:
            at = max(at, self._last_end + policy.delay)
        cap = policy.per_minute
        if cap is not None:
            starts = self._starts
            while starts and starts[0] <= now - WINDOW:
                starts.popleft()
            if len(starts) >= cap:
                at = max(at, starts[len(starts) - cap] + WINDOW)
        return at
