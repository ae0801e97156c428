"""SIGKILL the engine at random points; after a restart nothing is lost and nothing is half-done."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_child import content, outcome

from headwater._reader import read_records

JOBS = 1000
CHILD = Path(__file__).with_name("crash_child.py")


def start(journal: Path, dest: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(journal), str(dest), str(JOBS), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def check_files(dest: Path) -> None:
    """Every file at a final path is complete (a ``.part`` may be anything)."""
    for path in dest.iterdir():
        if path.suffix != ".part":
            assert path.read_bytes() == content(path.name), f"{path} is incomplete"


@pytest.mark.timeout(110)
def test_sigkill_at_ten_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    requeued_running = 0
    for run in range(10):
        journal, dest = tmp_path / f"run{run}" / "journal.sqlite3", tmp_path / f"run{run}" / "dest"
        child = start(journal, dest, "submit")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "SUBMITTED"
        # A drain takes about 1,000 x 8 ms / 8 threads = 1 s; kill somewhere in it.
        time.sleep(rng.uniform(0.0, 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait(10)

        before = {r.id: r for r in read_records(journal)}
        assert len(before) == JOBS, f"run {run}: {JOBS - len(before)} acknowledged records lost"
        check_files(dest)
        running_then = {i for i, r in before.items() if r.state.value == "running"}

        again = start(journal, dest, "resume")
        out, _ = again.communicate(timeout=60)
        assert again.returncode == 0 and out.strip().endswith("DRAINED"), out

        after = read_records(journal)
        assert len(after) == JOBS and len({r.id for r in after}) == JOBS
        assert sorted(r.target for r in after) == [f"job-{i:04d}" for i in range(JOBS)]
        for record in after:
            index = int(record.target.split("-")[1])
            assert record.state.value == outcome(index), (run, record)
            old = before[record.id]
            if old.state.terminal:  # history never changes
                assert (old.state, old.file_path, old.attempts) == (
                    record.state,
                    record.file_path,
                    record.attempts,
                )
            if record.id in running_then:
                assert record.attempts == old.attempts + 1
                requeued_running += 1
            if record.state.value == "completed":
                assert record.file_path is not None
                assert Path(record.file_path).read_bytes() == content(record.target)
        check_files(dest)
        assert not list(dest.glob("*.part"))
    assert requeued_running > 0, "no kill landed while downloads were running"
