"""The shared worker: one FIFO queue and a few threads per source.

A :class:`SourceWorker` runs one source's jobs. It starts a thread only when
work arrives and no idle thread can take it, never more than the policy's
concurrency, and a thread ends after ``idle_timeout`` seconds with nothing
to do. Queued jobs cost a queue entry, not a thread.

The worker shares the source's lock with the engine's records of that
source, so "is this job still wanted?" and "mark it running" happen in one
step (the ``begin`` callback runs with the lock held).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from headwater.policy import RatePolicy
from headwater.records import Job

T = TypeVar("T")


class SourceWorker(Generic[T]):
    """Runs one source's jobs within its :class:`RatePolicy`.

    Args:
        name: the source name, used for thread names.
        lock: the source's lock; every method here must be called with it held
            except :meth:`join`.
        policy: the policy in force; :meth:`set_policy` changes it.
        begin: called with the lock held when a job is due to start; returns a
            token to run it with, or None to drop it (it was cancelled).
        run: called without the lock to do the job; must not raise, and must
            call :meth:`finish` (with the lock held) when the job has ended.
        idle_timeout: seconds an idle thread waits for work before it ends.
    """

    def __init__(
        self,
        name: str,
        lock: threading.RLock,
        policy: RatePolicy,
        begin: Callable[[Job], T | None],
        run: Callable[[Job, T], None],
        idle_timeout: float,
    ) -> None:
        self._name = name
        self._lock = lock
        self._changed = threading.Condition(lock)
        self._policy = policy
        self._begin = begin
        self._run = run
        self._idle_timeout = idle_timeout
        self._queue: deque[Job] = deque()
        self._threads: set[threading.Thread] = set()
        self._running = 0
        self._last_end: float | None = None
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
        """Queue entries, including cancelled jobs not yet skipped."""
        return len(self._queue)

    def put(self, job: Job) -> None:
        """Queue ``job``; start a thread if no idle one can take it."""
        if self._closed:
            return
        self._queue.append(job)
        threads = len(self._threads)
        if threads - self._running < len(self._queue) and threads < self._policy.concurrency:
            self._spawn()
        self._changed.notify()

    def set_policy(self, policy: RatePolicy) -> None:
        """Use ``policy`` from the next start on; waiting threads see it at once."""
        self._policy = policy
        while len(self._threads) < min(policy.concurrency, len(self._queue)):
            self._spawn()
        self._changed.notify_all()

    def finish(self) -> None:
        """Record that a started job has ended; call with the lock held, once per job.

        ``run`` calls this in the same locked step in which it writes the
        job's outcome, so the delay counts from the moment the end is visible.
        """
        self._running -= 1
        self._last_end = time.monotonic()
        self._changed.notify()

    def close(self) -> None:
        """Start nothing more; idle and waiting threads end."""
        self._closed = True
        self._changed.notify_all()

    def thread_objects(self) -> list[threading.Thread]:
        return list(self._threads)

    # -- the threads -----------------------------------------------------

    def _spawn(self) -> None:
        self._spawned += 1
        thread = threading.Thread(
            target=self._loop, name=f"headwater-{self._name}-{self._spawned}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                picked = self._next()
                if picked is None:
                    self._threads.discard(threading.current_thread())
                    return
            job, token = picked
            self._run(job, token)

    def _next(self) -> tuple[Job, T] | None:
        """Wait (lock held) for a job that is due, mark it started, and return it.

        Returns None when the worker is closed, the thread has been idle for
        ``idle_timeout``, or there are more threads than the concurrency.
        """
        idle_since: float | None = None
        while not self._closed:
            policy = self._policy
            if len(self._threads) > policy.concurrency:
                return None  # the limit was lowered: surplus threads end between jobs
            if not self._queue:
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                elif now - idle_since >= self._idle_timeout:
                    return None
                self._changed.wait(self._idle_timeout - (now - idle_since))
                continue
            idle_since = None
            # Here running < concurrency: this thread runs nothing and there are
            # at most `concurrency` threads.
            if self._last_end is not None and policy.delay > 0:
                wait = self._last_end + policy.delay - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
            job = self._queue.popleft()
            token = self._begin(job)
            if token is not None:
                self._running += 1
                return job, token
        return None
