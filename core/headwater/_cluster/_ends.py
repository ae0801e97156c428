"""Hearing at once that a download gave its slot back: the scheduler's shortcut past the change feed.

A worker releases a slot as soon as its download's outcome is known, and
the release publishes the holder (``<id>:<attempt>``) on the channel
:func:`~headwater._cluster._limits.ended_channel`, in the same atomic step
(``release.lua``). The leading scheduler listens there with an
:class:`EndListener`, so the slot's next download starts without waiting
for the end's commit in PostgreSQL and its NOTIFY. An announcement is a
hint only: pub/sub keeps nothing for a listener that is not connected, and
the change feed still brings every end, which is what the scheduler's view
of the records follows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from headwater._cluster._scripts import text

log = logging.getLogger("headwater.cluster")


class EndListener:
    """Hands the holders announced on ``channel`` to ``heard``, a batch at a time, on its own thread.

    Args:
        client: a redis-py client (its pub/sub connection is its own).
        heard: called with the holders announced since the last call, in
            order; it must not block for long. What it raises is logged.
        channel: the channel the releases publish on.
        tick: seconds the thread waits at most for a message before it
            looks whether it is to stop.

    :meth:`start` subscribes and starts the thread; :meth:`close` ends it.
    Announcements are hints: one made while the subscription is being set
    up, or while the connection is down, is not heard.
    """

    def __init__(
        self,
        client: redis.Redis,
        heard: Callable[[list[str]], None],
        channel: str,
        *,
        tick: float = 0.25,
    ) -> None:
        self.channel = channel
        self._client = client
        self._heard = heard
        self._tick = tick
        self._pubsub: redis.client.PubSub | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headwater-ends", daemon=True)

    def start(self) -> None:
        """Subscribe, then start the thread; raises ``redis.RedisError`` if Redis cannot be reached."""
        self._pubsub = self._subscribed()
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and unsubscribe. Later calls do nothing."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()

    def _subscribed(self) -> redis.client.PubSub:
        pubsub: redis.client.PubSub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.channel)
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    def _run(self) -> None:
        pause = 0.05
        while not self._stop.is_set():
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    pubsub = self._pubsub = self._subscribed()
                    pause = 0.05
                holders = []
                message = pubsub.get_message(timeout=self._tick)
                while message is not None:  # and whatever else came meanwhile, as one batch
                    if message.get("type") == "message":
                        holders.append(text(message["data"]))
                    message = pubsub.get_message(timeout=0)
                if holders:
                    self._heard(holders)
            except redis.RedisError as exc:  # the change feed brings the ends meanwhile
                log.warning("the channel of ended downloads is unreachable (%s); subscribing again", exc)
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    pubsub.close()
                self._stop.wait(pause)
                pause = min(2 * pause, 1.0)
            except Exception:  # the thread must outlive any one bad round
                log.exception("the listener of ended downloads failed a round")
                self._stop.wait(pause)
