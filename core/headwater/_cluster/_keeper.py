"""Renewing leases while their holders run, and telling a holder that lost its lease.

A worker process runs one :class:`LeaseKeeper`. Each download it runs is
kept (:meth:`LeaseKeeper.keep`) with a function that renews its lease and
one to call if the lease is lost; the cluster's worker passes one that sets
the attempt's ``ctx.cancelled``, so the plugin stops, and the attempt's late
end is refused where records are kept.

A lease counts as lost when a renewal answers False, and also when no
renewal has succeeded for the lease's length (Redis unreachable, or the
process was frozen): the slot may be someone else's by then, whatever Redis
would say later. That length is watched by a thread of its own, so a
renewal that hangs (a Redis that does not answer holds each call for the
client's timeout, one lease after another) delays no loss.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable

import attrs

log = logging.getLogger("headwater.cluster")


@attrs.define
class _Kept:
    renew: Callable[[], bool]
    lost: Callable[[], None]
    lease: float
    good_until: float  # time.monotonic() until which the lease is surely held


class LeaseKeeper:
    """One thread renewing every kept lease each ``interval`` seconds, one losing those not renewed in time.

    Args:
        interval: seconds between rounds (> 0), well under the shortest
            lease kept (a third of it or less), so that one slow or failed
            round loses nothing.
        name: the thread's name.

    Thread-safe. The threads start with the first :meth:`keep` and end at
    :meth:`close`; they are daemons.
    """

    def __init__(self, interval: float, name: str = "headwater-leases") -> None:
        if not 0 < interval < math.inf:
            raise ValueError(f"LeaseKeeper interval must be a finite number of seconds > 0, got {interval!r}")
        self.interval = interval
        self._name = name
        self._kept: dict[Hashable, _Kept] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def keep(self, key: Hashable, renew: Callable[[], bool], lease: float, lost: Callable[[], None]) -> None:
        """Renew a lease of ``lease`` seconds, just granted, until :meth:`drop` of ``key``.

        ``renew`` extends it and returns whether it still held; it may raise
        (Redis unreachable), or take long. ``lost`` is called once, on one
        of the keeper's threads, when the lease is lost (a renewal answered
        False, or none succeeded for ``lease`` seconds, whether or not one is
        under way); the lease is then no longer kept. Neither is called with
        the keeper's lock held.
        """
        with self._lock:
            self._kept[key] = _Kept(renew, lost, lease, time.monotonic() + lease)
            if not self._threads and not self._stop.is_set():
                self._threads = [
                    threading.Thread(target=self._run, name=self._name, daemon=True),
                    threading.Thread(target=self._expire, name=f"{self._name}-expiry", daemon=True),
                ]
                for thread in self._threads:
                    thread.start()

    def drop(self, key: Hashable) -> None:
        """Stop renewing ``key``'s lease (its holder released it); nothing if it is not kept."""
        with self._lock:
            self._kept.pop(key, None)

    def kept(self) -> int:
        """How many leases are kept now."""
        return len(self._kept)

    def close(self, timeout: float | None = None) -> None:
        """Stop renewing; wait up to ``timeout`` seconds for each thread to end."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def renew_all(self) -> None:
        """One round: renew every kept lease now; call ``lost`` of those lost. On the renewing thread."""
        with self._lock:
            kept = list(self._kept.items())
        for key, entry in kept:
            sent = time.monotonic()
            try:
                held: bool | None = entry.renew()
            except Exception as exc:  # Redis unreachable: the lease may still hold, for now
                log.warning("could not renew lease %s: %s", key, exc)
                held = None
            if held:
                entry.good_until = sent + entry.lease
            elif held is None and time.monotonic() < entry.good_until:
                continue
            else:
                self._lose(key, entry)

    def _lose(self, key: Hashable, entry: _Kept) -> None:
        with self._lock:
            if self._kept.get(key) is not entry:
                return  # dropped meanwhile: its holder ended
            del self._kept[key]
        log.warning("lease %s lost; its holder stops", key)
        try:
            entry.lost()
        except Exception:  # the last resort: the keeper goes on for the other leases
            log.exception("stopping the holder of lease %s failed", key)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.renew_all()

    def _expire(self) -> None:
        """Lose each lease whose ``good_until`` has passed, waking at the next one (within ``interval``)."""
        wait = self.interval
        while not self._stop.wait(wait):
            now = time.monotonic()
            with self._lock:
                kept = list(self._kept.items())
            due = [(key, entry) for key, entry in kept if entry.good_until <= now]
            first = min((entry.good_until for _, entry in kept if entry.good_until > now), default=math.inf)
            for key, entry in due:
                self._lose(key, entry)
            wait = min(self.interval, max(0.0, first - time.monotonic()))
