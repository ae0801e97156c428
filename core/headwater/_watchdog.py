"""The watchdog: one thread that ends downloads past their timeout or stalled.

The engine hands it a ``check(now)`` callable that expires every overdue
download and returns the next deadline; the watchdog calls it when that
deadline comes, or sooner when :meth:`Watchdog.poke` says a new deadline
exists. Its thread starts on the first poke, so an engine whose policies set
no timeout never has one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from headwater._clock import Clock


class Watchdog:
    """Calls ``check`` on its own daemon thread whenever a deadline may have passed.

    Args:
        clock: the clock deadlines are measured on.
        check: called with the clock's time and no lock held; expires what is
            due and returns the next deadline, or None if nothing is watched.
            It must not raise.
        name: the thread's name.
    """

    def __init__(self, clock: Clock, check: Callable[[float], float | None], name: str) -> None:
        self._clock = clock
        self._check = check
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._poked = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Say that a new deadline exists (a watched download started); any thread."""
        with self._cond:
            if self._closed:
                return
            self._poked = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> threading.Thread | None:
        """Stop the thread (it ends after its current check); return it for joining, if any."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            return self._thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                self._poked = False
            due = self._check(self._clock.now())
            with self._cond:
                while not (self._closed or self._poked):
                    if due is None:
                        self._cond.wait()
                        continue
                    now = self._clock.now()
                    if now >= due:
                        break
                    self._clock.wait(self._cond, due - now)
