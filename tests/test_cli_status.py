"""``headwater status`` pages the journal: the latest 100, filters, older pages, everything streamed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from headwater import Record, SQLiteStore, State
from headwater._codec import plain

T0 = 1_700_000_000.0
STATES = (State.COMPLETED, State.FAILED, State.CANCELLED, State.QUEUED)


def _headwater(home: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_LOAD_PLUGINS": "file"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "headwater.cli", "status", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        **kw,
    )


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record]]:
    """A home whose journal holds 250 records (states and sources cycling), and them, latest first."""
    home = tmp_path_factory.mktemp("home")
    records = [
        Record(
            f"{i:012x}{i:020x}",
            ("file", "http")[i % 2],
            f"/src/{i}",
            None,
            "me",
            STATES[i % 4],
            T0 + i,
            T0 + i,
            file_path=f"/dest/{i}" if STATES[i % 4] is State.COMPLETED else None,
        )
        for i in range(250)
    ]
    store = SQLiteStore(home / "journal.sqlite3")
    store.commit(records)
    store.close()
    return home, records[::-1]


def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()]


def test_status_lists_the_latest_100_and_says_how_to_see_older(journal: tuple[Path, list[Record]]) -> None:
    home, latest = journal
    shown = _headwater(home)
    assert shown.returncode == 0, shown.stderr
    assert _ids(shown.stdout) == [r.id[-12:] for r in latest[:100]]
    assert f"older downloads: add --before {latest[99].id[-12:]}" in shown.stderr

    older = _headwater(home, "--before", latest[99].id[-12:], "--limit", "120")
    assert _ids(older.stdout) == [r.id[-12:] for r in latest[100:220]]
    last = _headwater(home, "--before", latest[219].id[-12:])
    assert _ids(last.stdout) == [r.id[-12:] for r in latest[220:]] and "older" not in last.stderr


def test_status_filters_by_state_and_source(journal: tuple[Path, list[Record]]) -> None:
    home, latest = journal
    shown = _headwater(home, "--state", "failed", "--state", "queued", "--source", "http", "--json")
    assert shown.returncode == 0, shown.stderr
    wanted = [r for r in latest if r.state in (State.FAILED, State.QUEUED) and r.source == "http"]
    assert [r["id"] for r in json.loads(shown.stdout)] == [r.id for r in wanted][:100]
    assert {r.state for r in wanted} == {State.FAILED, State.QUEUED} and len(wanted) == 125
    one = _headwater(home, "--state", "cancelled", "--source", "file", "--limit", "3")
    assert _ids(one.stdout) == [r.id[-12:] for r in latest if r.state is State.CANCELLED][:3]


def test_status_all_streams_everything_as_one_json_array(journal: tuple[Path, list[Record]]) -> None:
    home, latest = journal
    shown = _headwater(home, "--all", "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == json.dumps([plain(r) for r in latest], indent=2) + "\n"  # as a list dump prints it
    text = _headwater(home, "--all")
    assert _ids(text.stdout) == [r.id[-12:] for r in latest] and text.stderr == ""
    empty = _headwater(home, "--all", "--json", "--source", "nosuch")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_status_reads_only_the_page_it_shows(journal: tuple[Path, list[Record]], tmp_path: Path) -> None:
    home, _ = journal
    copy = tmp_path / "home"
    copy.mkdir()
    (copy / "journal.sqlite3").write_bytes((home / "journal.sqlite3").read_bytes())
    with closing(sqlite3.connect(copy / "journal.sqlite3")) as conn, conn:  # the oldest row, damaged
        conn.execute("INSERT INTO records VALUES ('old-bad', 'file', 'completed', 1.0, 1.0, '{', 'gone')")
    assert "cannot be read" not in _headwater(copy).stderr
    everything = _headwater(copy, "--all")
    assert everything.returncode == 0 and "record old-bad cannot be read" in everything.stderr


def test_status_all_into_a_pipe_closed_early_stops_quietly(journal: tuple[Path, list[Record]]) -> None:
    home, latest = journal
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    command = f"{sys.executable} -m headwater.cli status --all --json | head -c 100 >/dev/null"
    piped = subprocess.run(
        command + "; echo ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert piped.stdout.strip() == "0" and piped.stderr == "", piped.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--all", "--limit", "5"), "--all lists every download: leave out --limit"),
        (("abc", "--all"), "--before, --limit and --all page the list"),
        (("--limit", "0"), "0 is not in the range x>=1"),
        (("--before", "nosuch"), "no download with an id starting or ending 'nosuch'"),
    ],
)
def test_status_refuses_paging_it_cannot_do(
    journal: tuple[Path, list[Record]], args: tuple[str, ...], error: str
) -> None:
    home, _ = journal
    refused = _headwater(home, *args)
    assert refused.returncode == 2 and error in refused.stderr and refused.stdout == ""
