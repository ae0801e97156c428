"""The clock the scheduler waits on: the real monotonic clock, or one a test moves by hand.

Every scheduling wait (the delay between downloads, the per-minute cap, a
retry's backoff, a Retry-After pause, the timeout watchdog) reads the time
and waits through a :class:`Clock`, so tests can jump minutes ahead instead
of sleeping. Waiting for work when idle stays on real time.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds and a way to wait on it."""

    def now(self) -> float:
        """The current time; never goes backwards."""
        ...

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        """Wait on ``condition`` (whose lock the caller holds) for about ``seconds`` of this clock.

        May return early (a notify, or a spurious wake-up): callers re-check
        their predicate and wait again.
        """
        ...


class SystemClock:
    """``time.monotonic``, waiting in real time."""

    #: The time: ``time.monotonic`` itself (no Python call of its own; read several times a download).
    now = staticmethod(time.monotonic)

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        condition.wait(seconds)


class ManualClock:
    """A clock that moves only when :meth:`advance` is called; for tests.

    Waits on it return at the latest after ``poll`` real seconds so waiters
    re-read the time; :meth:`advance` also wakes every condition that has
    waited on it. Thread-safe.
    """

    def __init__(self, start: float = 1000.0, poll: float = 0.005) -> None:
        self._now = start
        self._poll = poll
        self._lock = threading.Lock()
        self._waiters: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def now(self) -> float:
        return self._now

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        with self._lock:
            self._waiters.add(condition)
        condition.wait(min(seconds, self._poll))

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` (>= 0) ahead and wake whoever waits on it."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward; got {seconds!r}")
        with self._lock:
            self._now += seconds
            waiters = list(self._waiters)
        for condition in waiters:
            with condition:
                condition.notify_all()
