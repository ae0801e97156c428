"""The cluster's worker side against the real Redis and PostgreSQL: one assignment, run by ClusterWorker.

The test plays the scheduler: it writes the QUEUED record, takes the slot
(``RedisLimits.acquire``) and hands the worker the assignment, as a message
would. The source is ``clustered`` (tests/cluster_plugin.py), steered by
its target and logging its starts and ends.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import cluster_plugin
import pytest
import redis
from cluster_child import PORT
from cluster_procs import queued
from pgproxy import Proxy
from waiting import wait_until

from headwater import (
    DownloadCancelled,
    DownloadContext,
    Job,
    PolicyOverride,
    RatePolicy,
    Record,
    State,
    Tried,
    hookimpl,
)
from headwater._cluster._cancels import announce
from headwater._cluster._limits import RedisLimits
from headwater._cluster._message import Assignment
from headwater._cluster._pgstore import PostgresStore
from headwater._cluster._runner import ClusterWorker
from headwater._cluster._setup import redis_client as redis_client_of
from headwater._sources import load_sources
from headwater._store import Swap

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]

LEASE = 3.0


@pytest.fixture
def events_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "events"
    folder.mkdir()
    monkeypatch.setenv(cluster_plugin.DIR_ENV, str(folder))
    return folder


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "dest"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
def store(pg_url: str, pg_schema: str) -> Iterator[PostgresStore]:
    found = PostgresStore(pg_url, schema=pg_schema)
    yield found
    found.close()


class Backup:
    """A second source, for fallback chains: lands ``backup-<target>``."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        path = ctx.dest_dir / f"backup-{job.target}"
        path.write_text("from the backup")
        return path


def make_worker(
    pg_url: str,
    pg_schema: str,
    client: redis.Redis,
    prefix: str,
    dest: Path,
    poll: float = 1.0,
    policies: dict[str, PolicyOverride] | None = None,
    plugins: dict[str, object] | None = None,
) -> ClusterWorker:
    """A worker of ``clustered`` and ``backup`` (or of ``plugins``)."""
    plugins = {"clustered": cluster_plugin, "backup": Backup()} if plugins is None else plugins
    return ClusterWorker(
        dest,
        store=PostgresStore(pg_url, schema=pg_schema),
        client=client,
        registry=load_sources(plugins=plugins, policies=policies),
        prefix=prefix,
        channel=prefix + "cancel",
        poll=poll,
    )


@pytest.fixture
def worker(
    pg_url: str, pg_schema: str, redis_client: redis.Redis, key_prefix: str, dest: Path, events_dir: Path
) -> Iterator[ClusterWorker]:
    found = make_worker(pg_url, pg_schema, redis_client, key_prefix, dest)
    yield found
    found.close()


def granted(client: redis.Redis, prefix: str, record: Record, lease: float = LEASE) -> Assignment:
    """The assignment of ``record``'s next attempt, its slot taken as a scheduler takes it."""
    assignment = Assignment(record.id, record.source, record.attempts, lease)
    limits = RedisLimits(
        client, record.source, RatePolicy(concurrency=4), lease=lease, settle=0.0, prefix=prefix
    )
    verdict = limits.acquire(assignment.holder, time.monotonic())
    assert verdict.granted, verdict
    return assignment


def slots(client: redis.Redis, prefix: str) -> int:
    return RedisLimits(client, "clustered", RatePolicy(), prefix=prefix).running()


def current(store: PostgresStore, record: Record) -> Record:
    return store.fetch([record.id])[record.id]


def wait_for_event(kind: str, count: int = 1, timeout: float = 10.0) -> None:
    wait_until(
        lambda: sum(1 for e in cluster_plugin.events() if e[0] == kind) >= count,
        timeout,
        lambda: f"no {kind!r} event: {cluster_plugin.events()}",
    )


def test_an_assignment_runs_to_completed_and_frees_its_slot(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "ok:a.txt", dest)
    assignment = granted(redis_client, key_prefix, record)
    assert slots(redis_client, key_prefix) == 1
    ended = worker.run(assignment)
    assert ended is not None and ended.state is State.COMPLETED
    row = current(store, record)
    assert (row.state, row.attempts, row.file_path) == (State.COMPLETED, 1, str(dest / "a.txt"))
    assert (dest / "a.txt").read_bytes() == b"y" * 1000
    assert not list(dest.glob("*.part"))
    assert slots(redis_client, key_prefix) == 0
    assert worker.run(assignment) is None  # the same message again (redelivered): stale, nothing runs
    assert [e[0] for e in cluster_plugin.events()] == ["start", "end"]


