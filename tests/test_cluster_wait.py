"""ClusterEngine.wait hears ends from the change feed: it returns as an end is committed, not at a read.

The records' reads are put a minute apart here, so a wait that returns
within the test's timeout was woken by the feed (the end, or a removal).

The local Redis and PostgreSQL under names of the test's own (the ``cluster``
fixture), in-process workers, the ``clustered`` source (tests/cluster_plugin.py).
"""

from __future__ import annotations

import threading
from collections.abc import Collection

import cluster_plugin
import pytest
from cluster_procs import Cluster
from waiting import wait_until

import headwater._cluster._engine as engine_module
from headwater import State
from headwater._cluster._engine import ClusterEngine
from headwater._errors import UnknownDownloadError

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]


@pytest.fixture(autouse=True)
def rare_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "POLL_HEARING", 60.0)
    monkeypatch.setattr(engine_module, "POLL", 60.0)


def first_read(engine: ClusterEngine) -> threading.Event:
    """An event set once ``engine`` has read the records' states (a wait's first read) from now on."""
    read = threading.Event()
    reads = engine.store.states

    def states(ids: Collection[str]) -> dict[str, State]:
        found = reads(ids)
        read.set()
        return found

    engine.store.states = states  # type: ignore[method-assign]
    return read


def test_a_wait_returns_when_the_feed_brings_the_end(cluster: Cluster) -> None:
    with cluster.engine(workers=2) as engine:
        gated = engine.submit("clustered", "wait:go:a.txt")
        quick = engine.submit("clustered", "ok:b.txt")
        engine.flush()
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 30, "the gated download")
        read = first_read(engine)
        waiting: list[object] = []
        waiter = threading.Thread(target=lambda: waiting.append(engine.wait([gated, quick], timeout=120)))
        waiter.start()
        assert read.wait(20)  # its first read found the gated one unended; the next is a minute away
        cluster_plugin.open_gate("go")
        waiter.join(30)  # well before its next read, or its timeout
        assert waiting, "the wait did not return"
        (ended,) = waiting
        assert [r.state for r in ended] == [State.COMPLETED, State.COMPLETED]  # type: ignore[attr-defined]


def test_a_download_removed_while_waited_for_ends_the_wait_as_unknown(cluster: Cluster) -> None:
    with cluster.engine(workers=0) as engine:
        queued = engine.submit("clustered", "ok:c.txt")  # no worker here, and none elsewhere: it stays QUEUED
        engine.flush()
        raised: list[BaseException] = []

        def wait() -> None:
            try:
                engine.wait([queued], timeout=120)
            except BaseException as exc:
                raised.append(exc)

        read = first_read(engine)
        waiter = threading.Thread(target=wait)
        waiter.start()
        assert read.wait(20)  # its first read found it QUEUED; the next is a minute away
        engine.store.delete(queued)
        waiter.join(30)  # well before its next read, or its timeout
        assert len(raised) == 1 and isinstance(raised[0], UnknownDownloadError), raised
