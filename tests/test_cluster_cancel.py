"""A cancel on a cluster (``headwater._cluster._engine.cancel``) against a record another process changes.

The canceller reads the record, then writes it CANCELLED; a worker or the
scheduler may change the record in between. The cancel must still win, and
the record it leaves must be the one the other writer left, CANCELLED: not
the canceller's older read written back over it. Against the local
PostgreSQL and Redis (skipped, saying so, when either is not reachable).
"""

from __future__ import annotations

from collections.abc import Collection

import attrs
import pytest
import redis
from test_pg_store import store

from headwater import Record, State
from headwater._cluster._engine import cancel
from headwater._cluster._pgstore import PostgresStore, Start
from headwater._store import Swap

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]

__all__ = ["store"]  # the fixture, a store in a schema of its own


def overtaken(store: PostgresStore, read: Record, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next read of ``read``'s record answer ``read``: the canceller's read, since overtaken."""
    reads = [read]
    fetch = store.fetch

    def first_stale(ids: Collection[str]) -> dict[str, Record]:
        return {read.id: reads.pop()} if reads else fetch(ids)

    monkeypatch.setattr(store, "fetch", first_stale)


def test_a_cancel_whose_read_is_overtaken_by_a_start_keeps_the_start(
    store: PostgresStore, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add(Record("d", "a", "t-d", None, "u", State.QUEUED, 1.0, 1.0))
    store.flush()
    read_before = store.fetch(["d"])["d"]  # what the canceller reads first: QUEUED, attempts 0
    (started,) = store.start_if([Start("d", 0, "/dest", 5.0)])  # a worker starts it meanwhile
    assert started is not None
    overtaken(store, read_before, monkeypatch)
    assert cancel(store, redis_client, key_prefix + "cancel", "d") is True
    final = store.fetch(["d"])["d"]
    assert final.state is State.CANCELLED
    assert (final.attempts, final.started_at, final.dest_dir) == (1, 5.0, "/dest")  # the start's, kept


def test_a_cancel_whose_read_is_overtaken_by_a_move_down_its_chain_keeps_the_move(
    store: PostgresStore, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add(Record("d", "a", "t-d", None, "u", State.QUEUED, 1.0, 1.0, fallbacks=("b",)))
    store.flush()
    (running,) = store.start_if([Start("d", 0, "/dest", 5.0)])
    assert running is not None
    # Attempt 1 failed on a: the worker's end queues it on b.
    moved = attrs.evolve(
        running, source="b", state=State.QUEUED, updated_at=6.0, error="a: broken", fallbacks=()
    )
    assert store.commit_if([Swap.over(running, moved)]) == [True]
    overtaken(store, running, monkeypatch)  # the canceller read it while attempt 1 ran
    assert cancel(store, redis_client, key_prefix + "cancel", "d") is True
    final = store.fetch(["d"])["d"]
    assert (final.state, final.source, final.error) == (State.CANCELLED, "b", "a: broken")