def test_a_message_whose_slot_lease_is_gone_does_not_run(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "ok:b.txt", dest)
    assignment = Assignment(record.id, record.source, record.attempts, LEASE)  # no slot taken
    assert worker.run(assignment) is None
    assert current(store, record).state is State.QUEUED
    assert cluster_plugin.events() == []


def test_describe_writes_the_running_record(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "describe:c.txt", dest)
    ended = worker.run(granted(redis_client, key_prefix, record))
    assert ended is not None and ended.state is State.COMPLETED
    row = current(store, record)
    assert (row.display_name, dict(row.extra)) == ("described c.txt", {"color": "red"})


def test_a_transient_failure_goes_back_to_queued_with_a_retry_counted(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "flaky", dest)
    worker.run(granted(redis_client, key_prefix, record))
    row = current(store, record)
    assert (row.state, row.attempts, row.retries) == (State.QUEUED, 1, 1)
    assert row.error == "TransientError: flaky: try again"
    assert slots(redis_client, key_prefix) == 0


def test_a_retry_after_pauses_the_source_in_redis(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "pause:30", dest)
    worker.run(granted(redis_client, key_prefix, record))
    row = current(store, record)
    assert (row.state, row.retries) == (State.QUEUED, 0)
    limits = RedisLimits(redis_client, "clustered", RatePolicy(), settle=0.0, prefix=key_prefix)
    verdict = limits.acquire("other:1", time.monotonic())
    assert (verdict.granted, verdict.reason) == (False, "paused")
    assert verdict.at - time.monotonic() > 25


