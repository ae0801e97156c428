"""Listening on one Redis pub/sub channel, on a thread of its own, through lost connections.

Pub/sub keeps nothing for a listener that is not connected (a dropped
connection, a Redis restart, the moment before it subscribed): what is
published meanwhile is never heard, so each user of a
:class:`ChannelListener` has its own way to learn it otherwise (polling the
records, the change feed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from headwater._cluster._scripts import text

log = logging.getLogger("headwater.cluster")

#: The longest the thread listens before it looks whether it was closed (seconds).
LISTEN_SLICE = 0.25

#: Seconds between tries to subscribe again: the first pause, doubled after each failure up to the last.
FIRST_PAUSE, LAST_PAUSE = 0.05, 1.0


class ChannelListener:
    """Hands the messages published on ``channel`` to ``heard``, a batch at a time, on its own thread.

    Args:
        client: a redis-py client (its pub/sub connection is its own).
        channel: the channel's name (not a pattern).
        heard: called with the messages published since its last call, in
            order, as text; it must not block for long.
        name: the thread's name.

    What ``heard`` raises is logged, and the thread goes on. While Redis
    cannot be reached the thread subscribes again, pausing
    :data:`FIRST_PAUSE` s after the first failure, twice as long after each
    next one, up to :data:`LAST_PAUSE` s; each try waits as long as the
    client's timeouts let it (a Redis that accepts and never answers holds
    it for the ``socket_timeout``), so nothing that must run on time belongs
    on this thread. :meth:`start` starts the thread; :meth:`close` ends it
    within :data:`LISTEN_SLICE` s, or once the call to Redis under way
    returns.
    """

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        heard: Callable[[list[str]], None],
        *,
        name: str,
    ) -> None:
        self.channel = channel
        self._client = client
        self._heard = heard
        self._pubsub: redis.client.PubSub | None = None  # the thread's, once started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, *, subscribe: bool = False) -> None:
        """Start the thread.

        With ``subscribe``, subscribe first, here: every message published
        once it returns is heard (while the connection lasts), and it raises
        ``redis.RedisError`` if Redis cannot be reached (the thread is not
        started). Without, the thread subscribes, trying until it can.
        """
        if subscribe:
            self._pubsub = self._subscribed()
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """End the thread; wait up to ``timeout`` seconds for it (not when called on it).

        Later calls do nothing but wait.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _subscribed(self) -> redis.client.PubSub:
        pubsub: redis.client.PubSub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.channel)
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    def _listen(self, pubsub: redis.client.PubSub, wait: float) -> None:
        """Hand ``heard`` what comes within ``wait`` seconds, and whatever came with it, as one batch."""
        messages = []
        message = pubsub.get_message(timeout=wait)
        while message is not None:
            if message.get("type") == "message":
                messages.append(text(message["data"]))
            message = pubsub.get_message(timeout=0)
        if messages:
            self._heard(messages)

    def _run(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        pause = FIRST_PAUSE
        try:
            while not self._stop.is_set():
                try:
                    if pubsub is None:
                        pubsub = self._subscribed()
                        pause = FIRST_PAUSE
                    self._listen(pubsub, LISTEN_SLICE)
                except redis.RedisError as exc:
                    log.warning("the channel %s is unreachable (%s); subscribing again", self.channel, exc)
                    if pubsub is not None:
                        pubsub.close()
                    pubsub = None
                    self._stop.wait(pause)
                    pause = min(2 * pause, LAST_PAUSE)
                except Exception:  # the thread must outlive any one bad round
                    log.exception("the listener of channel %s failed a round", self.channel)
                    self._stop.wait(pause)
        finally:
            if pubsub is not None:
                pubsub.close()
