"""The progress display on a real terminal (a pty), and Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slow_plugin import install

from headwater import State
from headwater._reader import read_records


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """What the terminal shows until ``needle`` appears (fail the test after ``timeout``)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never appeared; the terminal showed {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def drain(fd: int) -> bytes:
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return seen
        if not chunk:
            return seen
        seen += chunk


@pytest.mark.timeout(60)
def test_progress_bars_render_and_ctrl_c_interrupts_cleanly(tmp_path: Path) -> None:
    plugins = install(tmp_path / "plugins")
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HEADWATER_HOME": str(home),
        "PYTHONPATH": str(plugins),
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        "LINES": "40",
    }
    env.pop("NO_COLOR", None)
    argv = [
        sys.executable,
        "-m",
        "headwater.cli",
        "get",
        "slow",
        "1",
        *["40"] * 5,
        "--dest",
        str(tmp_path / "out"),
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.execve(sys.executable, argv, env)
    try:
        shown = read_until(fd, b"done", 20)  # the 1-chunk download ends first
        shown += read_until(fd, b"eta", 10)  # a per-download bar with its figures
        assert b"all" in shown and b"1/6 ended" in shown
        assert b"\x1b[" in shown, "no terminal control sequences: bars were not drawn"
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal's line discipline
        pressed = time.monotonic()
        _, status = os.waitpid(pid, 0)
        took = time.monotonic() - pressed
        tail = drain(fd)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130
    assert took < 2.0, f"took {took:.2f} s to exit after Ctrl-C"
    assert b"interrupted: stopped 2 running download(s); 5 unfinished stay in the journal" in tail
    # Nothing was cancelled: the two that ran are QUEUED again, beside the three that never started.
    states = sorted(r.state.value for r in read_records(home / "journal.sqlite3"))
    assert states == ["completed", "queued", "queued", "queued", "queued", "queued"]
    assert [r.state for r in read_records(home / "journal.sqlite3") if r.target == "1"] == [State.COMPLETED]

    resumed = subprocess.run(
        [sys.executable, "-m", "headwater.cli", "resume", "--dest", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert len(resumed.stdout.splitlines()) == 5 and "\x1b[" not in resumed.stdout  # plain lines: no terminal
    states = sorted(r.state.value for r in read_records(home / "journal.sqlite3"))
    assert states == ["completed"] * 6
