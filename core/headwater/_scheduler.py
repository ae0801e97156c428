"""The scheduling rules of one source, as plain code: what may start now, and when to ask again.

A :class:`Scheduler` holds one source's waiting work and the facts its
:class:`~headwater.RatePolicy` is applied to: how many run, when the last one
ended, the starts of the last minute, a Retry-After pause, a user's pause.
It is driven by events (:meth:`~Scheduler.put`, :meth:`~Scheduler.ended`,
:meth:`~Scheduler.pause`, ...) and answers one query, :meth:`~Scheduler.decide`:
given the clock's time, which items start now and when to ask again.

It has no threads, no lock and no clock of its own: the caller passes the
time and serializes the calls (the in-process worker holds its source's
lock; the cluster's dispatcher its own). Every rule of when a download of a
source may start lives here, once:

- first in, first out: items start in the order they were put, except that
  an item put back with :meth:`~Scheduler.put_front` (a Retry-After) and a
  retry whose backoff has passed go to the front;
- at most ``policy.concurrency`` items started and not ended;
- ``policy.delay`` seconds from the last end to the next start;
- at most ``policy.per_minute`` starts in any :data:`WINDOW` seconds;
- nothing starts before a Retry-After pause is over, or while paused;
- a retry waits apart from the queue until its backoff has passed.

Every limit is read from the policy in force at each :meth:`~Scheduler.decide`,
so :meth:`~Scheduler.set_policy` applies from the next start on.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import deque
from typing import Generic, TypeVar

import attrs

from headwater._policy import RatePolicy

T = TypeVar("T")

#: The window ``RatePolicy.per_minute`` counts starts in, in seconds.
WINDOW = 60.0


@attrs.frozen
class Decision(Generic[T]):
    """What :meth:`Scheduler.decide` answers.

    Attributes:
        start: the items to start now, in order; each counts as running from
            now on (see :meth:`Scheduler.dropped` for one not started after all).
        wake_at: the clock time to ask again if no event comes first, or None
            when only an event (an end, a put, a resume, a policy change) can
            let anything more start.
    """

    start: tuple[T, ...]
    wake_at: float | None


class Scheduler(Generic[T]):
    """One source's queue and start rules; see the module's docstring.

    Not thread-safe: the caller serializes every call. Items are opaque
    (the engine passes jobs); an item put twice is two entries.
    """

    def __init__(self, policy: RatePolicy) -> None:
        self._policy = policy
        self._queue: deque[T] = deque()
        self._later: list[tuple[float, int, T]] = []  # (due, tie-break, item): retries in backoff
        self._order = itertools.count()
        self._starts: deque[float] = deque()  # with a per_minute cap: starts of the last WINDOW
        self._running = 0
        self._last_end: float | None = None
        self._resume_at = float("-inf")
        self._paused = False

    @property
    def policy(self) -> RatePolicy:
        """The policy in force."""
        return self._policy

    @property
    def running(self) -> int:
        """Items started (by :meth:`decide`) and not yet ended or dropped."""
        return self._running

    @property
    def queued(self) -> int:
        """Items waiting: in the queue, and retries in their backoff."""
        return len(self._queue) + len(self._later)

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in force."""
        return self._paused

    # -- events ----------------------------------------------------------

    def put(self, item: T) -> None:
        """Queue ``item`` at the back (submitted, or moved here down a fallback chain)."""
        self._queue.append(item)

    def put_front(self, item: T) -> None:
        """Queue ``item`` at the front: it was started before and keeps its place (a Retry-After)."""
        self._queue.appendleft(item)

    def put_later(self, item: T, due: float) -> None:
        """Queue ``item`` at the front once the clock reaches ``due`` (a retry after its backoff).

        Retries due at the same decide go to the front earliest due first.
        """
        heapq.heappush(self._later, (due, next(self._order), item))

    def ended(self, now: float) -> None:
        """A started item ended at clock time ``now``: its slot is free, and the delay counts from ``now``."""
        self._running -= 1
        self._last_end = now

    def dropped(self, started_at: float) -> None:
        """An item :meth:`decide` gave out at ``started_at`` was not started after all (it was cancelled).

        Its slot is free again and its start no longer counts for ``per_minute``;
        the delay is unaffected (nothing ended).
        """
        self._running -= 1
        if self._starts:
            with contextlib.suppress(ValueError):  # the cap was set after that start: never counted
                self._starts.remove(started_at)

    def retry_after(self, until: float) -> None:
        """Start nothing before the clock reaches ``until`` (a Retry-After); the later pause wins."""
        self._resume_at = max(self._resume_at, until)

    def pause(self) -> None:
        """Start nothing until :meth:`resume`; running items go on."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._paused = False

    def set_policy(self, policy: RatePolicy) -> None:
        """Use ``policy`` from the next :meth:`decide` on.

        Lowering the concurrency starts nothing until fewer than the new limit
        run. Starts are counted for ``per_minute`` only while a cap is set, so
        a cap set now counts from now on.
        """
        self._policy = policy

    # -- the query -------------------------------------------------------

    def decide(self, now: float, most: int | None = None) -> Decision[T]:
        """The items that start at clock time ``now`` (at most ``most``), and when to ask again.

        The items returned leave the queue and count as running (and, with a
        ``per_minute`` cap, as started at ``now``) until :meth:`ended` or
        :meth:`dropped`. ``now`` must not go backwards between calls.
        """
        later = self._later
        if later and later[0][0] <= now:
            due: list[T] = []
            while later and later[0][0] <= now:
                due.append(heapq.heappop(later)[2])
            self._queue.extendleft(reversed(due))
        free = self._policy.concurrency - self._running
        if most is not None:
            free = min(free, most)
        taken: list[T] = []
        if free > 0 and self._queue and not self._paused and self._allowed_at(now) <= now:
            room = free
            cap = self._policy.per_minute
            if cap is not None:
                room = min(room, cap - len(self._starts))
            queue = self._queue
            for _ in range(min(room, len(queue))):
                taken.append(queue.popleft())
            self._running += len(taken)
            if cap is not None:
                self._starts.extend(itertools.repeat(now, len(taken)))
        return Decision(tuple(taken), self._wake_at(now))

    def _wake_at(self, now: float) -> float | None:
        """When to ask again: None if only an event can start anything, else the clock time."""
        if self._paused or not (self._queue or self._later):
            return None
        if self._running >= self._policy.concurrency:
            return None
        return self._allowed_at(now)

    def _allowed_at(self, now: float) -> float:
        """The earliest clock time an item may start, ``now`` if at once; queue or retries non-empty."""
        at = max(now, self._resume_at)
        if not self._queue:
            at = max(at, self._later[0][0])  # only retries in backoff wait
        policy = self._policy
        if self._last_end is not None and policy.delay > 0:
            at = max(at, self._last_end + policy.delay)
        cap = policy.per_minute
        starts = self._starts
        while starts and starts[0] + WINDOW <= now:
            starts.popleft()
        if cap is not None and len(starts) >= cap:
            at = max(at, starts[len(starts) - cap] + WINDOW)
        return at
