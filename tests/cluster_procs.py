"""Worker processes of a cluster for tests: ``headwater worker`` for real.

:class:`Cluster` holds one cluster's configuration (the local Redis and
PostgreSQL, a key prefix and a schema of its own, so that test runs never
share a queue), the ``clustered`` source installed for its processes
(tests/cluster_plugin.py), and the worker processes it started; the
``cluster`` fixture (cluster_fixtures) stops them all and deletes the cluster's keys.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cluster_plugin
import pytest
import redis
from child_env import isolated_env

from headwater import Record, State
from headwater._cluster._engine import ClusterEngine
from headwater._cluster._pgstore import PostgresStore
from headwater._config import ClusterConfig, load_config
from headwater._sources import PolicyOverride

REDIS_URL = "redis://127.0.0.1:6379/0"


class Cluster:
    """One cluster's configuration, folders and worker processes.

    ``policies`` is TOML added to its headwater.toml (``[sources.NAME]`` tables).
    """

    def __init__(
        self,
        root: Path,
        pg_url: str,
        schema: str,
        lease: float,
        redis_url: str = REDIS_URL,
        policies: str = "",
    ) -> None:
        self.config = ClusterConfig(redis_url, pg_url, schema, lease, f"hwtest-{uuid.uuid4().hex[:12]}")
        self.dest = (root / "dest").resolve()
        self.dest.mkdir()
        self.events = root / "events"
        self.events.mkdir()
        self.config_file = root / "headwater.toml"
        self.config_file.write_text(
            "[cluster]\n"
            f'broker = "{redis_url}"\n'
            f'postgres = "{pg_url}"\n'
            f'schema = "{schema}"\n'
            f"lease = {lease}\n"
            f'prefix = "{self.config.prefix}"\n' + policies
        )
        plugins = self.plugins = cluster_plugin.install(root / "plugins")
        self.env = isolated_env(root / "home")
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(plugins), *sys.path]),
            HEADWATER_LOAD_PLUGINS=",".join(cluster_plugin.NAMES),
            **{cluster_plugin.DIR_ENV: str(self.events)},
        )
        self.workers: list[subprocess.Popen[str]] = []
        #: The first line each worker wrote (it names the cluster), in the order they started.
        self.banners: list[str] = []

    def sources(self) -> dict[str, object]:
        """The installed sources, loaded in this process as a worker loads them (a module each)."""
        loaded: dict[str, object] = {}
        for name in cluster_plugin.NAMES:
            spec = importlib.util.spec_from_file_location(
                f"{name}_source", self.plugins / f"{name}_source.py"
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded

    def policies(self) -> dict[str, PolicyOverride]:
        """The policies its headwater.toml sets (``[sources.NAME]``)."""
        return {n: PolicyOverride(p) for n, p in load_config(self.config_file).policies.items()}

    def engine(self, workers: int = 0) -> ClusterEngine:
        """An engine on this cluster over its :meth:`sources`, ``workers`` worker threads in this process."""
        return ClusterEngine(self.dest, self.sources(), self.policies(), cluster=self.config, workers=workers)

    def start_worker(self, threads: int = 2) -> subprocess.Popen[str]:
        """A ``headwater worker`` process, returned once it says it runs."""
        command = [sys.executable, "-m", "headwater.cli", "--config", str(self.config_file), "worker"]
        child = subprocess.Popen(
            [*command, "--threads", str(threads), "--dest", str(self.dest)],
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.workers.append(child)
        assert child.stderr is not None
        line = child.stderr.readline()
        assert line.startswith("headwater: worker"), f"the worker did not start: {line}{child.stderr.read()}"
        self.banners.append(line)
        return child

    def stop(self) -> None:
        for child in self.workers:
            if child.poll() is None:
                with_signal(child, signal.SIGCONT)
                child.terminate()
        for child in self.workers:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stderr is not None:
                child.stderr.close()


@contextlib.contextmanager
def running(found: Cluster, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """``found`` for the block, its events folder the plugin's; then its workers stopped, its keys gone."""
    monkeypatch.setenv(cluster_plugin.DIR_ENV, str(found.events))
    try:
        yield found
    finally:
        found.stop()
        keys = list(redis_client.scan_iter(match=found.config.prefix + "*"))
        if keys:
            redis_client.delete(*keys)


def queued(store: PostgresStore, target: str, dest: Path) -> Record:
    """A new QUEUED record of ``clustered`` for ``target``, landing in ``dest``, written."""
    now = time.time()
    record = Record(
        uuid.uuid4().hex, "clustered", target, None, "clustered", State.QUEUED, now, now, dest_dir=str(dest)
    )
    store.commit([record])
    return record


def with_signal(child: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signum)
