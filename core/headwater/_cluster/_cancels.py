"""Telling a worker that a download it runs was cancelled: a Redis channel, and polling as the fallback.

Whoever cancels a download in the records (a conditional write that
always wins) then :func:`announce` s it on the channel. Each worker process
runs one :class:`CancelWatch`: a thread that listens on the channel (a
:class:`~headwater._cluster._channel.ChannelListener`) and stops the
downloads it watches as their ids are heard, within a round trip.
Pub/sub keeps nothing for a listener that is not connected (a dropped
connection, a Redis restart), so a second thread asks, every ``poll``
seconds, which of the downloads it watches must stop (the worker reads
their records), and stops those: a cancel reaches its download within
``poll`` seconds even when the announcement was lost, or Redis is down or
hung (the listener's tries to subscribe again, each up to the client's
timeouts, never hold the check back).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Collection

import redis

from headwater._cluster._channel import ChannelListener

log = logging.getLogger("headwater.cluster")


def announce(client: redis.Redis, download_id: str, channel: str) -> None:
    """Tell the workers on ``channel`` (``ClusterConfig.cancel_channel``) that ``download_id`` was cancelled.

    After its record says so; raises RedisError.
    """
    client.publish(channel, download_id)


class CancelWatch:
    """Two threads that call the ``stop`` of a watched download when it is cancelled elsewhere.

    Args:
        client: a redis-py client (its pub/sub connection is its own).
        gone: given the ids watched, returns those that must stop (their
            records no longer say this process runs them); called on the
            watch's second thread every ``poll`` seconds while any is
            watched. It may raise: that round is skipped.
        poll: seconds between those checks (> 0).
        channel: the channel :func:`announce` publishes on.

    Thread-safe. The threads start at once and end at :meth:`close`; each
    ``stop`` is called at most once, on one of the watch's threads, and the
    id is no longer watched after it.
    """

    def __init__(
        self,
        client: redis.Redis,
        gone: Callable[[Collection[str]], Collection[str]],
        *,
        poll: float = 1.0,
        channel: str,
    ) -> None:
        if not 0 < poll < math.inf:
            raise ValueError(f"CancelWatch poll must be a finite number of seconds > 0, got {poll!r}")
        self.poll = poll
        self._gone = gone
        self._watched: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = ChannelListener(client, channel, self._fire, name="headwater-cancels")
        self._listener.start()
        self._checker = threading.Thread(target=self._run, name="headwater-cancel-checks", daemon=True)
        self._checker.start()

    def watch(self, download_id: str, stop: Callable[[], None]) -> None:
        """Call ``stop`` when ``download_id`` is cancelled, until :meth:`unwatch`."""
        with self._lock:
            self._watched[download_id] = stop

    def unwatch(self, download_id: str) -> None:
        """Stop watching ``download_id`` (its download ended); nothing if it is not watched."""
        with self._lock:
            self._watched.pop(download_id, None)

    def close(self, timeout: float | None = None) -> None:
        """End the threads; wait up to ``timeout`` seconds for each.

        They end within half a second, or once the call under way returns
        (to Redis, or ``gone``).
        """
        self._stop.set()
        self._listener.close(timeout)
        self._checker.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self._check()

    def _fire(self, ids: Collection[str]) -> None:
        with self._lock:
            stops = [(i, self._watched.pop(i)) for i in ids if i in self._watched]
        for download_id, stop in stops:
            log.info("download %s was cancelled; stopping it", download_id)
            try:
                stop()
            except Exception:  # the last resort: the watch goes on for the others
                log.exception("stopping download %s failed", download_id)

    def _check(self) -> None:
        with self._lock:
            watched = list(self._watched)
        if not watched:
            return
        try:
            self._fire(self._gone(watched))
        except Exception as exc:  # the records cannot be read now: the channel still works
            log.warning("could not check the running downloads' records: %s", exc)
