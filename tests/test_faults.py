"""The fault script's harness (bench/faults.py) is itself tested: its server lies as told, its checks see.

The default run takes a few seconds: the hostile server's scripted replies,
each check against a case built to hold exactly one problem of its kind, and
two real faults judged end to end (one that headwater survives, one whose
file the test spoils behind headwater's back). The whole quick fault run is
marked ``slow`` (deselected by default; ``pytest -m slow tests/test_faults.py``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "bench"))  # after the standard library: bench/ has a module named http.py

import faults  # noqa: E402
from fault_server import BEHAVIOURS, HALF, D, server_fault  # noqa: E402
from faultbox import LIMIT, Sandbox, sha256, snapshot  # noqa: E402
from faultcheck import CHECKS, KINDS, Case, Run, Want, count, judge  # noqa: E402
from hostile import HostileServer, Reply, Served  # noqa: E402


@pytest.fixture
def server() -> Iterator[HostileServer]:
    hostile = HostileServer()
    yield hostile
    hostile.close()


def test_the_server_answers_as_its_script_says(server: HostileServer) -> None:
    url = server.mount(
        "/t/",
        [
            Served("cut", D, (Reply(cut=1000), Reply())),
            Served("short", D, (Reply(range_total=HALF),)),
            Served("later", D, (Reply(status=429, retry_in=30.0),)),
        ],
    )
    with httpx.Client() as client:
        with pytest.raises(httpx.RemoteProtocolError):  # the first answer breaks off after 1000 bytes
            client.get(url[0])
        assert client.get(url[0]).content == D  # the second is honest
        lying = client.get(url[1], headers={"range": "bytes=100-"})
        assert (lying.status_code, lying.headers["content-range"]) == (206, f"bytes 100-{HALF - 1}/{HALF}")
        assert lying.content == D[100:HALF]
        later = client.get(url[2])
        assert later.status_code == 429 and later.headers["retry-after"].endswith("GMT")
    assert server.requests("/t/") == 4


def test_a_stall_ends_when_its_fault_is_unmounted(server: HostileServer) -> None:
    (url,) = server.mount("/s/", [Served("stall", D, (Reply(stall=10),))])
    port = int(url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /s/stall HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while len(got.partition(b"\r\n\r\n")[2]) < 10:  # the head and the 10 bytes before the stall
            got += conn.recv(65536)
        server.unmount("/s/")
        while chunk := conn.recv(65536):  # the server closes instead of stalling on
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == D[:10]


def _case(tmp_path: Path) -> tuple[Case, dict[str, Path]]:
    """A case with one problem of every kind, and the paths it is about."""
    dest, home, outside = tmp_path / "dest", tmp_path / "home", tmp_path / "outside"
    for folder in (dest, home, outside):
        folder.mkdir()
    mine = outside / "mine.txt"
    mine.write_bytes(b"mine")
    planted = {mine: sha256(b"mine")}
    before = snapshot(tmp_path)
    mine.write_bytes(b"overwritten")  # replaced (and changed outside the destination)
    (dest / "a.bin").write_bytes(b"not a")  # corrupt: COMPLETED with other bytes
    (dest / "a.bin.part.json").write_bytes(b"")  # leftover beside a completed file
    (outside / "stray.bin").write_bytes(b"x")  # outside
    wants = [
        Want("http://x/a.bin", frozenset({sha256(b"a")}), True, "a.bin"),
        Want("http://x/b.bin", frozenset({sha256(b"b")}), True, "b.bin"),  # lost: FAILED
    ]
    records: list[dict[str, object]] = [
        {"target": "http://x/a.bin", "state": "completed", "file_path": str(dest / "a.bin"), "error": None},
        {"target": "http://x/b.bin", "state": "failed", "file_path": None, "error": "TransferError: 503"},
    ]
    runs = [
        Run(("get", "http"), None, "", "", LIMIT, LIMIT),  # a hang
        Run(("status",), 1, "", "Traceback (most recent call last):\nValueError: x", 0.1, LIMIT),  # a message
    ]
    case = Case(wants, runs, records, "", before, snapshot(tmp_path), planted, dest, home)
    return case, {"dest": dest, "home": home}


def test_every_check_sees_its_own_kind_of_problem(tmp_path: Path) -> None:
    case, _ = _case(tmp_path)
    found = count(judge(case))
    assert found == {
        "lost": 1,
        "corrupt": 1,
        "replaced": 1,
        "outside": 2,  # mine.txt changed, stray.bin created
        "hang": 1,
        "message": 1,
        "journal": 0,
        "leftover": 1,
    }
    assert len(CHECKS) == len(KINDS)


def test_an_unreadable_journal_is_reported_and_nothing_else_is_guessed(tmp_path: Path) -> None:
    case, _ = _case(tmp_path)
    case.records = None
    case.journal_error = "exit 3: Error: journal is damaged"
    found = count(judge(case))
    assert found["journal"] == 1
    assert found["lost"] == 0 and found["leftover"] == 0  # no records: no judgement on them


def _landed(tmp_path: Path, there_before: dict[str, bytes] | None = None) -> Case:
    """A case of a ``get`` that landed a.bin whole, in a destination that held ``there_before`` first
    (planted: files that must stay)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    planted = {}
    for name, data in (there_before or {}).items():
        planted[dest / name] = sha256(data)
        (dest / name).write_bytes(data)
    before = snapshot(tmp_path)
    (dest / "a.bin").write_bytes(b"a")
    want = Want("http://x/a.bin", frozenset({sha256(b"a")}), True, "a.bin")
    record: dict[str, object] = {
        "target": want.target,
        "state": "completed",
        "file_path": str(dest / "a.bin"),
    }
    run = Run(("get", "http", want.target), 0, "", "", 0.5, LIMIT)
    return Case([want], [run], [record], "", before, snapshot(tmp_path), planted, dest, tmp_path / "home")


