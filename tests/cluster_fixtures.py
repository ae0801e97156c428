"""The cluster tests' fixtures (their ``pytest_plugins``): the local Redis, keys of their own, clusters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cluster_child import PORT, connect
from cluster_procs import Cluster, running


@pytest.fixture(scope="module")
def redis_client() -> redis.Redis:
    """A client of the Redis on 127.0.0.1:6379; the test is skipped, saying so, if it is not reachable."""
    found = connect()
    try:
        found.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable on 127.0.0.1:{PORT} ({exc}); the cluster keeps its state there")
    return found


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    mine = f"hwtest:{uuid.uuid4().hex}:"
    yield mine
    keys = list(redis_client.scan_iter(match=mine + "*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def cluster(
    tmp_path: Path, pg_url: str, pg_schema: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    """A cluster of the local services with its own names; its workers stopped and keys deleted after."""
    with running(Cluster(tmp_path, pg_url, pg_schema, lease=2.0), redis_client, monkeypatch) as found:
        yield found
