"""``headwater clean`` and ``headwater resume`` with a ``[cluster]`` in headwater.toml.

``clean`` removes the ended downloads from the cluster's records (not this
host's journal); ``resume`` refuses, saying that the cluster's scheduler
resumes by itself. The local Redis and PostgreSQL under names of the test's
own (the ``cluster`` fixture), the ``clustered`` source (tests/cluster_plugin.py).
"""

from __future__ import annotations

import json

from child_env import run_headwater
from cluster_procs import Cluster

from headwater import Engine, State

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]


def local(cluster: Cluster, *args: str) -> list[dict[str, object]]:
    """``headwater ARGS --json`` on this host's journal (a configuration with no [cluster]); its records."""
    plain = cluster.config_file.with_name("local.toml")
    plain.write_text("")
    done = run_headwater(cluster.env, "--config", str(plain), *args, "--json")
    assert done.returncode == 0, done.stderr
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found


def test_clean_removes_the_ended_downloads_from_the_clusters_records(cluster: Cluster) -> None:
    (here,) = local(cluster, "get", "clustered", "ok:here.txt", "--dest", str(cluster.dest))
    with cluster.engine(workers=1) as engine:
        done = engine.submit("clustered", "ok:a.txt")
        failed = engine.submit("clustered", "fail")
        engine.wait([done, failed], timeout=60)
    with cluster.engine() as submitter:  # no worker runs anywhere now: it stays QUEUED, and clean leaves it
        queued = submitter.submit("clustered", "ok:b.txt")
    config = ["--config", str(cluster.config_file)]
    cleaned = run_headwater(cluster.env, *config, "clean", "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert sorted(r["id"] for r in json.loads(cleaned.stdout)) == sorted([done, failed])
    with Engine(cluster.dest, cluster.sources(), cluster=cluster.config) as reader:
        assert [(r.id, r.state) for r in reader.records()] == [(queued, State.QUEUED)]
    again = run_headwater(cluster.env, *config, "clean")
    assert (again.returncode, again.stdout) == (0, "removed 0 ended download(s) from the cluster's records\n")
    assert (cluster.dest / "a.txt").exists()  # files stay
    assert [r["id"] for r in local(cluster, "status")] == [here["id"]]  # this host's journal: untouched


def test_resume_on_a_cluster_says_that_its_scheduler_resumes_by_itself(cluster: Cluster) -> None:
    done = run_headwater(cluster.env, "--config", str(cluster.config_file), "resume")
    assert done.returncode == 2
    assert "nothing for `headwater resume` to do on the cluster" in done.stderr
    assert "its scheduler runs every unfinished download" in done.stderr
