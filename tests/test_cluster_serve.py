"""`headwater serve` on a cluster: the API over the cluster's records, the downloads run by its workers.

The local Redis and PostgreSQL, a key prefix and a schema of the test's own
(the ``cluster`` fixture); the source is ``clustered`` (tests/cluster_plugin.py),
steered by its target and logging its starts and ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cluster_plugin
import pytest
import redis
from cluster_procs import Cluster, running
from served import TOKEN
from waiting import wait_until

from headwater import ServerError, State, UnknownDownloadError
from headwater._serve._state import running_server
from headwater._serve.run import BackgroundServer
from headwater.client import Client

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]

PASSWORD = "Sw0rdfish-n0t-to-be-seen"


def started(kind: str, download_id: str) -> bool:
    return any(e[0] == kind and e[1] == download_id for e in cluster_plugin.events())


def test_a_served_cluster_client_runs_submits_on_the_workers_and_streams_their_ends(cluster: Cluster) -> None:
    with (
        cluster.engine(workers=2) as engine,
        BackgroundServer(engine, TOKEN) as server,
        Client(server.url, TOKEN, timeout=10) as client,
    ):
        done = client.submit("clustered", "ok:a.txt")
        held = client.submit("clustered", "wait:g1:b.txt")
        (record,) = client.wait([done], timeout=30)  # the end comes through the server's event stream
        assert (record.state, record.attempts) == (State.COMPLETED, 1)
        assert (cluster.dest / "a.txt").read_bytes() == b"y" * 1000
        wait_until(lambda: started("part", held), 30, "the held download began")
        assert client.get(held).state is State.RUNNING
        assert client.cancel(held) is True
        (record,) = client.wait([held], timeout=10)  # CANCELLED at once; the plugin stops after
        assert record.state is State.CANCELLED
        wait_until(lambda: started("end", held), 10, "the cancelled download stopped")
        assert not list(cluster.dest.glob("*.part"))
        assert [r.id for r in client.records()] == [done, held]
        assert [r.id for r in client.match(held[-6:])] == [held]  # named by the end of its id
        assert [r.id for r in client.match(done[:4])] == [held, done]  # time-first ids: latest first
        assert [r.id for r in client.match(done[:4], limit=1)] == [held]
        assert [r.id for r in client.match(done)] == [done]
        assert client.match("no-such-id") == []
        assert [r.id for r in client.page(states=[State.CANCELLED])[0]] == [held]

        client.pause("clustered")
        assert client.paused() == ["clustered"] == engine.store.paused()
        with pytest.raises(ServerError) as refused:
            client.set_policy("clustered", {"concurrency": 1})
        assert (refused.value.status, refused.value.code) == (409, "policy_fixed")

        assert client.remove(done).id == done
        with pytest.raises(UnknownDownloadError):
            client.get(done)
        assert engine.store.get(done) is None


def test_headwater_serve_on_a_cluster_runs_on_its_workers_and_never_shows_the_password(
    tmp_path: Path, pg_url: str, pg_schema: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_url = pg_url.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth: taken, not checked
    assert PASSWORD in secret_url
    with running(Cluster(tmp_path, secret_url, pg_schema, lease=2.0), redis_client, monkeypatch) as cluster:
        cluster.start_worker()
        env = {**cluster.env, "HEADWATER_HOME": str(tmp_path / "hw")}
        command = [sys.executable, "-m", "headwater.cli", "--config", str(cluster.config_file), "serve"]
        server = subprocess.Popen(
            [*command, "--port", "0", "--dest", str(cluster.dest)], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            journal = tmp_path / "hw" / "journal.sqlite3"
            wait_until(
                lambda: running_server(journal) is not None or server.poll() is not None, 60, "serving"
            )
            state = running_server(journal)
            assert state is not None, f"headwater serve exited: {server.communicate()}"
            with Client(state.url, state.token(), timeout=10) as client:
                download = client.submit("clustered", "ok:c.txt")
                (record,) = client.wait([download], timeout=30)
            assert record.state is State.COMPLETED
            assert [e[3] for e in cluster_plugin.events() if e[0] == "start"] == [cluster.workers[0].pid]
        finally:
            server.send_signal(signal.SIGTERM)
            _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    shown = "postgresql://postgres:***@127.0.0.1:5432/test"
    assert f"cluster: broker redis://127.0.0.1:6379/0, records {shown}" in err, err
    assert shown in cluster.banners[0]
    for said in (err, *cluster.banners):
        assert PASSWORD not in said


def test_a_cluster_client_reads_changes_from_the_feed(cluster: Cluster) -> None:
    """A subscription hears a submit and a cancel written by another client, as an engine's would."""
    with cluster.engine() as reader, cluster.engine() as writer:
        heard = reader.subscribe()
        download = writer.submit("clustered", "ok:d.txt")
        writer.cancel(download)  # no worker runs: it stays QUEUED until then
        states: list[State] = []
        deadline = time.monotonic() + 10
        while State.CANCELLED not in states:
            assert time.monotonic() < deadline, f"heard only {states}"
            states += [c.record.state for c in heard.get(timeout=0.5) if c.record.id == download]
        assert states == [State.QUEUED, State.CANCELLED]
