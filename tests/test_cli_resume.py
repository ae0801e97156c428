"""What an interrupted or killed ``headwater`` leaves, with real processes and real signals.

- Ctrl-C (SIGINT) and SIGTERM stop ``get`` without cancelling: the record
  stays unfinished, the ``.part`` is kept, ``resume`` continues it.
- What a dead process left is resumable and cancellable while other
  headwater processes run; a live process's downloads are refused to others.
- ``resume`` lands each download in the folder its ``get`` sent it to.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from localhttp import LocalServer, Resource, serving
from slow_plugin import install
from waiting import wait_until

from headwater import Record, State
from headwater._reader import read_records

pytestmark = pytest.mark.timeout(120)

CHUNK = 16 << 10
DATA = os.urandom(256 * CHUNK)  # 4 MiB, sent a chunk per gate release


def env_for(home: Path, plugins: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    env.pop("HEADWATER_LOAD_PLUGINS", None)
    env.pop("HEADWATER_DISABLE_PLUGIN_AUTOLOAD", None)
    if plugins is not None:
        env["PYTHONPATH"] = str(plugins)
    return env


def _default_sigint() -> None:
    """In the child: SIGINT as Python expects it, even if the test runner ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: How the tests run the command: its module (the entry module is tested in test_cli_interrupt.py).
CLI = (sys.executable, "-m", "headwater.cli")


def start(env: dict[str, str], *args: str, cwd: Path, command: Sequence[str] = CLI) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*command, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
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


def journaled(home: Path) -> dict[str, Record]:
    return {r.id: r for r in read_records(home / "journal.sqlite3")}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as srv:
        yield srv


# -- item 6: Ctrl-C and SIGTERM interrupt, only cancel cancels ---------------------


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_keeps_the_part_and_resume_continues_it(
    tmp_path: Path, server: LocalServer, signum: int, code: int, word: str
) -> None:
    gate = threading.Semaphore(0)
    res = Resource(DATA, gate=gate, chunk=CHUNK)
    url = server.add("/big.bin", res)
    home, dest = tmp_path / "home", tmp_path / "out"
    env = env_for(home)
    child = start(env, "get", "http", url, "--dest", str(dest), cwd=tmp_path)
    part = dest / "big.bin.part"
    gate.release(32)  # 512 KiB, then nothing until the signal
    wait_until(lambda: part.exists() and part.stat().st_size == 32 * CHUNK, 30, "512 KiB in the .part")
    wait_until(
        lambda: [r.state for r in journaled(home).values()] == [State.RUNNING],
        30,
        "the download journaled RUNNING",
    )
    child.send_signal(signum)
    while child.poll() is None:  # a chunk at a time, so the source sees the stop between two of them
        gate.release(1)
        time.sleep(0.02)
    _, err = child.communicate(timeout=10)
    assert child.returncode == code, err
    assert f"{word}: stopped 1 running download(s); 1 unfinished stay in the journal" in err
    assert "headwater resume" in err

    (record,) = journaled(home).values()
    assert record.state is State.QUEUED, record  # not CANCELLED, not FAILED
    kept = part.stat().st_size
    assert kept >= 32 * CHUNK and record.transferred > 0 and record.attempts == 1
    assert (dest / "big.bin.part.json").exists()
    assert not (dest / "big.bin").exists()

    gate.release(10 * len(DATA) // CHUNK)  # plenty: requests the client dropped take their share too
    resumed = run(env, "resume", "--dest", str(dest), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == f"{url} -> {dest.resolve() / 'big.bin'}"
    assert (dest / "big.bin").read_bytes() == DATA
    assert res.requests[-1]["range"] == f"bytes={kept}-" and res.requests[-1]["if-range"] == '"v1"'
    assert sorted(p.name for p in dest.iterdir()) == ["big.bin"]
    (record,) = journaled(home).values()
    assert record.state is State.COMPLETED and record.attempts == 2


# -- item 5: ownership follows liveness ------------------------------------------


def test_a_dead_process_downloads_stay_resumable_and_cancellable_beside_a_live_one(tmp_path: Path) -> None:
    plugins = install(tmp_path / "plugins")
    home = tmp_path / "home"
    env = env_for(home, plugins)
    # A get of two slow downloads (concurrency 2: both run), killed while they run.
    crashed = start(env, "get", "slow", "60", "61", "--dest", str(tmp_path / "out"), cwd=tmp_path)
    wait_until(
        lambda: len(journaled(home)) == 2 and all(r.transferred > 0 for r in journaled(home).values()),
        30,
        "both downloads running with progress",
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
        wait_until(
            lambda: (
                len(journaled(home)) == 3
                and State.RUNNING in {r.state for i, r in journaled(home).items() if i not in left}
            ),
            30,
            "the live get running",
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


# -- item 7: resume lands files where get sent them ---------------------------------


def test_resume_lands_files_in_the_folder_get_sent_them_to(tmp_path: Path) -> None:
    plugins = install(tmp_path / "plugins")
    home, sent_to, elsewhere = tmp_path / "home", tmp_path / "sent-to", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = env_for(home, plugins)
    crashed = start(env, "get", "slow", "40", "--dest", str(sent_to), cwd=tmp_path)
    wait_until(
        lambda: [r.state for r in journaled(home).values()] == [State.RUNNING], 30, "the download running"
    )
    crashed.kill()
    crashed.wait(10)

    resumed = run(env, "resume", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    (record,) = journaled(home).values()
    assert record.state is State.COMPLETED and record.dest_dir == str(sent_to.resolve())
    assert Path(record.file_path or "").parent == sent_to.resolve()
    assert list(elsewhere.iterdir()) == []
