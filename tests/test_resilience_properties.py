"""Hypothesis properties of the resilience rules.

- A job never starts while its source is paused.
- A retry never overlaps its previous attempt, and retries stop at the limit
  (Retry-After waits use none of them, and stop at their own limit).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import ScriptedSource
from waiting import wait_until

from headwater import Engine, InvalidPolicyError, RatePolicy, State
from headwater._clock import SystemClock

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 4)),
        st.just(("pause",)),
        st.just(("resume",)),
        st.just(("settle",)),
    ),
    min_size=1,
    max_size=8,
)


def _settle(engine: Engine, name: str, timeout: float = 10.0) -> None:
    """Wait until the source's worker has no thread: nothing more can start until new work comes."""
    wait_until(
        lambda: not engine.worker_stats().get(name, (0, 0, 0))[0],
        timeout,
        "worker threads did not end",
        step=0.002,
    )


@SETTINGS
@given(steps=ops, concurrency=st.integers(1, 3))
def test_no_start_while_paused(tmp_path_factory, steps, concurrency):
    src = ScriptedSource("a", SystemClock())
    dest = tmp_path_factory.mktemp("dest")
    engine = Engine(dest, plugins={"a": src}, policies={"a": RatePolicy(concurrency)}, idle_timeout=0.01)
    try:
        ids: list[str] = []
        allowed: set[str] | None = None  # while paused: the jobs begun before the pause
        for op in steps:
            if op[0] == "submit":
                ids += [engine.submit("a", "ok") for _ in range(op[1])]
            elif op[0] == "pause":
                engine.pause("a")
                if allowed is None:
                    allowed = {r.id for r in engine.records() if r.state is not State.QUEUED}
            elif op[0] == "resume":
                engine.resume("a")
                allowed = None
            else:
                _settle(engine, "a")
            if allowed is not None:
                started = {a.job_id for a in src.attempts}
                assert started <= allowed, "a job started while its source was paused"
        if allowed is not None:
            _settle(engine, "a")
            assert {a.job_id for a in src.attempts} <= allowed
            assert all(engine.get(i).state is State.QUEUED for i in ids if i not in allowed)
        engine.resume()
        assert all(r.state is State.COMPLETED for r in engine.wait(ids, timeout=10))
    finally:
        engine.close(timeout=5)


jobs = st.lists(
    st.tuples(st.sampled_from(["flaky", "retry-after", "fail"]), st.integers(0, 4)), min_size=1, max_size=8
)


@SETTINGS
@given(specs=jobs, retries=st.integers(0, 3), rounds=st.integers(0, 3), concurrency=st.integers(1, 3))
def test_retries_never_overlap_and_stop_at_the_limit(tmp_path_factory, specs, retries, rounds, concurrency):
    src = ScriptedSource("a", SystemClock())
    policy = RatePolicy(
        concurrency=concurrency,
        retries=retries,
        backoff=0.001,
        backoff_max=0.002,
        max_retry_after_rounds=rounds,
    )
    dest = tmp_path_factory.mktemp("dest")
    engine = Engine(dest, plugins={"a": src}, policies={"a": policy})
    try:
        targets = [
            f"{kind}:{n}" if kind == "flaky" else f"{kind}:0:{n}" if kind == "retry-after" else kind
            for kind, n in specs
        ]
        ids = [engine.submit("a", t) for t in targets]
        recs = engine.wait(ids, timeout=30)
        for (kind, n), rec in zip(specs, recs, strict=True):
            mine = sorted((a for a in src.attempts if a.job_id == rec.id), key=lambda a: a.start_seq)
            for prev, nxt in zip(mine, mine[1:], strict=False):
                assert prev.end_seq is not None and prev.end_seq < nxt.start_seq, "a retry overlapped"
            if kind == "flaky":
                expect = min(n, retries) + 1
                assert rec.attempts == len(mine) == expect
                assert rec.state is (State.COMPLETED if n <= retries else State.FAILED)
            elif kind == "retry-after" and n <= rounds:
                assert (rec.state, rec.attempts, rec.retries) == (State.COMPLETED, n + 1, 0)
            elif kind == "retry-after":
                assert (rec.state, rec.attempts, rec.retries) == (State.FAILED, rounds + 1, 0)
                assert f"asked to retry later {rounds + 1} time" in rec.error
            else:
                assert (rec.state, rec.attempts) == (State.FAILED, 1)
    finally:
        engine.close(timeout=5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_minute", 0),
        ("per_minute", 2.5),
        ("retries", -1),
        ("retries", True),
        ("backoff", float("inf")),
        ("backoff_max", -1.0),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("stall_timeout", -3),
        ("stall_timeout", "10"),
        ("max_retry_after", 0.0),
    ],
)
def test_bad_policy_fields_are_refused_by_name(field, value):
    with pytest.raises(InvalidPolicyError, match=f"RatePolicy.{field} must be"):
        RatePolicy(**{field: value})


@given(
    retry=st.integers(1, 10_000),
    draw=st.floats(0, 1, exclude_max=True),
    backoff=st.floats(0, 1e6),
    cap=st.floats(0, 1e6),
)
def test_retry_wait_is_full_jitter_under_the_cap(retry, draw, backoff, cap):
    policy = RatePolicy(retries=1, backoff=backoff, backoff_max=cap)
    wait = policy.retry_wait(retry, draw)
    ceiling = min(cap, backoff * 2.0 ** min(retry - 1, 64))
    assert 0 <= wait <= ceiling
    assert wait == pytest.approx(draw * ceiling)
    if retry > 1:
        assert policy.retry_wait(retry - 1, draw) <= wait  # never shrinks from one retry to the next
