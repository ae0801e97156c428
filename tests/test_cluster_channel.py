"""The channel listener the cancels and the slots given back share: it hears, it resubscribes, it closes."""

from __future__ import annotations

import queue
import threading
import uuid

import pytest
import redis
from cluster_child import PORT
from redis.backoff import NoBackoff
from redis.retry import Retry
from waiting import wait_until

from headwater._cluster._channel import ChannelListener

pytest_plugins = ["cluster_fixtures"]


def subscribed(client: redis.Redis, channel: str) -> bool:
    return bool(client.pubsub_numsub(channel)[0][1] == 1)


def test_messages_are_heard_in_order_and_again_after_the_connection_is_killed(
    redis_client: redis.Redis,
) -> None:
    name = f"hwtest-{uuid.uuid4().hex[:12]}"
    channel = f"{name}:channel"
    # Its pub/sub connection is named too; no retries, so the listener itself sees the connection die.
    mine = redis.Redis(host="127.0.0.1", port=PORT, client_name=name, retry=Retry(NoBackoff(), 0))
    heard: queue.Queue[list[str]] = queue.Queue()
    listener = ChannelListener(mine, channel, heard.put, name="headwater-test-channel")
    listener.start(subscribe=True)
    try:
        for word in ("a", "b"):
            redis_client.publish(channel, word)
        got: list[str] = []
        while len(got) < 2:
            got += heard.get(timeout=10)
        assert got == ["a", "b"]
        (killed,) = [c["id"] for c in redis_client.client_list() if c["name"] == name and c["sub"] == "1"]
        redis_client.client_kill_filter(_id=killed)
        wait_until(lambda: subscribed(redis_client, channel), 30, "the listener subscribed again")
        redis_client.publish(channel, "c")
        assert heard.get(timeout=10) == ["c"]
    finally:
        listener.close(10.0)
        mine.close()
    assert not any(t.name == "headwater-test-channel" for t in threading.enumerate())
    assert not subscribed(redis_client, channel)


def test_a_start_that_must_subscribe_raises_and_a_listener_that_cannot_subscribe_still_closes() -> None:
    nowhere = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))  # refused at once
    listener = ChannelListener(nowhere, "c", lambda _: None, name="headwater-test-channel")
    with pytest.raises(redis.ConnectionError):
        listener.start(subscribe=True)
    assert not any(t.name == "headwater-test-channel" for t in threading.enumerate())
    listener = ChannelListener(nowhere, "c", lambda _: None, name="headwater-test-channel")
    listener.start()  # it tries, and tries again
    listener.close(10.0)
    assert not any(t.name == "headwater-test-channel" for t in threading.enumerate())