def test_a_clean_case_has_no_problems(tmp_path: Path) -> None:
    assert judge(_landed(tmp_path)) == []


def test_another_downloads_planted_part_is_no_leftover(tmp_path: Path) -> None:
    """A .part and resume record of another URL, there before the fault, must stay: not a leftover."""
    assert judge(_landed(tmp_path, {"a.bin.part": b"other", "a.bin.part.json": b"{}"})) == []


def test_a_failed_chain_is_judged_by_every_sources_reason(tmp_path: Path) -> None:
    """The fault hit the first source; the last one's error need not name it (``tried`` does)."""
    case, _ = _case(tmp_path)
    case.words = ("retry",)
    assert case.records is not None
    failed = case.records[1]
    failed["error"] = "FileNotFoundError: no such file"
    assert [p.text for p in judge(case) if "error names none" in p.text] == [
        "b.bin: error names none of retry: FileNotFoundError: no such file"
    ]
    failed["tried"] = [
        {"source": "http", "error": "asked to retry later 11 times over 10 s; giving up"},
        {"source": "file", "error": "FileNotFoundError: no such file"},
    ]
    assert [p.text for p in judge(case) if "error names none" in p.text] == []


def spoiled_after_landing(box: Sandbox) -> Case:
    """A real `headwater get` that completes; then the test, not headwater, overwrites the file."""
    targets, wants = box.serve([Served("a.bin", D)])
    box.freeze()
    box.headwater(*box.get(*targets), limit=LIMIT)
    (box.dest / "a.bin").write_bytes(b"spoiled behind headwater's back")
    return box.observe(wants)


def test_real_faults_are_judged_end_to_end(tmp_path: Path) -> None:
    resumed = next(b for b in BEHAVIOURS if b.name == "drop mid-body once; the resume is served")
    trials = [
        faults.Fault(resumed.name, "hostile server", server_fault(resumed)),
        faults.Fault("spoiled after landing", "test", spoiled_after_landing),
    ]
    began = time.monotonic()
    verdicts = faults.run_faults(trials, quick=True, jobs=2, seed=1, base=tmp_path, progress=False)
    assert time.monotonic() - began < 60
    assert [v.harness_error for v in verdicts] == ["", ""]
    survived, spoiled = verdicts
    assert survived.problems == (), survived.problems
    assert [p.kind for p in spoiled.problems] == ["corrupt"]
    assert "a.bin: COMPLETED, but its file holds" in spoiled.problems[0].text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_quick_fault_run_judges_every_fault() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "faults.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Harness errors" not in done.stdout, done.stdout
    first = done.stdout.splitlines()[0]  # "headwater fault run (quick, ...): N trials in S s"
    assert int(first.split(": ")[1].split()[0]) == sum(1 for f in faults.all_faults() if f.quick)
