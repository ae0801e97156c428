"""headwater._status.quick: which ``status`` it runs without click, what it asks of the listing, and
how a Ctrl-C or SIGTERM ends it (as click's command line ends one).

tests/test_cli_status.py runs the command both ways in child processes;
these run :func:`quick` in this process, the listing replaced.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater import _status, cli
from headwater._reader import Reader


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[object, ...]]]:
    """What the listing was asked (its arguments after the reader), the listing replaced; home: tmp_path."""
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path))
    asked: list[tuple[object, ...]] = []

    def listing(pages: object, reader: object, *args: object) -> None:
        assert pages is reader and isinstance(reader, Reader)
        asked.append(args)

    monkeypatch.setattr(_status, "listing", listing)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    yield asked
    for signum, handler in zip((signal.SIGINT, signal.SIGTERM), handlers, strict=True):
        signal.signal(signum, handler)  # a stopped command ignores a second signal: not in the tests after


@pytest.mark.parametrize(
    ("args", "asked"),
    [
        ([], ([], [], [], None, None, False, False)),
        (["--json", "--all"], ([], [], [], None, None, True, True)),
        (
            ["--state", "failed", "--state=queued", "--source=http", "--limit", "007", "--before", "x"],
            ([], ["failed", "queued"], ["http"], "x", 7, False, False),
        ),
        (["a", "--json", "b", "--source", ""], (["a", "b"], [], [""], None, None, False, True)),
        (["--limit", "3", "--limit=4", "--before", "", "--before=y"], ([], [], [], "y", 4, False, False)),
    ],
)
def test_the_status_it_runs_is_the_one_click_would_run(
    listed: list[tuple[object, ...]], args: list[str], asked: tuple[object, ...]
) -> None:
    assert _status.quick(["status", *args]) == 0
    assert listed == [asked]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["get", "file", "x"],
        ["-v", "status"],
        ["--config", "c.toml", "status"],
        ["status", "--help"],
        ["status", "-h"],
        ["status", "--"],
        ["status", "-"],
        ["status", "--limit", "0"],
        ["status", "--limit", "-1"],
        ["status", "--limit", "x"],
        ["status", "--limit", "٣"],  # a digit to str.isdigit, not to click
        ["status", "--state", "exploded"],
        ["status", "--json=1"],
        ["status", "--all=yes"],
        ["status", "--before"],
        ["status", "--before", "--json"],
        ["status", "--sources", "http"],
        ["status", "id", "--all"],
        ["status", "id", "--limit", "2"],
        ["status", "id", "--before", "x"],
        ["status", "--all", "--limit", "3"],
    ],
)
def test_what_it_leaves_to_click(listed: list[tuple[object, ...]], args: list[str]) -> None:
    assert _status.quick(args) is None
    assert listed == []


def test_a_cluster_or_a_server_leaves_it_to_click(listed: list[tuple[object, ...]], tmp_path: Path) -> None:
    (tmp_path / "serve.json").write_text("")
    assert _status.quick(["status"]) is None
    (tmp_path / "serve.json").unlink()
    (tmp_path / "headwater.toml").write_text('[cluster]\nbroker = "redis://x"\npostgres = "postgresql://y"\n')
    assert _status.quick(["status"]) is None
    assert listed == []
    (tmp_path / "headwater.toml").write_text('destination = "~/Music"\n')
    assert _status.quick(["status"]) == 0 and len(listed) == 1


def test_a_config_file_it_cannot_read_ends_it_as_click_does(
    listed: list[tuple[object, ...]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "headwater.toml").write_text("destination = 5\n")
    assert _status.quick(["status"]) == 2
    quick = capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        cli.main(["status"], prog_name="headwater")
    assert ended.value.code == 2 and listed == []
    assert quick == capsys.readouterr() and "'destination' must be a folder path" in quick.err


@pytest.mark.parametrize(
    ("stop", "code", "word"),
    [(KeyboardInterrupt, 130, "interrupted"), (_status.Terminated, 143, "terminated")],
)
def test_a_signal_while_it_lists_ends_it_as_the_command_line_would(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    listed: list[tuple[object, ...]],
    stop: type[KeyboardInterrupt],
    code: int,
    word: str,
) -> None:
    def stopped(*args: object) -> None:
        raise stop

    monkeypatch.setattr(_status, "listing", stopped)
    assert _status.quick(["status"]) == code
    quick = capsys.readouterr()
    monkeypatch.setattr(cli, "listing", stopped)
    with pytest.raises(SystemExit) as ended:
        cli.main(["status"], prog_name="headwater")
    assert ended.value.code == code
    assert quick == capsys.readouterr()
    assert quick.err == f"Error: {word}: `headwater status` stopped before it finished\n"
