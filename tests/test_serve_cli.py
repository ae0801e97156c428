"""The command line against a running `headwater serve`: real processes, one queue for every shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from child_env import isolated_env
from click.testing import CliRunner
from localhttp import LocalServer, Resource, serving

import headwater_file
from headwater import Engine, MemoryStore, Record, SQLiteStore, State
from headwater._serve._state import ServerState, ensure_token, running_server, token_path, write_state
from headwater._serve.run import BackgroundServer
from headwater.cli import main
from headwater.client import Client

pytestmark = pytest.mark.timeout(120)


def headwater(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headwater.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.fixture
def web() -> Iterator[LocalServer]:
    with serving() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = isolated_env(tmp_path)
    env.update(HEADWATER_HOME=str(tmp_path / "home"), HEADWATER_LOAD_PLUGINS="file,http")
    return env


def journal_a_queued_download(journal: Path, target: Path) -> Record:
    """A QUEUED file download in ``journal``, left by a session that has ended."""
    now = time.time()
    record = Record("0" * 12 + "1" * 20, "file", str(target), None, "file", State.QUEUED, now - 60, now - 60)
    store = SQLiteStore(journal)
    store.commit([record])
    store.close()
    return record


def started_server(env: dict[str, str], dest: Path) -> tuple[subprocess.Popen[str], Client]:
    """`headwater serve` on a free port; returns once its state file says where it listens."""
    server = headwater(env, "serve", "--port", "0", "--dest", str(dest))
    journal = Path(env["HEADWATER_HOME"]) / "journal.sqlite3"
    for _ in range(300):
        state = running_server(journal)
        if state is not None:
            return server, Client(state.url, state.token())
        if server.poll() is not None:
            raise AssertionError(f"headwater serve exited: {server.communicate()}")
        time.sleep(0.05)
    server.kill()
    raise AssertionError("headwater serve did not write its state file")


def test_gets_from_two_shells_share_one_queue_and_a_third_cancels(
    env: dict[str, str], tmp_path: Path, web: LocalServer
) -> None:
    dest = tmp_path / "out"
    left = tmp_path / "left.txt"
    left.write_text("left")
    unfinished = journal_a_queued_download(Path(env["HEADWATER_HOME"]) / "journal.sqlite3", left)
    server, client = started_server(env, dest)
    try:
        # The journal's unfinished download is taken over, run, and in the server's list.
        (record,) = client.wait([unfinished.id], timeout=30)
        assert record.state is State.COMPLETED and (dest / "left.txt").read_text() == "left"

        gate = threading.Semaphore(0)
        slow = web.add("/slow.bin", Resource(b"s" * 100_000, gate=gate, chunk=10_000))
        gate.release(1)  # some progress, then it hangs until cancelled
        files = []
        for name in ("a.txt", "b.txt"):
            files.append(tmp_path / name)
            files[-1].write_text(name)

        first = headwater(env, "get", "http", slow, "--quiet")
        for _ in range(400):
            running = client.records(states=[State.RUNNING])
            if running:
                break
            time.sleep(0.025)
        (slow_record,) = running
        code, out, err = finished(headwater(env, "get", "file", *map(str, files)))
        assert code == 0, err
        assert "through the server at" in err
        assert out.splitlines() == [f"{f} -> {dest / f.name}" for f in files]

        queue = client.records()  # one queue: the first shell's download and the second's
        assert [r.target for r in queue] == [str(left), slow, *map(str, files)]
        assert [r.state for r in queue] == [State.COMPLETED, State.RUNNING, State.COMPLETED, State.COMPLETED]
        code, out, err = finished(headwater(env, "status"))
        lines = out.splitlines()  # latest first, as from the journal
        assert code == 0 and len(lines) == 4
        assert lines[2].startswith(slow_record.id[-12:]) and "running" in lines[2]

        code, out, err = finished(headwater(env, "cancel", slow_record.id[-12:]))
        assert code == 0, err
        assert out.strip() == f"{slow_record.id}: cancelled"
        code, out, err = finished(first)
        assert code == 1 and "cancelled" in err
        assert client.get(slow_record.id).state is State.CANCELLED

        code, out, err = finished(headwater(env, "get", "file", str(files[0]), "--dest", str(tmp_path / "x")))
        assert code == 2 and "--dest cannot change that" in err
        code, out, err = finished(headwater(env, "resume"))
        assert code == 0 and "nothing to resume" in err
        code, out, err = finished(headwater(env, "clean", "--json"))
        assert code == 0 and len(json.loads(out)) == 4
        assert client.records() == []

        client.pause("http")  # a download that stays queued while the server stops under it
        waiting = headwater(env, "get", "http", slow, "--quiet")
        for _ in range(400):
            if client.records(states=[State.QUEUED]):
                break
            time.sleep(0.025)
    finally:
        client.close()
        server.send_signal(signal.SIGTERM)
        code, _, err = finished(server, 30)
    assert code == 0, err
    assert "server stopped" in err
    assert not (Path(env["HEADWATER_HOME"]) / "serve.json").exists()
    code, out, err = finished(waiting)
    assert code == 3 and "the server's downloads are in its journal" in err


def test_a_state_file_of_a_dead_server_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HEADWATER_HOME", str(home))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    state = {
        "url": "http://127.0.0.1:9",
        "pid": int(dead.stdout),
        "token_file": str(home / "serve.token"),
        "journal": str(home / "journal.sqlite3"),
        "dest_dir": str(tmp_path),
    }
    (home / "serve.json").write_text(json.dumps(state))
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 0, result.stderr
    assert "through the server" not in result.stderr and "no downloads in the journal" in result.stderr
    assert not (home / "serve.json").exists()
    assert os.environ["HEADWATER_HOME"] == str(home)


class _CountedReads(MemoryStore):
    """A store that notes each read of ended records an engine asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def page_at(self, *args: Any, **kwargs: Any) -> list[Record]:
        self.reads.append("page")
        return super().page_at(*args, **kwargs)

    def scan(self, *args: Any, **kwargs: Any) -> Iterator[Record]:
        self.reads.append("scan")
        return super().scan(*args, **kwargs)

    def matching(self, key: str, limit: int = 2) -> list[Record]:
        self.reads.append(f"match {key}")
        return super().matching(key, limit)


def test_status_of_ids_through_a_server_reads_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HEADWATER_HOME", str(home))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")
    store = _CountedReads()
    history = [
        Record(f"{i:012x}{i:020x}", "file", f"/src/{i}", None, "file", State.COMPLETED, 1e9 + i, 1e9 + i)
        for i in range(1500)  # more than a page of the list
    ]
    store.commit(history)
    journal = home / "journal.sqlite3"
    token = ensure_token(token_path(journal))
    engine = Engine(tmp_path / "dest", plugins={"file": headwater_file}, store=store)
    try:
        with BackgroundServer(engine, token, window=100) as server:  # the newest 100 held by the server
            state = ServerState(
                server.url, os.getpid(), str(token_path(journal)), str(journal), str(tmp_path)
            )
            write_state(journal, state)
            wanted = [history[3], history[1200]]
            store.reads.clear()
            result = CliRunner().invoke(main, ["status", wanted[0].id[-12:], wanted[1].id[:24], "--json"])
            assert result.exit_code == 0, result.stderr
            assert "through the server at" in result.stderr
            assert [r["id"] for r in json.loads(result.stdout)] == [r.id for r in wanted]
            # Each key was looked up by the server; no page of the history was read.
            assert store.reads == [f"match {wanted[0].id[-12:]}", f"match {wanted[1].id[:24]}"]
    finally:
        engine.close()
