"""The cluster through real ``headwater worker`` processes, Dramatiq's Redis broker and PostgreSQL.

Every worker process also contends for the scheduler's lease, so one of
them schedules; the test submits and cancels through an engine on the cluster.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import cluster_plugin
import pytest
import redis
from child_env import isolated_env, run_headwater
from cluster_child import free_port, private_redis
from cluster_procs import Cluster
from pg_server import private_postgres
from waiting import wait_until

from headwater import RatePolicy, State
from headwater._cluster._limits import RedisLimits

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]


def test_submitted_downloads_complete_through_worker_processes(
    cluster: Cluster, redis_client: redis.Redis
) -> None:
    workers = [cluster.start_worker(threads=2) for _ in range(2)]
    with cluster.engine() as client:
        ids = [client.submit("clustered", f"ok:f{i}.txt") for i in range(8)]
        ended = client.wait(ids, timeout=30)
    assert [r.state for r in ended] == [State.COMPLETED] * 8
    assert {r.attempts for r in ended} == {1}
    assert sorted(p.name for p in cluster.dest.iterdir()) == sorted(f"f{i}.txt" for i in range(8))
    assert limits_of(cluster, redis_client).running() == 0  # every slot released
    starts = [e for e in cluster_plugin.events() if e[0] == "start"]
    assert len(starts) == 8  # each ran once
    assert {e[3] for e in starts} <= {w.pid for w in workers}


def test_a_cancel_reaches_a_download_running_in_a_worker_process_within_a_second(cluster: Cluster) -> None:
    cluster.start_worker(threads=1)
    with cluster.engine() as client:
        download = client.submit("clustered", "wait:never:c.bin")
        wait_until(lambda: events_of("part"), 30, "the download started")
        sent = time.time()
        assert client.cancel(download) is True
        wait_until(lambda: events_of("end"), 5, "the plugin ended")
        took = events_of("end")[0][4] - sent
        assert took < 1.0, f"the cancel took {took:.3f} s to reach ctx.cancelled"
        assert client.get(download).state is State.CANCELLED
        assert client.cancel(download) is False
    assert not list(cluster.dest.iterdir())


def test_a_message_is_acknowledged_only_once_its_download_has_run(
    cluster: Cluster, redis_client: redis.Redis
) -> None:
    cluster.start_worker(threads=1)
    with cluster.engine() as client:
        download = client.submit("clustered", "wait:acked:m.bin")
        wait_until(lambda: events_of("part"), 30, "the download started")
        assert unacknowledged(cluster, redis_client) == 1  # fetched, held while the download runs
        cluster_plugin.open_gate("acked")
        (ended,) = client.wait([download], timeout=30)
        assert ended.state is State.COMPLETED
        wait_until(lambda: unacknowledged(cluster, redis_client) == 0, 10, "the message was acknowledged")


def unacknowledged(cluster: Cluster, client: redis.Redis) -> int:
    """Messages Dramatiq's workers have fetched and not acknowledged (its ``__acks__`` sets)."""
    keys = client.scan_iter(match=f"{cluster.config.prefix}:__acks__.*")
    return sum(int(client.scard(key)) for key in keys)


def limits_of(cluster: Cluster, client: redis.Redis) -> RedisLimits:
    return RedisLimits(client, "clustered", RatePolicy(), prefix=cluster.config.limits_prefix)


def events_of(kind: str, attempt: int | None = None) -> list[tuple[str, str, int, int, float]]:
    return [e for e in cluster_plugin.events() if e[0] == kind and attempt in (None, e[2])]


def test_a_killed_worker_frees_its_slot_within_the_lease_and_the_download_completes_once(
    cluster: Cluster,
) -> None:
    doomed = cluster.start_worker(threads=1)
    with cluster.engine() as client:
        download = client.submit("clustered", "wait:kill:k.bin")
        wait_until(lambda: events_of("part", 1), 30, "attempt 1 began")
        assert events_of("part", 1)[0][3] == doomed.pid
        cluster.start_worker(threads=1)
        killed = time.time()
        doomed.kill()
        wait_until(lambda: events_of("start", 2), 3 * cluster.config.lease, "attempt 2 began")
        took = events_of("start", 2)[0][4] - killed
        # Its slot is free once the lease runs out; the sweep (every third of a lease) sees it.
        assert took < cluster.config.lease * 4 / 3 + 1.0, f"attempt 2 began {took:.2f} s after the kill"
        cluster_plugin.open_gate("kill")
        (ended,) = client.wait([download], timeout=30)
    assert (ended.state, ended.attempts) == (State.COMPLETED, 2)
    assert [p.name for p in cluster.dest.iterdir()] == ["k.bin"]  # no .part, no second copy
    assert (cluster.dest / "k.bin").stat().st_size == 2000  # attempt 2's whole file
    assert len(events_of("end")) == 1  # attempt 1 never ended: it was killed


