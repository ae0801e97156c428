"""The command line through click's runner and through real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from instrumented import InstrumentedSource
from slow_plugin import install

from headwater import Engine, RatePolicy, State
from headwater._journal import SQLiteStore
from headwater._reader import read_records
from headwater.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("HEADWATER_HOME", str(folder))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")  # whatever else is installed
    monkeypatch.delenv("HEADWATER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return folder


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "src"
    folder.mkdir()
    made = []
    for name, size in (("a.bin", 3_000_000), ("b.txt", 10)):
        (folder / name).write_bytes(os.urandom(size))
        made.append(folder / name)
    return made


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_get_prints_where_each_file_went_and_journals_it(
    home: Path, files: list[Path], tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    code, out, err = run("get", "file", *map(str, files), "--dest", str(dest))
    assert code == 0, err
    assert out.splitlines() == [f"{f} -> {dest / f.name}" for f in files]
    assert [(dest / f.name).read_bytes() for f in files] == [f.read_bytes() for f in files]
    records = read_records(home / "journal.sqlite3")
    assert [r.state for r in records] == [State.COMPLETED, State.COMPLETED]

    code, out, _ = run("status", "--json")
    assert code == 0
    assert [r["file_path"] for r in json.loads(out)] == [str(dest / f.name) for f in reversed(files)]
    code, out, _ = run("status", records[1].id[-6:])  # the end of the id the list shows
    assert code == 0 and out.startswith(records[1].id[-12:]) and "completed" in out
    code, out, _ = run("status", records[0].id[:20])
    assert code == 0 and out.startswith(records[0].id[-12:]) and len(out.splitlines()) == 1
    code, _, err = run("status", records[0].id[:4])  # both were made in the same minute
    assert code == 2 and "2 downloads with an id starting or ending" in err


def test_a_failed_download_exits_1_with_the_error_on_stderr(home: Path, tmp_path: Path) -> None:
    code, out, err = run("get", "file", str(tmp_path / "missing"), "--dest", str(tmp_path / "out"))
    assert code == 1 and out == ""
    assert "failed: FileNotFoundError: no such file" in err


def test_get_json(home: Path, files: list[Path], tmp_path: Path) -> None:
    code, out, _ = run("get", "file", str(files[1]), "--dest", str(tmp_path / "out"), "--json")
    assert code == 0
    (record,) = json.loads(out)
    assert record["state"] == "completed" and record["target"] == str(files[1])


def test_an_unknown_source_is_a_usage_error(home: Path) -> None:
    code, out, err = run("get", "nosuch", "x")
    assert code == 2 and "unknown source 'nosuch'; known sources: file" in err


def test_unknown_ids_are_usage_errors(home: Path) -> None:
    code, _, err = run("status", "abcdef")
    assert code == 2 and "no download with an id starting or ending 'abcdef'" in err


def _leave_queued(home: Path, files: list[Path], tmp_path: Path) -> list[str]:
    """Journal one download of ``file`` CANCELLED (by ``close``) and the given files QUEUED."""
    src = InstrumentedSource("file", RatePolicy(concurrency=1))
    engine = Engine(tmp_path / "out", plugins={"file": src}, store=SQLiteStore(home / "journal.sqlite3"))
    first = engine.submit("file", "block:k")
    ids = [engine.submit("file", str(f)) for f in files]
    src.wait_started(1)
    engine.close()
    return [first, *ids]


def test_resume_runs_what_the_journal_holds(home: Path, files: list[Path], tmp_path: Path) -> None:
    first, *ids = _leave_queued(home, files, tmp_path)
    code, out, err = run("resume", "--dest", str(tmp_path / "out"))
    assert code == 0, err
    assert out.splitlines() == [f"{f} -> {tmp_path / 'out' / f.name}" for f in files]
    states = {r.id: r.state for r in read_records(home / "journal.sqlite3")}
    assert states == {first: State.CANCELLED, ids[0]: State.COMPLETED, ids[1]: State.COMPLETED}
    code, _, err = run("resume")
    assert code == 0 and "nothing to resume" in err


def test_cancel_and_clean(home: Path, files: list[Path], tmp_path: Path) -> None:
    first, *ids = _leave_queued(home, files, tmp_path)
    code, out, _ = run("cancel", ids[0][-10:])
    assert code == 0 and out.strip() == f"{ids[0]}: cancelled"
    code, out, _ = run("cancel", first)
    assert code == 1 and "already cancelled" in out
    code, out, _ = run("clean")
    assert code == 0 and "removed 2" in out
    assert [r.id for r in read_records(home / "journal.sqlite3")] == [ids[1]]


def test_commands_work_beside_another_session(home: Path, files: list[Path], tmp_path: Path) -> None:
    src = InstrumentedSource("file", RatePolicy(concurrency=1))
    other = Engine(tmp_path / "out", plugins={"file": src}, store=SQLiteStore(home / "journal.sqlite3"))
    try:
        busy = other.submit("file", "block:k")
        src.wait_started(1)
        other.flush()
        code, out, err = run("get", "file", str(files[1]), "--dest", str(tmp_path / "out"))
        assert code == 0, err
        code, out, _ = run("status", "--json")
        assert [r["state"] for r in json.loads(out)] == ["completed", "running"]  # latest first
        code, _, err = run("cancel", busy)
        assert code == 3
        assert f"not cancelled: download {busy} belongs to another engine in this process" in err
        code, out, _ = run("resume")
        assert code == 0, "a live session's downloads are not resumed elsewhere"
        assert other.get(busy).state is State.RUNNING
    finally:
        src.release("k")
        other.close()


def test_a_damaged_journal_exits_3(home: Path) -> None:
    home.mkdir()
    (home / "journal.sqlite3").write_bytes(b"garbage" * 1000)
    for args in (("status",), ("clean",)):
        code, _, err = run(*args)
        assert code == 3 and "journal.sqlite3" in err


def test_config_policies_and_blocks(home: Path, tmp_path: Path) -> None:
    home.mkdir()
    (home / "headwater.toml").write_text("[sources.file]\ndelay = 2.5\n")
    code, out, _ = run("sources", "--json")
    policy = json.loads(out)[0]["policy"]
    assert code == 0 and (policy["concurrency"], policy["delay"]) == (1, 2.5)
    other = tmp_path / "other.toml"
    other.write_text('[plugins]\nblock = ["file"]\n')
    code, out, _ = run("--config", str(other), "sources", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = run("--config", str(tmp_path / "none.toml"), "sources")
    assert code == 2 and "none.toml does not exist" in err


def test_destination_from_config(home: Path, files: list[Path], tmp_path: Path) -> None:
    home.mkdir()
    (home / "headwater.toml").write_text(f'destination = "{tmp_path / "conf-dest"}"\n')
    code, out, _ = run("get", "file", str(files[1]))
    assert code == 0 and out.strip() == f"{files[1]} -> {tmp_path / 'conf-dest' / files[1].name}"


def test_version_verbose_lists_plugins(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == "headwater 0.1.0"
    code, out, _ = run("--version", "-v")
    assert code == 0 and "file: headwater-0.1.0" in out


# -- real subprocesses ----------------------------------------------------------


def headwater(
    home: Path, *args: str, plugins: Path | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    if plugins is not None:
        env["PYTHONPATH"] = str(plugins)
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        **kw,
    )  # type: ignore[call-overload]


@pytest.mark.timeout(120)
def test_subprocess_get_status_and_version(tmp_path: Path) -> None:
    plugins = install(tmp_path / "plugins")
    home = tmp_path / "home"
    done = headwater(home, "get", "slow", "2", "3", "--dest", str(tmp_path / "out"), plugins=plugins)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(" -> " in line for line in lines)
    assert all(Path(line.split(" -> ")[1]).stat().st_size in (2000, 3000) for line in lines)
    status = headwater(home, "status", "--json")
    assert [r["state"] for r in json.loads(status.stdout)] == ["completed", "completed"]
    version = headwater(home, "--version", "-v", plugins=plugins)
    assert "slow: slowsource-1.0" in version.stdout and "file: headwater-0.1.0" in version.stdout
    bad = headwater(home, "get", "slow", "1", "--config", "x")
    assert bad.returncode == 2 and "Error" in bad.stderr and bad.stdout == ""
