"""The stateful suite (tests/test_engine_stateful.py) on the cluster: its rules and invariants as they are.

Only the fixture differs: the machine's engine is a
:class:`~headwater._cluster._engine.ClusterEngine` on the local Redis and
PostgreSQL, a key prefix and a schema of its own for each example (deleted
after it), running the downloads on in-process cluster workers (Dramatiq's
worker on the Redis broker, the scheduler holding the leader lease, the
records in PostgreSQL, every start and end a conditional write). A
``restart`` closes that engine (its workers stop, its scheduler gives its
lease up) and opens another on the same records, which takes over as a new
scheduler would.

What differs, and why (docs/regression-suite.md, *The cluster's profile*):

- Time: the cluster's limits are timed by the Redis server's clock, which no
  test can move, so there is no ManualClock. The plugins' events are timed on
  :class:`ScaledClock` (a test second is 1/``SCALE`` of a real one), and the
  cluster gets the same policies with every delay and backoff divided by
  ``SCALE``, a Retry-After's pause too (:class:`ScaledSource`): the
  invariants' figures (a delay of 20 s, a pause of 45 s) are checked as they
  are, in test seconds. The ``advance`` rule is left out (real time passes
  by itself); ``drain`` and ``another_source_frozen`` move nothing.
- ``freeze``: :meth:`ClusterEngine.freeze` holds this process's workers and
  scheduler, which are all the workers there are here.
- ``disk_fills`` is left out: no test fills PostgreSQL's disk. Its
  analogue is ``postgres_is_cut``: every PostgreSQL connection of the engine
  (its store's pool and session, its change feed) goes through a
  :class:`~pgproxy.Proxy`, which the rule cuts and holds for a while (every
  connection breaks, new ones get no answer) while it releases some held
  downloads, then lets through again. The store tries its reads and writes
  again meanwhile (for up to 10 s; a cut lasts at most 1.5 s); the
  invariants are checked as they are once it is back.
- ``threads_are_bounded`` is left out: a cluster worker has a fixed pool of
  threads (``WORKERS``), not a thread per running download; the
  concurrency invariant still checks every source's peak from the plugins.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import attrs
import dramatiq.brokers.redis
import dramatiq.common
import psycopg_pool.base
import pytest
import redis.backoff
from cluster_child import connect
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from instrumented import InstrumentedSource
from pg_server import PG_URL, drop, reachable
from pgproxy import Proxy
from test_engine_stateful import HELD, POLICIES, EngineMachine, logged

from headwater import DownloadContext, Job, RetryAfter, hookimpl
from headwater._cluster._engine import ClusterEngine
from headwater._config import ClusterConfig

SCALE = 100.0  # test seconds per real second
WORKERS = 8  # worker threads: more than the sources' concurrency together (7), so a slot never waits
LEASE = 5.0
REDIS_URL = "redis://127.0.0.1:6379/0"


class ScaledClock:
    """Test time: ``SCALE`` times the monotonic clock. It cannot be moved: :meth:`advance` does nothing."""

    def now(self) -> float:
        return time.monotonic() * SCALE

    def advance(self, seconds: float) -> None:
        """Real time passes by itself."""


class ScaledSource(InstrumentedSource):
    """An instrumented source whose Retry-After reaches the cluster in real seconds (events: test time)."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        try:
            return super().download_impl(job, ctx)
        except RetryAfter as exc:
            raise RetryAfter(exc.seconds / SCALE, str(exc)) from exc


def scaled_policies() -> dict[str, object]:
    return {
        name: attrs.evolve(p, delay=p.delay / SCALE, backoff=p.backoff / SCALE)
        for name, p in POLICIES.items()
    }


def services_absent() -> str | None:
    """Why the cluster cannot run here (a service unreachable), or None."""
    why = reachable(PG_URL)
    if why is not None:
        return f"PostgreSQL is not reachable on 127.0.0.1:5432 ({why}); the cluster keeps its records there"
    try:
        connect().ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the reason to skip
        return f"Redis is not reachable on 127.0.0.1:6379 ({exc}); the cluster keeps its limits there"
    return None


