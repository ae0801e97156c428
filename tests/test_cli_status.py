"""``headwater status`` pages the journal: the latest 100, filters, older pages, everything streamed.

Every test runs the command both ways it can run: through its entry point
(``python -m headwater``, as the ``headwater`` script does: the quick
listing of :mod:`headwater._status`, without click, where it can) and
through click alone (``python -m headwater.cli``). Both must print the same.
"""

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


#: The two ways to run the command: its entry point, and click alone.
WAYS = {"entry": "headwater", "click": "headwater.cli"}


@pytest.fixture(params=sorted(WAYS))
def way(request: pytest.FixtureRequest) -> str:
    """The module ``python -m`` runs the command as."""
    return WAYS[request.param]


def _headwater(way: str, home: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_LOAD_PLUGINS": "file"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", way, "status", *args],
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


def _copy(home: Path, tmp_path: Path, *rows: str) -> Path:
    """A home in ``tmp_path`` with a copy of ``home``'s journal, these rows (SQL values) added to it."""
    copy = tmp_path / "home"
    copy.mkdir()
    (copy / "journal.sqlite3").write_bytes((home / "journal.sqlite3").read_bytes())
    with closing(sqlite3.connect(copy / "journal.sqlite3")) as conn, conn:
        for row in rows:
            conn.execute(f"INSERT INTO records VALUES ({row})")
    return copy


def _ids(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()]


def test_status_lists_the_latest_100_and_says_how_to_see_older(
    journal: tuple[Path, list[Record]], way: str
) -> None:
    home, latest = journal
    shown = _headwater(way, home)
    assert shown.returncode == 0, shown.stderr
    assert _ids(shown.stdout) == [r.id[-12:] for r in latest[:100]]
    assert f"older downloads: add --before {latest[99].id[-12:]}" in shown.stderr

    older = _headwater(way, home, "--before", latest[99].id[-12:], "--limit", "120")
    assert _ids(older.stdout) == [r.id[-12:] for r in latest[100:220]]
    last = _headwater(way, home, "--before", latest[219].id[-12:])
    assert _ids(last.stdout) == [r.id[-12:] for r in latest[220:]] and "older" not in last.stderr


def test_status_filters_by_state_and_source(journal: tuple[Path, list[Record]], way: str) -> None:
    home, latest = journal
    shown = _headwater(way, home, "--state", "failed", "--state", "queued", "--source", "http", "--json")
    assert shown.returncode == 0, shown.stderr
    wanted = [r for r in latest if r.state in (State.FAILED, State.QUEUED) and r.source == "http"]
    assert [r["id"] for r in json.loads(shown.stdout)] == [r.id for r in wanted][:100]
    assert {r.state for r in wanted} == {State.FAILED, State.QUEUED} and len(wanted) == 125
    one = _headwater(way, home, "--state", "cancelled", "--source", "file", "--limit", "3")
    assert _ids(one.stdout) == [r.id[-12:] for r in latest if r.state is State.CANCELLED][:3]


def test_status_all_streams_everything_as_one_json_array(
    journal: tuple[Path, list[Record]], way: str
) -> None:
    home, latest = journal
    shown = _headwater(way, home, "--all", "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == json.dumps([plain(r) for r in latest], indent=2) + "\n"  # as a list dump prints it
    text = _headwater(way, home, "--all")
    assert _ids(text.stdout) == [r.id[-12:] for r in latest] and text.stderr == ""
    empty = _headwater(way, home, "--all", "--json", "--source", "nosuch")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_status_reads_only_the_page_it_shows(
    journal: tuple[Path, list[Record]], way: str, tmp_path: Path
) -> None:
    copy = _copy(journal[0], tmp_path, "'old-bad', 'file', 'completed', 1.0, 1.0, '{', 'gone'")  # the oldest
    assert "cannot be read" not in _headwater(way, copy).stderr
    everything = _headwater(way, copy, "--all")
    assert everything.returncode == 0 and "record old-bad cannot be read" in everything.stderr


def test_status_all_into_a_pipe_closed_early_stops_quietly(
    journal: tuple[Path, list[Record]], way: str
) -> None:
    home, latest = journal
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    command = f"{sys.executable} -m {way} status --all --json | head -c 100 >/dev/null"
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
    journal: tuple[Path, list[Record]], way: str, args: tuple[str, ...], error: str
) -> None:
    home, _ = journal
    refused = _headwater(way, home, *args)
    assert refused.returncode == 2 and error in refused.stderr and refused.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--json",),
        ("--limit=3", "--state=failed", "--state", "queued", "--json"),
        ("--source", "http", "--before", "0000000000c8", "--limit", "4"),
        ("0000000000c8", "000000000001", "--json", "--state", "completed"),
        ("000000000001",),
        ("--all", "--source", "nosuch"),
        ("--limit", "+5"),  # click's int() takes it; the quick parser leaves it to click
        ("--state", "exploded"),
        ("--json=yes",),
        ("--before",),
        ("--help",),
        ("--", "000000000001"),
        ("-v", "--limit", "2"),
    ],
)
def test_both_ways_print_the_same_bytes_and_exit_alike(
    journal: tuple[Path, list[Record]], tmp_path: Path, args: tuple[str, ...]
) -> None:
    copy = _copy(
        journal[0], tmp_path, """'new-bad', 'http', 'failed', 9e9, 9e9, '{"id": 7}', 'x'"""
    )  # the latest
    entry, click = (_headwater(WAYS[way], copy, *args) for way in ("entry", "click"))
    named = [
        out.replace("python -m headwater.cli", "python -m headwater") for out in (click.stdout, click.stderr)
    ]
    assert (entry.returncode, entry.stdout, entry.stderr) == (click.returncode, *named)


def test_with_a_config_file_or_a_server_status_is_as_click_lists_it(
    journal: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    """A ``headwater.toml`` is read (a wrong one refused), a ``serve.json`` left to click."""
    home, latest = journal
    copy = _copy(home, tmp_path)
    (copy / "headwater.toml").write_text("destination = 5\n")
    refused = _headwater(WAYS["entry"], copy, "--limit", "1")
    assert refused.returncode == 2 and "'destination' must be a folder path" in refused.stderr
    (copy / "headwater.toml").write_text('destination = "~/Music"\n')
    assert _ids(_headwater(WAYS["entry"], copy, "--limit", "1").stdout) == [latest[0].id[-12:]]
    (copy / "headwater.toml").unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = {"url": "http://127.0.0.1:9", "pid": int(gone.stdout), "token_file": "t", "dest_dir": "d"}
    state = {**stale, "journal": str(copy / "journal.sqlite3")}
    (copy / "serve.json").write_text(json.dumps(state))  # its process is gone: click removes it as stale
    assert _ids(_headwater(WAYS["entry"], copy, "--limit", "1").stdout) == [latest[0].id[-12:]]
    assert not (copy / "serve.json").exists()


def test_the_serve_state_file_is_named_as_the_server_names_it() -> None:
    from headwater._serve._state import STATE_NAME
    from headwater._status import SERVE_STATE_NAME

    assert SERVE_STATE_NAME == STATE_NAME
