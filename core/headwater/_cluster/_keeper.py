"""Renewing leases while their holders run, and telling a holder that lost its lease.

A worker process runs one :class:`LeaseKeeper`. Each download it runs is
kept (:meth:`LeaseKeeper.keep`) with a function that renews its lease and
one to call if the lease is lost; the cluster's worker passes one that sets
the attempt's ``ctx.cancelled``, so the plugin stops, and the attempt's late
end is refused where records are kept.

A lease counts as lost when a renewal answers False, and also when no
renewal has succeeded for the lease's length (Redis unreachable, or the
process was frozen): the slot may be someone else's by then, whatever Redis
would say later.
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
    """One thread renewing every kept lease each ``interval`` seconds.

    Args:
        interval: seconds between rounds (> 0), well under the shortest
            lease kept (a third of it or less), so that one slow or failed
            round loses nothing.
        name: the thread's name.

    Thread-safe. The thread starts with the first :meth:`keep` and ends at
    :meth:`close`; it is a daemon.
    """

    def __init__(self, interval: float, name: str = "headwater-leases") -> None:
        if not 0 < interval < math.inf:
            raise ValueError(f"LeaseKeeper interval must be a finite number of seconds > 0, got {interval!r}")
        self.interval = interval
        self._name = name
        self._kept: dict[Hashable, _Kept] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def keep(self, key: Hashable, renew: Callable[[], bool], lease: float, lost: Callable[[], None]) -> None:
        """Renew a lease of ``lease`` seconds, just granted, until :meth:`drop` of ``key``.

        ``renew`` extends it and returns whether it still held; it may raise
        (Redis unreachable). ``lost`` is called once, on the keeper's thread,
        when the lease is lost; the lease is then no longer kept. Neither is
        called with the keeper's lock held.
        """
        with self._lock:
            self._kept[key] = _Kept(renew, lost, lease, time.monotonic() + lease)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def drop(self, key: Hashable) -> None:
        """Stop renewing ``key``'s lease (its holder released it); nothing if it is not kept."""
        with self._lock:
            self._kept.pop(key, None)

    def kept(self) -> int:
        """How many leases are kept now."""
        return len(self._kept)

    def close(self, timeout: float | None = None) -> None:
        """Stop renewing; wait up to ``timeout`` seconds for the thread to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def renew_all(self) -> None:
        """One round: renew every kept lease now; call ``lost`` of those lost. On the keeper's thread."""
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
