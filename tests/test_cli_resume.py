"""What a killed ``headwater`` leaves, with real processes and real signals.

- What a dead process left is resumable and cancellable while other
  headwater processes run; a live process's downloads are refused to others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from slow_plugin import install

from headwater import Record, State
from headwater.store import read_records

pytestmark = pytest.mark.timeout(120)


def env_for(home: Path, plugins: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    env.pop("HEADWATER_LOAD_PLUGINS", None)
    env.pop("HEADWATER_DISABLE_PLUGIN_AUTOLOAD", None)
    if plugins is not None:
        env["PYTHONPATH"] = str(plugins)
    return env


def start(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def journaled(home: Path) -> dict[str, Record]:
    return {r.id: r for r in read_records(home / "journal.sqlite3")}


# -- item 5: ownership follows liveness ------------------------------------------


def test_a_dead_process_downloads_stay_resumable_and_cancellable_beside_a_live_one(tmp_path: Path) -> None:
    plugins = install(tmp_path / "plugins")
    home = tmp_path / "home"
    env = env_for(home, plugins)
    # A get of two slow downloads (concurrency 2: both run), killed while they run.
    crashed = start(env, "get", "slow", "60", "61", "--dest", str(tmp_path / "out"), cwd=tmp_path)
    until(
        "both downloads running with progress",
        lambda: len(journaled(home)) == 2 and all(r.transferred > 0 for r in journaled(home).values()),
    )
    crashed.kill()
    crashed.wait(10)
    left = journaled(home)
    assert [r.state for r in left.values()] == [State.RUNNING, State.RUNNING]
    first, second = sorted(left, key=lambda i: left[i].target)

    # clean takes nothing over: the dead process's records stay exactly as they were.
    cleaned = run(env, "clean", cwd=tmp_path)
    assert cleaned.returncode == 0 and "removed 0" in cleaned.stdout
    assert journaled(home) == left

    # A later get, still running while the rest happens, leaves them alone too.
    live = start(env, "get", "slow", "400", "--dest", str(tmp_path / "out2"), cwd=tmp_path)
    try:
        until(
            "the live get running",
            lambda: (
                len(journaled(home)) == 3
                and State.RUNNING in {r.state for i, r in journaled(home).items() if i not in left}
            ),
        )
        (busy,) = set(journaled(home)) - set(left)
        assert {i: journaled(home)[i] for i in left} == left

        cancelled = run(env, "cancel", first[-12:], cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.strip() == f"{first}: cancelled"
        assert journaled(home)[first].state is State.CANCELLED

        refused = run(env, "cancel", busy, cwd=tmp_path)
        assert refused.returncode == 3
        assert (
            f"download {busy} belongs to headwater process {live.pid}, which is still running"
            in refused.stderr
        )
        assert journaled(home)[busy].state is State.RUNNING

        resumed = run(env, "resume", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "nothing to resume" not in resumed.stderr
        assert len(resumed.stdout.splitlines()) == 1 and "slow-61-" in resumed.stdout
        states = {i: r.state for i, r in journaled(home).items()}
        assert states == {first: State.CANCELLED, second: State.COMPLETED, busy: State.RUNNING}
        assert live.poll() is None, "the live get ended early: the test proved nothing"
    finally:
        live.kill()
        live.communicate(timeout=10)
