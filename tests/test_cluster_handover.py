"""The hand-over of a slot: the next download of a source starts as its slot is given back, on a free thread.

A worker releases its download's slot as soon as the outcome is known and
announces it in the same step; the leading scheduler starts the slot's
next download on hearing it, without waiting for the end's commit in
PostgreSQL and the change feed; and the worker's thread takes its next
message meanwhile, the end being written by the worker's writer. The end's
write is held back here (a freeze of the source in the workers' process),
so only the announcement can start the next download, and only a free
thread can run it. A worker whose threads are all busy leaves a message to
a worker with a free thread.

The local Redis and PostgreSQL under names of the test's own, in-process
workers, the ``clustered`` source (tests/cluster_plugin.py) at concurrency 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cluster_plugin
import dramatiq
import pytest
import redis
from cluster_procs import Cluster, running
from waiting import wait_until

from headwater import RatePolicy, State
from headwater._cluster import _dispatch
from headwater._cluster._limits import RedisLimits
from headwater._cluster._message import Assignment, send

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]


@pytest.fixture
def single(
    tmp_path: Path, pg_url: str, pg_schema: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    """A cluster whose ``clustered`` source runs one download at a time."""
    found = Cluster(tmp_path, pg_url, pg_schema, lease=2.0, policies="[sources.clustered]\nconcurrency = 1\n")
    with running(found, redis_client, monkeypatch) as ready:
        yield ready


def test_the_next_download_takes_the_slot_before_the_previous_end_is_written(
    single: Cluster, redis_client: redis.Redis
) -> None:
    limits = RedisLimits(
        redis_client, "clustered", RatePolicy(), lease=2.0, prefix=single.config.limits_prefix
    )
    with single.engine(workers=2) as engine:
        first = engine.submit("clustered", "wait:first:a.txt")
        engine.flush()
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 30, "the first download")
        with engine.freeze("clustered"):  # no end (nor start) of its downloads is written meanwhile
            second = engine.submit("clustered", "ok:b.txt")
            engine.flush()
            cluster_plugin.open_gate("first")
            # The first lands and gives its slot back; its end waits for the freeze, the second does not.
            wait_until(lambda: limits.held([f"{second}:1"]) == [True], 15, "the second download's slot")
            assert engine.store.states([first]) == {first: State.RUNNING}
        ended = engine.wait([first, second], timeout=30)
    assert [(r.state, r.attempts) for r in ended] == [(State.COMPLETED, 1)] * 2
    assert (single.dest / "a.txt").exists() and (single.dest / "b.txt").exists()
    starts = [e for e in cluster_plugin.events() if e[0] == "start"]
    assert [e[1] for e in starts] == [first, second]  # each ran once


def test_a_worker_thread_takes_its_next_download_while_the_previous_end_is_being_written(
    cluster: Cluster,
) -> None:
    with cluster.engine(workers=1) as engine:
        first = engine.submit("clustered", "wait:first:a.txt")
        engine.flush()
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 30, "the first download")
        with engine.freeze("clustered"):  # the first's end is held back; the other source's writes are not
            second = engine.submit("clustered_fast", "ok:b.txt")
            cluster_plugin.open_gate("first")
            (record,) = engine.wait([second], timeout=15)  # on the one thread, while the first's end waits
            assert record.state is State.COMPLETED
            assert engine.store.states([first]) == {first: State.RUNNING}
        (ended,) = engine.wait([first], timeout=30)
    assert (ended.state, ended.attempts) == (State.COMPLETED, 1)
    assert (cluster.dest / "a.txt").exists() and (cluster.dest / "b.txt").exists()


def test_a_worker_whose_threads_are_all_busy_leaves_the_next_message_to_another_worker(
    cluster: Cluster, redis_client: redis.Redis
) -> None:
    limits = RedisLimits(
        redis_client, "clustered", RatePolicy(), lease=2.0, prefix=cluster.config.limits_prefix
    )
    with cluster.engine(workers=1) as engine:  # one thread, and it schedules
        first = engine.submit("clustered", "wait:first:a.txt")
        engine.flush()
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 30, "the first download")
        second = engine.submit("clustered", "ok:b.txt")  # concurrency 2: it gets a slot, its message is sent
        engine.flush()
        wait_until(lambda: limits.held([f"{second}:1"]) == [True], 15, "the second download's slot")
        cluster.start_worker(threads=1)  # the one free thread: a message the busy worker kept never gets here
        (record,) = engine.wait([second], timeout=20)
        assert record.state is State.COMPLETED
        assert engine.store.states([first]) == {first: State.RUNNING}
        cluster_plugin.open_gate("first")
        (ended,) = engine.wait([first], timeout=30)
    assert (ended.state, ended.attempts) == (State.COMPLETED, 1)
    starts = [e for e in cluster_plugin.events() if e[0] == "start"]
    assert sorted(e[1] for e in starts) == sorted([first, second])  # each ran once


def test_downloads_waiting_on_a_full_source_have_no_message_and_leave_the_threads_to_others(
    single: Cluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = RedisLimits(
        redis_client, "clustered", RatePolicy(), lease=2.0, prefix=single.config.limits_prefix
    )
    sent: list[tuple[str, bool]] = []  # each message the scheduler sends: its download, and its slot held

    def watched(carrier: dramatiq.Broker, assignment: Assignment) -> None:
        held = assignment.source != "clustered" or limits.held([assignment.holder]) == [True]
        sent.append((assignment.download_id, held))
        send(carrier, assignment)

    monkeypatch.setattr(_dispatch, "send", watched)
    with single.engine(workers=2) as engine:
        first = engine.submit("clustered", "wait:held:a.txt")
        engine.flush()
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 30, "the first download")
        waiting = [engine.submit("clustered", f"ok:w{i}.txt") for i in range(3)]  # its one slot is held
        other = engine.submit("clustered_fast", "ok:b.txt")
        (record,) = engine.wait([other], timeout=30)  # on the second thread: none waits on clustered's limit
        assert record.state is State.COMPLETED
        assert [i for i, _ in sent] == [first, other], "a message only for a download holding a slot"
        assert {engine.get(i).state for i in waiting} == {State.QUEUED}
        cluster_plugin.open_gate("held")
        ended = engine.wait([first, *waiting], timeout=30)
    assert {r.state for r in ended} == {State.COMPLETED}
    assert sorted(i for i, _ in sent) == sorted([first, other, *waiting])  # each sent once
    assert all(held for _, held in sent), f"sent without a slot: {sent}"
