"""The scheduler when Redis fails between granting a slot and starting its download: nothing is stranded.

A download the scheduler decided to start has its start undone and goes back
to the front of its source when taking its slot fails, or when its message
cannot be sent after the slot was granted (the slot is given back). Without
that, the scheduler's rules count it running forever, or the sweep renews
the lease of a message that was never sent: the download stays QUEUED for
good and holds one of its source's slots. A message that reaches a worker
which cannot check its slot is acknowledged unstarted: the scheduler sends
it again.

The local Redis and PostgreSQL under names of the test's own (the ``cluster``
fixture), in-process workers, the ``clustered`` source (tests/cluster_plugin.py);
the fault is one ``redis.ConnectionError`` from the step under test.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import cluster_plugin
import pytest
import redis
from cluster_child import PORT
from cluster_procs import Cluster
from pgproxy import Proxy
from redis.backoff import NoBackoff
from redis.retry import Retry

import headwater._cluster._dispatch as scheduler_module
import headwater._cluster._setup as cluster_setup
import headwater._cluster._work as worker_module
from headwater import RatePolicy, State
from headwater._cluster._limits import RedisLimits
from headwater._cluster._message import Assignment, broker, send

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]


def failing_once(real: Callable[..., Any], calls: list[str]) -> Callable[..., Any]:
    """``real``, except that its first call raises redis.ConnectionError (noted in ``calls``)."""
    lock = threading.Lock()

    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            first = not calls
            calls.append("failed" if first else "passed")
        if first:
            raise redis.ConnectionError("the test's fault: Redis went away")
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("step", ["send", "acquire"])
def test_a_redis_failure_while_starting_a_download_strands_nothing(
    cluster: Cluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    calls: list[str] = []
    if step == "send":
        monkeypatch.setattr(scheduler_module, "send", failing_once(scheduler_module.send, calls))
    else:
        monkeypatch.setattr(RedisLimits, "acquire_each", failing_once(RedisLimits.acquire_each, calls))
    with cluster.engine(workers=2) as engine:
        first = engine.submit("clustered", "ok:a.txt")
        (record,) = engine.wait([first], timeout=30)
        assert calls[0] == "failed" and "passed" in calls, calls
        assert (record.state, record.attempts) == (State.COMPLETED, 1)
        assert (cluster.dest / "a.txt").read_bytes() == b"y" * 1000
        more = [engine.submit("clustered", f"ok:{n}.txt") for n in range(3)]
        assert [r.state for r in engine.wait(more, timeout=30)] == [State.COMPLETED] * 3
        # No slot is held once all have ended: the failed grant's was given back (or expired).
        limits = RedisLimits(
            redis_client, "clustered", RatePolicy(), lease=2.0, prefix=cluster.config.limits_prefix
        )
        assert limits.running() == 0


def test_a_send_to_a_redis_that_stopped_answering_gives_up(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's client is the project's (its socket timeouts): a send raises however long Redis is silent.

    The scheduler renews its leases on the thread that sends; a send without
    a timeout would hang it for good. Redis, behind a proxy (tests/pgproxy.py,
    byte for byte), gets the message but its replies are dropped; the
    project's timeout is made 0.2 s. (redis-py 8 has a timeout of 5 s of its
    own by default, earlier versions none: with 8 the send gives up all the
    same, so it is the client's settings that tell its client from the
    project's.)
    """
    monkeypatch.setattr(cluster_setup, "REDIS_TIMEOUT", 0.2)
    namespace = f"hwtest-silent-{uuid.uuid4().hex[:12]}"
    proxy = Proxy(PORT)
    raised: list[BaseException] = []
    gave_up = threading.Event()

    def sending() -> None:
        try:
            send(carrier, Assignment("d1", "clustered", 0, 2.0))
        except BaseException as exc:  # noqa: BLE001 - what it raised is the test's answer
            raised.append(exc)
        gave_up.set()

    try:
        carrier = broker(f"redis://127.0.0.1:{proxy.port}/0", namespace=namespace)
        proxy.hold_replies()
        threading.Thread(target=sending, name="test-send", daemon=True).start()
        assert gave_up.wait(30), "the send still waits for Redis"
        assert len(raised) == 1 and isinstance(raised[0], redis.TimeoutError), raised
        kwargs = carrier.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.2, 0.2)
    finally:
        proxy.close()  # a send still waiting (the bug) gets its connection cut
        keys = list(redis_client.scan_iter(match=f"{namespace}:*"))
        if keys:
            redis_client.delete(*keys)


def test_a_message_whose_worker_cannot_check_its_slot_is_sent_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's first lease check raises a RedisError: the download runs all the same, once.

    The worker's own Redis client (its leases and cancels) goes through a
    proxy (tests/pgproxy.py) without redis-py's retries, which cuts every
    connection when the lease check's bytes come; Dramatiq's connection and
    the scheduler's go straight to Redis, so the message is acknowledged,
    the record stays QUEUED at the attempt it named and the scheduler keeps
    renewing its slot. Without the scheduler's sending again a message left
    unstarted, the download never ran.
    """
    proxy = Proxy(PORT)

    def through_proxy(url: str, *, one_thread: bool = False) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=proxy.port,
            socket_timeout=cluster_setup.REDIS_TIMEOUT,
            socket_connect_timeout=cluster_setup.REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=one_thread,
        )

    monkeypatch.setattr(worker_module, "redis_client", through_proxy)
    proxy.cut_at(cluster.config.limits_prefix.encode())  # the worker's first call on the limits
    try:
        with cluster.engine(workers=1) as engine:
            download = engine.submit("clustered", "ok:lost.txt")
            (record,) = engine.wait([download], timeout=5 * cluster.config.lease)
            assert proxy.cuts == 1
            assert (record.state, record.attempts) == (State.COMPLETED, 1)
            assert [e[0] for e in cluster_plugin.events()] == ["start", "end"]
            assert (cluster.dest / "lost.txt").read_bytes() == b"y" * 1000
    finally:
        proxy.close()