def test_a_worker_killed_after_landing_before_its_end_is_written_leaves_one_file(cluster: Cluster) -> None:
    cluster.start_worker(threads=1)
    cluster.start_worker(threads=1)
    with cluster.engine() as client:
        download = client.submit("clustered", "landkill:once.bin")
        (ended,) = client.wait([download], timeout=30)
    assert ended.state is State.COMPLETED
    assert (ended.attempts, ended.file_path) == (2, str(cluster.dest / "once.bin"))
    assert [p.name for p in cluster.dest.iterdir()] == ["once.bin"]


def test_a_worker_frozen_past_its_lease_stops_itself_and_its_late_completion_is_refused(
    cluster: Cluster,
) -> None:
    frozen = cluster.start_worker(threads=2)
    with cluster.engine() as client:
        polite = client.submit("clustered", "wait:polite:a.bin")
        stubborn = client.submit("clustered", "stubborn:stubborn:b.bin")
        wait_until(lambda: len(events_of("part", 1)) == 2, 30, "both began on the first worker")
        cluster.start_worker(threads=2)
        frozen.send_signal(signal.SIGSTOP)
        wait_until(lambda: len(events_of("part", 2)) == 2, 4 * cluster.config.lease, "attempts 2 began")
        cluster_plugin.open_gate("stubborn")
        (done,) = client.wait([stubborn], timeout=30)
        assert (done.state, done.attempts) == (State.COMPLETED, 2)
        assert done.file_path == str(cluster.dest / "b.bin")
        woke = time.time()
        frozen.send_signal(signal.SIGCONT)
        # Its first renewal on waking is refused: both attempts 1 are told to stop.
        wait_until(lambda: len(events_of("end", 1)) == 2, 10, "the woken attempts ended")
        stopped = [e for e in events_of("end", 1) if e[1] == polite][0]
        assert stopped[4] - woke < cluster.config.lease, "the polite attempt did not stop itself promptly"
        assert [e[1] for e in events_of("stubborn-landed", 1)] == [stubborn]  # it landed a file late...
        assert client.get(stubborn) == done  # ...whose completion was refused
        cluster_plugin.open_gate("polite")
        (finished,) = client.wait([polite], timeout=30)
    assert (finished.state, finished.attempts) == (State.COMPLETED, 2)
    assert sorted(p.name for p in cluster.dest.iterdir()) == ["a.bin", "b.bin"]  # the late file was deleted


def test_a_source_of_concurrency_2_never_runs_more_than_2_across_3_worker_processes(cluster: Cluster) -> None:
    workers = [cluster.start_worker(threads=2) for _ in range(3)]
    with cluster.engine() as client:
        ids = [client.submit("clustered", f"nap:0.02:n{i}.bin") for i in range(40)]
        ended = client.wait(ids, timeout=60)
    assert {r.state for r in ended} == {State.COMPLETED}
    spans = {e[1]: [e[4], 0.0] for e in events_of("start")}
    for e in events_of("end"):
        spans[e[1]][1] = e[4]
    edges = sorted([(start, 1) for start, _ in spans.values()] + [(end, -1) for _, end in spans.values()])
    running = peak = 0
    for _, step in edges:  # an end at the same instant as a start counts first
        running += step
        peak = max(peak, running)
    assert peak == 2, f"at most 2 at once expected (and 2 reached), saw {peak}"
    assert len({e[3] for e in events_of("start")}) >= 2, "the downloads ran in one process only"
    assert {e[3] for e in events_of("start")} <= {w.pid for w in workers}


