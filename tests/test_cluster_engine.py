"""``Engine(..., cluster=...)``: an engine whose every method acts on the cluster.

The override checks need no services; the end-to-end test uses the local
Redis and PostgreSQL under names of its own (the ``cluster`` fixture), the
``clustered`` source (tests/cluster_plugin.py), and a second engine on the
cluster with worker threads in this process to run what the first submits.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import cluster_plugin
import pytest
from cluster_procs import Cluster
from waiting import wait_until

from headwater import ClusterConfig, ConfigError, Engine, ManualClock, MemoryStore, State
from headwater._cluster._engine import ClusterEngine

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]

#: Servers no test reaches: the refusals come before any connection.
NOWHERE = ClusterConfig("redis://127.0.0.1:1/0", "postgresql://nobody@127.0.0.1:1/none")

PUBLIC = sorted(n for n, v in vars(Engine).items() if not n.startswith("_") and callable(v))


def test_the_public_methods_are_those_of_the_engine() -> None:
    """What the override checks below walk through: every public method, none left out by the filter."""
    assert "submit" in PUBLIC and "wait" in PUBLIC and "freeze" in PUBLIC
    assert len(PUBLIC) == len([n for n in dir(Engine) if not n.startswith("_")])


@pytest.mark.parametrize("name", PUBLIC)
def test_the_cluster_engine_overrides_every_public_method_of_the_engine(name: str) -> None:
    """None of the local engine's code runs on a cluster engine, and each takes the engine's arguments."""
    assert name in vars(ClusterEngine), f"ClusterEngine.{name} is the local engine's"
    ours, theirs = inspect.signature(getattr(ClusterEngine, name)), inspect.signature(getattr(Engine, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


def test_an_engine_without_a_cluster_is_the_local_one(tmp_path: Path) -> None:
    with Engine(tmp_path, {"clustered": cluster_plugin}, cluster=None) as engine:
        assert type(engine) is Engine


@pytest.mark.parametrize(
    "local",
    [
        {"idle_timeout": 2.0},
        {"clock": ManualClock()},
        {"store": MemoryStore()},
        {"hold": True},
    ],
    ids=lambda given: next(iter(given)),
)
def test_what_means_nothing_on_a_cluster_is_refused(tmp_path: Path, local: dict[str, object]) -> None:
    (name,) = local
    with pytest.raises(ConfigError, match=f"takes no {name}="):
        Engine(tmp_path, {"clustered": cluster_plugin}, cluster=NOWHERE, **local)  # type: ignore[arg-type]


def test_without_the_cluster_extra_the_error_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "headwater._cluster._engine")
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    with pytest.raises(ImportError, match=r"needs the cluster extra \(redis is missing\): pip install"):
        Engine(tmp_path, {"clustered": cluster_plugin}, cluster=NOWHERE)


def test_a_subclass_of_the_local_engine_takes_no_cluster(tmp_path: Path) -> None:
    class Local(Engine):
        pass

    with pytest.raises(TypeError, match="Local runs in one process"):
        Local(tmp_path, {"clustered": cluster_plugin}, cluster=NOWHERE)


def test_an_engine_on_a_cluster_submits_reads_cancels_and_pauses_there(cluster: Cluster) -> None:
    engine = Engine(cluster.dest, cluster.sources(), cluster.policies(), cluster=cluster.config)
    with engine, cluster.engine(workers=2) as runner:
        assert isinstance(engine, ClusterEngine)
        assert [s.name for s in engine.sources()] == sorted(cluster_plugin.NAMES)
        done = engine.submit("clustered", "ok:a.txt")
        (record,) = engine.wait([done], timeout=60)
        assert (record.state, record.attempts) == (State.COMPLETED, 1)
        assert (cluster.dest / "a.txt").read_bytes() == b"y" * 1000
        assert runner.get(done) == record  # one set of records: the cluster's
        held = engine.submit("clustered", "wait:never:b.txt")
        engine.flush()
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 30, "the gated download")
        assert engine.cancel(held) is True  # running on the other engine's worker thread
        (cancelled,) = engine.wait([held], timeout=30)
        assert cancelled.state is State.CANCELLED
        assert [r.id for r in engine.records("clustered")] == [done, held]
        assert [r.id for r in runner.page(states=[State.CANCELLED])] == [held]
        engine.pause("clustered")
        assert runner.paused() == ["clustered"]
        assert engine.remove(done).state is State.COMPLETED
        assert engine.match(done) == []
        assert engine.worker_stats() == {}  # it runs nothing itself
    assert engine.close() == []  # closed twice: harmless
