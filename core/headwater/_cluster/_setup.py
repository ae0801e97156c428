"""What every process of a cluster builds from its configuration: the Redis client.

And, for tests, a cluster of its own inside a shared one (:func:`isolated`) and
its removal (:func:`clear`).
"""

from __future__ import annotations

import re
import secrets

import attrs
import psycopg
import redis
from psycopg import sql

from headwater._config import ClusterConfig

#: Seconds a call to Redis waits at most.
REDIS_TIMEOUT = 5.0


def redis_client(url: str, *, one_thread: bool = False) -> redis.Redis:
    """A redis-py client of ``url`` whose calls wait at most :data:`REDIS_TIMEOUT` seconds.

    ``one_thread``: for a client whose calls come from one thread at a time
    (pub/sub aside): it keeps one connection instead of a pool, which
    spares every call the pool's bookkeeping (10 to 15 µs of CPU); calls
    from several threads would queue on it.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        single_connection_client=one_thread,
    )


def isolated(config: ClusterConfig) -> ClusterConfig:
    """``config`` with a schema and Redis names no other cluster uses (random), on the same servers."""
    token = secrets.token_hex(6)
    return attrs.evolve(config, schema=f"{config.schema}_{token}", prefix=f"{config.prefix}-{token}")


def clear(config: ClusterConfig) -> None:
    """Delete the cluster ``config`` names: its schema (every record) and its Redis keys.

    Its keys are those under ``<prefix>:`` (the limits, the leader lease,
    Dramatiq's namespace), so a cluster whose prefix merely starts with
    this one's (``hw2`` beside ``hw``) keeps its keys; the prefix is
    matched as it is written, glob characters too (``hw*`` clears neither
    ``hw2`` nor ``hw-2``). For tests of an
    :func:`isolated` cluster; raises what psycopg and redis-py raise.
    """
    with psycopg.connect(config.postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(config.schema)))
    client = redis_client(config.broker)
    try:
        keys = list(client.scan_iter(match=f"{_glob_literal(config.prefix)}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _glob_literal(text: str) -> str:
    """``text`` as a Redis glob pattern (SCAN's MATCH) matching ``text`` alone: ``\\ * ? [ ]`` escaped."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