class ClusterMachine(EngineMachine):
    """The engine machine whose engine is a cluster (see the module)."""

    source = ScaledSource
    drain_within = 60.0

    def make_clock(self) -> ScaledClock:
        return ScaledClock()

    def open_engine(self) -> ClusterEngine:
        if not hasattr(self, "config"):
            token = uuid.uuid4().hex[:12]
            self.proxy = Proxy(5432)
            proxied = PG_URL.replace(":5432/", f":{self.proxy.port}/")
            self.config = ClusterConfig(REDIS_URL, proxied, f"hwst_{token}", LEASE, f"hwtest-{token}")
        return ClusterEngine(
            self.tmp / "dest",
            self.plugins,
            scaled_policies(),
            cluster=self.config,
            workers=WORKERS,
            poll=0.2,
        )

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.5]), data=st.data())
    @logged
    def postgres_is_cut(self, seconds: float, data: st.DataObject) -> None:
        """Every PostgreSQL connection of the engine breaks, and none answers for ``seconds`` (real ones).

        Meanwhile some held downloads are released, so ends are written while the server is away.
        """
        held = [j for j in self.live() if j.behaviour in HELD and not j.released]
        released = st.lists(st.sampled_from(held), unique_by=lambda j: j.id) if held else st.just([])
        self.proxy.cut(hold=True)
        try:
            for job in data.draw(released, label="released while cut"):
                self.open_gate(job)
            time.sleep(seconds)
        finally:
            self.proxy.cut()  # those opened meanwhile break too; new ones are answered
        event(f"PostgreSQL cut for {seconds} s")

    # Left out (the module says why): plain methods, so Hypothesis finds no rule or invariant here.
    def advance(self, seconds: float) -> None:
        raise AssertionError("not a rule of the cluster's profile")

    def disk_fills(self) -> None:
        raise AssertionError("not a rule of the cluster's profile")

    def disk_full(self) -> bool:
        return False  # the records are PostgreSQL's, whose disk no test fills

    def threads_are_bounded(self) -> None:
        raise AssertionError("not an invariant of the cluster's profile")

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            client = connect()
            keys = list(client.scan_iter(match=self.config.prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()
            self.proxy.close()
            drop(PG_URL, self.config.schema)


@pytest.fixture(autouse=True)
def _services() -> None:
    why = services_absent()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _private_random(monkeypatch: pytest.MonkeyPatch) -> None:
    """The libraries' own threads draw from a Random of their own, not from the global ``random``.

    Hypothesis warns (HypothesisDeprecationWarning, "Do not use the `random`
    module inside strategies") when the global ``random`` state differs after a
    draw from before it. It cannot tell threads apart, and here the cluster's
    threads use the global ``random`` while a rule draws: Dramatiq's Redis
    broker rolls a maintenance chance on each command (``random.randint``) and
    an idle consumer sleeps a jittered backoff (``dramatiq.common.uniform``);
    psycopg_pool jitters a new connection's lifetime (``random()``); redis-py
    jitters the backoff of a retried command. None of it is a draw, so each is
    given its own generator (a name that moves fails here, loudly).
    """
    mine = random.Random()
    monkeypatch.setattr(dramatiq.brokers.redis, "random", mine)
    monkeypatch.setattr(dramatiq.common, "uniform", mine.uniform)
    monkeypatch.setattr(psycopg_pool.base, "random", mine.random)
    monkeypatch.setattr(redis.backoff, "random", mine)


TestClusterMachine = pytest.mark.timeout(600)(ClusterMachine.TestCase)
TestClusterMachine.settings = settings(max_examples=8, stateful_step_count=15)


class LongerClusterMachine(ClusterMachine):
    """The same, with more and longer programs (``-m slow``)."""


TestLongerClusterMachine = pytest.mark.slow(pytest.mark.timeout(3600)(LongerClusterMachine.TestCase))
TestLongerClusterMachine.settings = settings(max_examples=100, stateful_step_count=40)
