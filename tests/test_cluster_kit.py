"""The kit's engine fixture on a cluster: a suite that opted in runs unchanged with ``--headwater-cluster``.

The same suite as tests/test_testing_kit.py's (``OPTED_IN``), run by pytest in a
subprocess with the option naming a headwater.toml whose ``[cluster]`` is the
local Redis and PostgreSQL: its ``headwater_engine`` engines are cluster
clients whose in-process workers run the downloads, each with a schema and
Redis names of its own, removed afterwards.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from test_testing_kit import OPTED_IN

from headwater._cluster._setup import clear
from headwater._config import ClusterConfig

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]

ON_A_CLUSTER = """
def test_the_engine_is_a_cluster_engine(headwater_engine):
    assert type(headwater_engine()).__name__ == "ClusterEngine"
"""


def test_a_suite_that_opted_in_runs_on_a_cluster_and_leaves_nothing_there(
    pytester: pytest.Pytester, pg_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    base = f"hwkit_{uuid.uuid4().hex[:8]}"
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[cluster]\nbroker = "redis://127.0.0.1:6379/0"\npostgres = "{pg_url}"\n'
        f'schema = "{base}"\nprefix = "{base}"\nlease = 2.0\n'  # a new cluster starts nothing for a lease
    )
    pytester.makeconftest('pytest_plugins = ["headwater.testing"]\n')
    pytester.makepyfile(test_opted_in=OPTED_IN, test_on_a_cluster=ON_A_CLUSTER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--headwater-cluster={config}")
    result.assert_outcomes(passed=9)
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s", (base + "%",)
        ).fetchall()
    assert left == []
    assert list(redis_client.scan_iter(match=base + "*")) == []


def test_a_file_without_a_cluster_table_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    config = tmp_path / "plain.toml"
    config.write_text("")
    pytester.makeconftest('pytest_plugins = ["headwater.testing"]\n')
    pytester.makepyfile(test_opted_in=OPTED_IN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--headwater-cluster={config}")
    result.assert_outcomes(passed=6, failed=1, errors=1)  # test_engine cannot get its engine
    assert f"--headwater-cluster: {config} has no [cluster] table" in result.stdout.str()


def test_clearing_a_cluster_leaves_one_whose_prefix_starts_with_its_own(
    pg_url: str, redis_client: redis.Redis
) -> None:
    """``clear`` deletes ``<prefix>:...`` only: a cluster ``hw`` is cleared, its neighbour ``hw2`` is left."""
    base = f"hwclear_{uuid.uuid4().hex[:8]}"
    first = ClusterConfig("redis://127.0.0.1:6379/0", pg_url, schema=f"{base}_a", prefix=base)
    second = ClusterConfig("redis://127.0.0.1:6379/0", pg_url, schema=f"{base}_b", prefix=f"{base}2")
    names = ("limits:{src}:holders", "leader:{scheduler}", "headwater.msgs")  # as each part names its keys
    for config in (first, second):
        for name in names:
            redis_client.set(f"{config.prefix}:{name}", "1")
    try:
        clear(first)
        assert sorted(redis_client.scan_iter(match=f"{base}*")) == sorted(
            f"{second.prefix}:{name}".encode() for name in names
        )
    finally:
        clear(second)
    assert list(redis_client.scan_iter(match=f"{base}*")) == []


@pytest.mark.parametrize(
    ("mine", "neighbour"),
    [("*", "-2"), ("?", "2"), ("[2]", "2"), ("\\", "")],
    ids=["star", "question mark", "brackets", "backslash"],
)
def test_clearing_a_cluster_whose_prefix_holds_glob_characters_clears_its_keys_only(
    pg_url: str, redis_client: redis.Redis, mine: str, neighbour: str
) -> None:
    """The prefix is matched as the literal it is: read as a pattern, ``hw*`` would take ``hw-2``'s keys."""
    base = f"hwclear_{uuid.uuid4().hex[:8]}"
    config = ClusterConfig("redis://127.0.0.1:6379/0", pg_url, schema=f"{base}_a", prefix=base + mine)
    own, kept = f"{base}{mine}:leader:{{scheduler}}", f"{base}{neighbour}:leader:{{scheduler}}"
    redis_client.set(own, "1")
    redis_client.set(kept, "1")
    try:
        clear(config)
        assert list(redis_client.scan_iter(match=f"{base}*")) == [kept.encode()]
    finally:
        redis_client.delete(own, kept)