def test_a_postgresql_restart_mid_run_loses_no_download_and_completes_none_twice(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private server, restarted (fast: every connection and transaction in flight ended) mid-run."""
    with private_postgres() as server:
        found = Cluster(tmp_path, server.url, "restarted", lease=2.0)
        monkeypatch.setenv(cluster_plugin.DIR_ENV, str(found.events))
        try:
            for _ in range(2):
                found.start_worker(threads=2)
            with found.engine() as client:
                ids = [client.submit("clustered", f"nap:0.1:p{i}.bin") for i in range(20)]
                client.flush()
                wait_until(lambda: len(events_of("end")) >= 5, 30, "5 downloads ended")
                server.ctl("restart")
                assert len(events_of("end")) < 20, "every download ended before the restart"
                ended = client.wait(ids, timeout=90)
        finally:
            found.stop()
            keys = list(redis_client.scan_iter(match=found.config.prefix + "*"))
            if keys:
                redis_client.delete(*keys)
    assert {r.state for r in ended} == {State.COMPLETED}
    assert sorted(p.name for p in found.dest.iterdir()) == sorted(f"p{i}.bin" for i in range(20))  # once each


def peak(ids: set[str]) -> int:
    """The most downloads of ``ids`` running at once, by the plugin's own start and end log."""
    edges = sorted(
        [(e[4], 1) for e in events_of("start") if e[1] in ids]
        + [(e[4], -1) for e in events_of("end") if e[1] in ids]
    )
    running = most = 0
    for _, step in edges:  # an end at the same instant as a start counts first
        running += step
        most = max(most, running)
    return most


def test_each_source_keeps_its_own_limits_across_3_workers_and_others_run_at_full_speed(
    tmp_path: Path, pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = (
        "[sources.clustered_fast]\nconcurrency = 8\n"
        "[sources.clustered_paced]\nconcurrency = 1\ndelay = 0.3\n"
        "[sources.clustered_capped]\nconcurrency = 8\nper_minute = 4\n"
    )
    found = Cluster(tmp_path, pg_url, pg_schema, lease=2.0, policies=policies)
    monkeypatch.setenv(cluster_plugin.DIR_ENV, str(found.events))
    try:
        for _ in range(3):
            found.start_worker(threads=4)
        with found.engine() as client:
            slow = [client.submit("clustered", f"nap:0.05:s{i}.bin") for i in range(12)]
            fast = [client.submit("clustered_fast", f"nap:0.05:f{i}.bin") for i in range(24)]
            paced = [client.submit("clustered_paced", f"ok:p{i}.bin") for i in range(4)]
            capped = [client.submit("clustered_capped", f"ok:c{i}.bin") for i in range(6)]
            ended = client.wait(slow + fast + paced, timeout=60)
            assert {r.state for r in ended} == {State.COMPLETED}
            wait_until(lambda: sum(1 for e in events_of("end") if e[1] in capped) == 4, 30, "4 capped ended")
            time.sleep(1.0)  # a broken cap would start the other two at once
            assert [client.get(i).state for i in capped].count(State.QUEUED) == 2
    finally:
        found.stop()
    assert peak(set(slow)) == 2, "concurrency 2: at most 2 at once (and 2 reached)"
    assert 2 < peak(set(fast)) <= 8, "the other source ran at its own concurrency meanwhile"
    starts = sorted(e[4] for e in events_of("start") if e[1] in paced)
    ends = sorted(e[4] for e in events_of("end") if e[1] in paced)
    gaps = [start - max(end for end in ends if end <= start) for start in starts[1:]]
    assert min(gaps) >= 0.3, f"delay 0.3 s between an end and the next start: {gaps}"


def test_a_paused_source_starts_nothing_until_resumed(cluster: Cluster) -> None:
    with cluster.engine() as client:
        client.store.set_paused("clustered", True)  # as `headwater pause` records it
        cluster.start_worker(threads=2)
        ids = [client.submit("clustered", f"ok:q{i}.txt") for i in range(3)]
        client.flush()
        time.sleep(2 * cluster.config.lease)  # the scheduler runs meanwhile: a broken pause starts them
        assert events_of("start") == []
        assert {client.get(i).state for i in ids} == {State.QUEUED}
        client.store.set_paused("clustered", False)
        ended = client.wait(ids, timeout=30)
    assert {r.state for r in ended} == {State.COMPLETED}


def test_status_and_cancel_read_and_cancel_the_clusters_records(cluster: Cluster) -> None:
    with cluster.engine() as client:
        first = client.submit("clustered", "ok:s1.txt", display_name="first one")
        second = client.submit("clustered", "ok:s2.txt")
        client.flush()
    listed = run_headwater(cluster.env, "--config", str(cluster.config_file), "status", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["state"]) for r in rows] == [(second, "queued"), (first, "queued")]  # latest first
    done = run_headwater(cluster.env, "--config", str(cluster.config_file), "cancel", first[-12:])
    assert (done.returncode, done.stdout.strip()) == (0, f"{first}: cancelled"), done.stderr
    again = run_headwater(cluster.env, "--config", str(cluster.config_file), "cancel", first)
    assert (again.returncode, again.stdout.strip()) == (1, f"{first}: already cancelled")
    shown = run_headwater(cluster.env, "--config", str(cluster.config_file), "status", "--state", "cancelled")
    assert first[-12:] in shown.stdout and second[-12:] not in shown.stdout


def test_status_and_cancel_on_a_cluster_name_its_records_when_they_find_nothing(cluster: Cluster) -> None:
    config = ["--config", str(cluster.config_file)]
    empty = run_headwater(cluster.env, *config, "status")
    assert (empty.returncode, empty.stderr.strip()) == (0, "no downloads in the cluster's records")
    unknown = run_headwater(cluster.env, *config, "cancel", "nosuch")
    assert unknown.returncode == 2
    assert "no download with an id starting or ending 'nosuch' in the cluster's records" in unknown.stderr
    named = run_headwater(cluster.env, *config, "status", "nosuch")
    assert "in the cluster's records" in named.stderr and "journal" not in named.stderr


def test_get_downloads_through_the_cluster_and_prints_where_each_file_went(cluster: Cluster) -> None:
    cluster.start_worker(threads=2)
    config = ["--config", str(cluster.config_file)]
    done = run_headwater(
        cluster.env, *config, "get", "clustered", "ok:g1.txt", "ok:g2.txt", "--dest", str(cluster.dest)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"ok:g{i}.txt -> {cluster.dest / f'g{i}.txt'}" for i in (1, 2)]
    failed = run_headwater(cluster.env, *config, "get", "clustered", "fail", "--dest", str(cluster.dest))
    assert failed.returncode == 1 and "fail: failed: RuntimeError: broken" in failed.stderr


def test_a_worker_without_a_cluster_table_says_what_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text('destination = "x"\n')
    done = run_headwater(isolated_env(tmp_path / "home"), "--config", str(config), "worker")
    assert done.returncode == 2
    assert f"`headwater worker` needs a [cluster] table (broker, postgres) in {config}" in done.stderr


def test_a_redis_restart_mid_run_loses_no_download_and_completes_none_twice(
    tmp_path: Path, pg_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis keeps nothing on disk: the queue, the slots and the leader's lease are all lost at once."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: this test restarts a Redis of its own")
    port = free_port()
    for run in ("redis-1", "redis-2"):
        (tmp_path / run).mkdir()
    found = Cluster(tmp_path, pg_url, pg_schema, lease=2.0, redis_url=f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv(cluster_plugin.DIR_ENV, str(found.events))
    try:
        with private_redis(tmp_path / "redis-1", port), found.engine() as client:
            for _ in range(2):
                found.start_worker(threads=2)
            ids = [client.submit("clustered", f"nap:0.1:r{i}.bin") for i in range(20)]
            wait_until(lambda: len(events_of("end")) >= 5, 30, "5 downloads ended")
        assert len(events_of("end")) < 20, "every download ended before the restart"
        # That server was killed on leaving the block; a new, empty one takes its port.
        with private_redis(tmp_path / "redis-2", port), found.engine() as client:
            ended = client.wait(ids, timeout=90)
            found.stop()
    finally:
        found.stop()
    assert {r.state for r in ended} == {State.COMPLETED}
    assert sorted(p.name for p in found.dest.iterdir()) == sorted(f"r{i}.bin" for i in range(20))  # once each
    assert len(events_of("start")) >= 20
