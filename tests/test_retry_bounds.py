"""Retry-After loops end: a download stops waiting after so many pauses or so many seconds of them.

A service that answers 429 with ``Retry-After`` forever must not keep a
download (and ``headwater get``) running forever: past the policy's
``max_retry_after_rounds`` or ``max_retry_after_total`` it gives up, moving
down its fallback chain or failing with how often and how long it was told
to wait.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from localhttp import LocalServer, Resource, Step, serving
from scripted import ScriptedSource, TranslatingSource
from test_cli import headwater_script

from headwater import Engine, PolicyOverride, RatePolicy, Record, State
from headwater._clock import ManualClock
from headwater_http import HttpSource

pytestmark = pytest.mark.timeout(60)

FOREVER = "retry-after:{}:1000000"  # a scripted target asked to retry later on every attempt
ROUNDS = "max_retry_after_rounds"


def run_out(
    clock: ManualClock, engine: Engine, download_id: str, step: float = 1.0, limit: float = 7200.0
) -> tuple[Record, float]:
    """Advance ``clock`` by ``step`` until the download has ended; return its record and the clock time."""
    start = clock.now()
    while not engine.get(download_id).state.terminal:
        assert clock.now() - start < limit, f"{engine.get(download_id).state.name} after {limit} clock s"
        clock.advance(step)
        time.sleep(0.002)
    return engine.get(download_id), clock.now() - start


@pytest.mark.parametrize(
    ("policy", "seconds", "ending"),
    [
        (RatePolicy(max_retry_after_rounds=3), 1, f"over 3 s; giving up ({ROUNDS} is 3)"),
        (
            RatePolicy(max_retry_after_total=100.0),
            30,
            "over 90 s; giving up (30 s more would pass max_retry_after_total, 100 s)",
        ),
    ],
    ids=["rounds", "total"],
)
def test_a_download_gives_up_at_either_bound(make_engine, policy, seconds, ending):
    clock = ManualClock()
    a = ScriptedSource("a", clock, policy)
    engine = make_engine({"a": a}, clock=clock)
    record, _ = run_out(clock, engine, engine.submit("a", FOREVER.format(seconds)))
    assert record.state is State.FAILED
    assert record.error.endswith(f"asked to retry later 4 times {ending}")
    assert f"retry after {seconds} s" in record.error  # what the service said last
    assert a.starts() == record.attempts == 4 and record.retries == 0


def test_the_default_policy_bounds_a_service_that_always_says_later(make_engine):
    clock = ManualClock()
    a = ScriptedSource("a", clock)  # RatePolicy() as every source without its own gets
    engine = make_engine({"a": a}, clock=clock)
    quick, slow = engine.submit("a", FOREVER.format(1)), engine.submit("a", FOREVER.format(120))
    record, _ = run_out(clock, engine, quick)
    assert record.state is State.FAILED
    assert "asked to retry later 11 times over 10 s; giving up" in record.error
    record, _ = run_out(clock, engine, slow, step=10.0)
    assert record.state is State.FAILED
    assert "asked to retry later 6 times over 600 s; giving up (120 s more would pass" in record.error


def test_a_retry_after_of_zero_forever_is_bounded_too(make_engine):
    a = ScriptedSource("a", ManualClock(), RatePolicy(max_retry_after_rounds=5))
    engine = make_engine({"a": a})
    record = engine.wait([engine.submit("a", FOREVER.format(0))], timeout=10)[0]
    assert record.state is State.FAILED and "asked to retry later 6 times over 0 s" in record.error


def test_giving_up_moves_down_the_chain_and_the_count_starts_afresh_there(make_engine):
    clock = ManualClock()
    a = ScriptedSource("a", clock, RatePolicy(max_retry_after_rounds=2))
    b = TranslatingSource("b", clock, lambda t: "retry-after:1:3", policy=RatePolicy(**{ROUNDS: 3}))
    engine = make_engine({"a": a, "b": b}, clock=clock)
    rid = engine.submit(["a", "b"], FOREVER.format(1))
    record, _ = run_out(clock, engine, rid)
    assert record.state is State.COMPLETED and record.source == "b", record.error
    (tried,) = record.tried
    assert tried.source == "a"
    assert tried.error.endswith(f"asked to retry later 3 times over 2 s; giving up ({ROUNDS} is 2)")
    assert a.starts() == 3 and b.starts() == 4  # b waited out all three of its pauses


# -- the http source against a server that says 429 forever ------------------------------


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as srv:
        yield srv


def always_busy(server: LocalServer, path: str, status: int = 429) -> tuple[str, Resource]:
    """Serve at ``path`` a resource that answers ``status`` with ``Retry-After: 1`` to every request."""
    busy = Step(status=status, headers={"retry-after": "1"})
    res = Resource(b"data", script=[busy for _ in range(10_000)])
    return server.add(path, res), res


@pytest.mark.parametrize("status", [429, 503])
def test_http_gives_up_on_a_server_that_is_always_busy(make_engine: Callable[..., Engine], server, status):
    clock = ManualClock()
    url, res = always_busy(server, "/busy.bin", status)
    engine = make_engine(
        {"http": HttpSource(read_timeout=5.0)},
        {"http": PolicyOverride({"max_retry_after_rounds": 2})},
        clock=clock,
    )
    record, _ = run_out(clock, engine, engine.submit("http", url))
    assert record.state is State.FAILED
    assert f"HTTP {status}" in record.error
    assert record.error.endswith(f"asked to retry later 3 times over 2 s; giving up ({ROUNDS} is 2)")
    assert len(res.requests) == 3
    assert os.listdir(engine.dest_dir) == []


def test_http_always_busy_falls_back_to_the_next_source(make_engine: Callable[..., Engine], server):
    clock = ManualClock()
    url, res = always_busy(server, "/busy.bin")
    mirror = TranslatingSource("mirror", clock, lambda t: "ok")
    engine = make_engine(
        {"http": HttpSource(read_timeout=5.0), "mirror": mirror},
        {"http": PolicyOverride({"max_retry_after_total": 2.5})},
        clock=clock,
    )
    record, _ = run_out(clock, engine, engine.submit(["http", "mirror"], url))
    assert record.state is State.COMPLETED and record.source == "mirror", record.error
    assert record.tried[0].source == "http"
    assert "asked to retry later 3 times over 2 s; giving up (1 s more would pass" in record.tried[0].error
    assert len(res.requests) == 3


def test_cli_get_via_runs_the_fallback_when_the_server_is_always_busy(tmp_path: Path, server):
    """``headwater get http URL --via file``: http gives up (bounds from headwater.toml), file is tried."""
    url, res = always_busy(server, "/song.flac")
    config = tmp_path / "headwater.toml"
    config.write_text("[sources.http]\nmax_retry_after_rounds = 1\nmax_retry_after_total = 30\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(HEADWATER_HOME=str(tmp_path / "home"), HEADWATER_LOAD_PLUGINS="file,http")
    args = ["--config", config, "get", "http", url, "--via", "file", "--dest", tmp_path / "out", "--json"]
    done = subprocess.run(
        [headwater_script(), *map(str, args)], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 1, done.stderr
    (record,) = json.loads(done.stdout)
    assert record["state"] == "failed"
    assert [t["source"] for t in record["tried"]] == ["http", "file"]
    http_error, file_error = (t["error"] for t in record["tried"])
    assert "HTTP 429" in http_error and "asked to retry later 2 times over 1 s; giving up" in http_error
    assert "no such file" in file_error  # the fallback ran
    assert len(res.requests) == 2