def test_a_failed_download_moves_down_its_chain_and_the_next_source_completes_it(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = attrs.evolve(queued(store, "fail", dest), fallbacks=("backup",))
    store.commit([record])
    worker.run(granted(redis_client, key_prefix, record))
    moved = current(store, record)
    assert (moved.state, moved.source, moved.fallbacks, moved.attempts) == (State.QUEUED, "backup", (), 1)
    assert moved.tried == (Tried("clustered", "RuntimeError: broken"),)
    ended = worker.run(granted(redis_client, key_prefix, moved))
    assert ended is not None and (ended.state, ended.attempts) == (State.COMPLETED, 2)
    assert (dest / "backup-fail").read_text() == "from the backup"


def test_a_failed_download_with_no_fallback_left_fails_naming_each_source(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "fail", dest)
    ended = worker.run(granted(redis_client, key_prefix, record))
    assert ended is not None and (ended.state, ended.error) == (State.FAILED, "RuntimeError: broken")
    assert ended.tried == (Tried("clustered", "RuntimeError: broken"),)


def test_a_download_past_its_timeout_fails_at_once_and_its_late_end_is_refused(
    pg_url: str,
    pg_schema: str,
    store: PostgresStore,
    redis_client: redis.Redis,
    key_prefix: str,
    dest: Path,
    events_dir: Path,
) -> None:
    timed = {"clustered": PolicyOverride({"timeout": 0.3})}
    worker = make_worker(pg_url, pg_schema, redis_client, key_prefix, dest, policies=timed)
    try:
        record = queued(store, "stubborn:late:t.bin", dest)  # it ignores the cancel the timeout sets
        thread, result = run_in_thread(worker, granted(redis_client, key_prefix, record))
        wait_until_state(store, record, State.FAILED)
        row = current(store, record)
        assert (row.error, row.tried) == (
            "timed out after 0.3 s",
            (Tried("clustered", "timed out after 0.3 s"),),
        )
        assert slots(redis_client, key_prefix) == 1  # its slot is held until download_impl returns
        cluster_plugin.open_gate("late")
        thread.join(10)
    finally:
        worker.close()
    assert result == [None]  # the attempt's own end was refused
    assert current(store, record).state is State.FAILED
    assert not list(dest.iterdir())  # the file it landed late was deleted
    assert slots(redis_client, key_prefix) == 0


def wait_until_state(store: PostgresStore, record: Record, state: State, timeout: float = 10.0) -> None:
    wait_until(
        lambda: current(store, record).state is state,
        timeout,
        f"download {record.id} {state.value}",
        step=0.01,
    )


def test_retry_after_pauses_are_counted_across_attempts_and_workers(
    pg_url: str,
    pg_schema: str,
    store: PostgresStore,
    redis_client: redis.Redis,
    key_prefix: str,
    dest: Path,
    events_dir: Path,
) -> None:
    bounded = {"clustered": PolicyOverride({"max_retry_after_rounds": 1})}
    first, second = (
        make_worker(pg_url, pg_schema, redis_client, key_prefix, dest, policies=bounded) for _ in range(2)
    )
    try:
        record = queued(store, "pause:0.001", dest)
        first.run(granted(redis_client, key_prefix, record))
        again = current(store, record)
        assert (again.state, again.retries) == (State.QUEUED, 0)  # one pause waited out: no retry used
        time.sleep(0.01)  # the pause of a millisecond is over
        ended = second.run(granted(redis_client, key_prefix, again))  # another worker, the next attempt
    finally:
        first.close()
        second.close()
    assert ended is not None and ended.state is State.FAILED
    assert ended.error == (
        "RetryAfter: busy: come back later; retry after 0.001 s; asked to retry later 2 times over 0.001 s; "
        "giving up (max_retry_after_rounds is 1)"
    )


def run_in_thread(
    worker: ClusterWorker, assignment: Assignment
) -> tuple[threading.Thread, list[Record | None]]:
    result: list[Record | None] = []
    thread = threading.Thread(target=lambda: result.append(worker.run(assignment)))
    thread.start()
    return thread, result


def test_a_cancel_reaches_the_running_download_through_the_channel_within_a_second(
    worker: ClusterWorker, store: PostgresStore, redis_client: redis.Redis, key_prefix: str, dest: Path
) -> None:
    record = queued(store, "wait:never:d.bin", dest)
    thread, result = run_in_thread(worker, granted(redis_client, key_prefix, record))
    wait_for_event("part")
    running = current(store, record)
    assert running.state is State.RUNNING
    cancel(store, running)
    sent = time.monotonic()
    announce(redis_client, record.id, key_prefix + "cancel")
    wait_for_event("end", timeout=5.0)
    took = time.monotonic() - sent
    thread.join(10)
    assert took < 0.5, f"the cancel took {took:.3f} s to reach the download"  # the poll is 1 s
    assert result == [None]  # its end was refused: the cancel won
    assert current(store, record).state is State.CANCELLED
    assert not list(dest.iterdir())  # the plugin removed its .part on the cancel
    assert slots(redis_client, key_prefix) == 0


def cancel(store: PostgresStore, running: Record) -> None:
    """Cancel ``running`` in the records, as a canceller does before it announces it."""
    now = time.time()
    gone = attrs.evolve(running, state=State.CANCELLED, finished_at=now, updated_at=now)
    assert store.commit_if([Swap.cancel(gone)]) == [True]


def test_a_cancel_whose_announcement_is_lost_is_found_by_polling(
    pg_url: str,
    pg_schema: str,
    store: PostgresStore,
    redis_client: redis.Redis,
    key_prefix: str,
    dest: Path,
    events_dir: Path,
) -> None:
    worker = make_worker(pg_url, pg_schema, redis_client, key_prefix, dest, poll=0.2)
    try:
        record = queued(store, "wait:never:e.bin", dest)
        thread, result = run_in_thread(worker, granted(redis_client, key_prefix, record))
        wait_for_event("part")
        cancel(store, current(store, record))  # and no announcement
        sent = time.monotonic()
        wait_for_event("end", timeout=5.0)
        took = time.monotonic() - sent
        thread.join(10)
    finally:
        worker.close()
    assert took < 1.0, f"polling took {took:.3f} s to stop the download"
    assert result == [None]
    assert current(store, record).state is State.CANCELLED


class Stoppable:
    """A source whose download waits for its ``ctx.cancelled``; the test waits on its events."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.stopped_at = math.nan  # time.monotonic() when ctx.cancelled was seen

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        self.started.set()
        ctx.cancelled.wait(60)
        self.stopped_at = time.monotonic()
        self.stopped.set()
        raise DownloadCancelled("stopped")


@pytest.mark.parametrize("outage", ["refusing", "silent"])
def test_a_cancel_reaches_a_running_download_within_a_second_while_redis_cannot_be_reached(
    outage: str,
    pg_url: str,
    pg_schema: str,
    store: PostgresStore,
    redis_client: redis.Redis,
    key_prefix: str,
    dest: Path,
) -> None:
    """The check of the records (the channel's fallback) keeps its period whatever Redis does.

    The worker's Redis (the project's client: no retries, 5 s timeouts) is
    behind a proxy. Once the download runs, the proxy cuts every connection
    and then refuses new ones (Redis down), or accepts them and never
    answers (Redis hung, or a network dropping packets: each call waits out
    the 5 s). The cancel is written to the records alone. Its lease (60 s)
    outlasts the test: only the check can stop the download.
    """
    proxy = Proxy(PORT)
    client = redis_client_of(f"redis://127.0.0.1:{proxy.port}/0")
    plugin = Stoppable()
    worker = make_worker(pg_url, pg_schema, client, key_prefix, dest, plugins={"clustered": plugin})
    try:
        record = queued(store, "x.bin", dest)
        thread, result = run_in_thread(worker, granted(redis_client, key_prefix, record, lease=60.0))
        assert plugin.started.wait(10), "the download did not start"
        if outage == "refusing":
            proxy.close()
        else:
            before = proxy.accepted
            proxy.cut(hold=True)
            # The listener subscribes again: from now on it waits for an answer that never comes.
            wait_until(lambda: proxy.accepted > before, 10, "the listener did not connect again")
        cancel(store, current(store, record))  # and no announcement: Redis is out
        sent = time.monotonic()
        assert plugin.stopped.wait(10), "the cancel never reached the download"
        took = plugin.stopped_at - sent
        proxy.cut()  # Redis is back: the worker gives the slot back at once
        thread.join(10)
    finally:
        worker.close()
        proxy.close()
        client.close()
    assert took < 2.0, f"the cancel took {took:.3f} s to reach the download"  # the check runs every 1 s
    assert result == [None]
    assert current(store, record).state is State.CANCELLED


def test_a_lost_lease_stops_the_download_and_its_late_completion_is_refused(
    worker: ClusterWorker,
    store: PostgresStore,
    redis_client: redis.Redis,
    key_prefix: str,
    dest: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease is lost (its key gone, as after an expiry); the scheduler starts attempt 2 meanwhile."""
    record = queued(store, "stubborn:late:f.bin", dest)
    assignment = granted(redis_client, key_prefix, record, lease=0.9)
    thread, result = run_in_thread(worker, assignment)
    wait_for_event("part")
    redis_client.zrem(f"{key_prefix}{{clustered}}:holders", assignment.holder)
    wait_until(
        lambda: f"lease {assignment.holder} lost" in caplog.text,
        5,
        "the worker did not notice its lease was lost",
        step=0.01,
    )
    # The scheduler saw the lease gone: attempt 1 goes back to QUEUED, attempt 2 starts elsewhere.
    running = current(store, record)
    again = attrs.evolve(running, state=State.QUEUED)
    assert store.commit_if([Swap.over(running, again)]) == [True]
    second = attrs.evolve(again, state=State.RUNNING, attempts=2)
    assert store.commit_if([Swap.over(again, second)]) == [True]
    cluster_plugin.open_gate("late")  # the stubborn attempt 1 lands its file anyway
    thread.join(10)
    assert result == [None]  # refused: attempt 2 holds the record
    row = current(store, record)
    assert (row.state, row.attempts) == (State.RUNNING, 2)
    assert not list(dest.iterdir())  # the late file was deleted, no partial file at a final path
    assert [e[0] for e in cluster_plugin.events()] == ["start", "part", "stubborn-landed", "end"]


@pytest.fixture
def two_workers(
    pg_url: str, pg_schema: str, redis_client: redis.Redis, key_prefix: str, dest: Path, events_dir: Path
) -> Iterator[tuple[ClusterWorker, ClusterWorker]]:
    pair = (
        make_worker(pg_url, pg_schema, redis_client, key_prefix, dest),
        make_worker(pg_url, pg_schema, redis_client, key_prefix, dest),
    )
    yield pair
    for worker in pair:
        worker.close()


def test_a_second_copy_of_a_running_attempts_message_leaves_its_slot_held(
    two_workers: tuple[ClusterWorker, ClusterWorker],
    store: PostgresStore,
    redis_client: redis.Redis,
    key_prefix: str,
    dest: Path,
) -> None:
    first, second = two_workers
    record = queued(store, "wait:dup:e.bin", dest)
    assignment = granted(redis_client, key_prefix, record)
    ended: list[object] = []
    running = threading.Thread(target=lambda: ended.append(first.run(assignment)))
    running.start()
    try:
        wait_for_event("part")
        assert current(store, record).state is State.RUNNING
        assert second.run(assignment) is None  # the copy: stale, the attempt runs on the first worker
        assert slots(redis_client, key_prefix) == 1, "the copy gave back the running attempt's slot"
    finally:
        cluster_plugin.open_gate("dup")
        running.join(10)
    (record_ended,) = ended
    assert getattr(record_ended, "state", None) is State.COMPLETED
    assert slots(redis_client, key_prefix) == 0
