"""What a command imports: ``status`` reads the journal without the engine, plugins, HTTP or a terminal UI.

Start-up is most of what ``headwater status`` costs (the page itself is a
few milliseconds at any journal size: docs/benchmarks.md, Store), so a
heavy import that creeps back into its path is a regression. Each test runs
the command in a fresh interpreter and looks at ``sys.modules`` after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import isolated_env

from headwater import Record, SQLiteStore, State

#: Packages and modules ``status`` must not import: the engine and the plugins' machinery, the
#: HTTP client, the terminal UI, the serve and cluster stacks, the sources themselves.
NOT_FOR_STATUS = (
    "headwater._engine",
    "headwater._sources",
    "headwater._settings",
    "headwater.client",
    "headwater._display",
    "importlib_metadata",
    "importlib.metadata",
    "pluggy",
    "httpx",
    "rich",
    "litestar",
    "uvicorn",
    "anyio",
    "dramatiq",
    "redis",
    "psycopg",
    "psycopg_pool",
    "yt_dlp",
    "copier",
    "headwater_file",
    "headwater_http",
    "headwater_ytdlp",
)

_RUN = """
import json, sys
from headwater import cli
try:
    cli.main(sys.argv[1:], prog_name="headwater")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


#: What ``status`` run through the ``headwater`` script's entry point does not import either: it
#: lists the journal without click, attrs, cattrs, the record classes or the configuration's
#: parser (headwater._status.quick).
NOT_FOR_QUICK_STATUS = (
    "click",
    "logging",
    "attr",
    "attrs",
    "cattrs",
    "platformdirs",
    "tomllib",
    "headwater.cli",
    "headwater._records",
    "headwater._codec",
    "headwater._config",
    "headwater._files",
    "headwater._serve",
)

_ENTRY = """
import json, sys
import _headwater_entry
sys.argv[0] = "headwater"
try:
    _headwater_entry.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _imported(home: Path, *args: str, run: str = _RUN) -> tuple[str, set[str]]:
    """(stdout, the modules loaded) of ``headwater ARGS`` run in a fresh interpreter on ``home``'s journal.

    ``run``: through click (:data:`_RUN`) or the ``headwater`` script's entry point (:data:`_ENTRY`).
    """
    env = {**isolated_env(home), "HEADWATER_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", run, *args], env=env, capture_output=True, text=True, timeout=60
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr
    return done.stdout, set(report["modules"])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in NOT_FOR_STATUS or m.split(".")[0] in NOT_FOR_STATUS)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose journal holds three ended downloads."""
    home = tmp_path_factory.mktemp("home")
    store = SQLiteStore(home / "journal.sqlite3")
    store.commit(
        [
            Record(f"{i:012x}{i:020x}", "file", f"/src/{i}", None, "me", State.COMPLETED, 1e9 + i, 1e9 + i)
            for i in range(3)
        ]
    )
    store.close()
    return home


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("status", "--all"), ("status", "000000000001")],
    ids=["status", "json", "all", "ids"],
)
def test_status_imports_nothing_heavy(home: Path, args: tuple[str, ...]) -> None:
    out, modules = _imported(home, *args)
    assert "000000000001" in out  # it read the journal, through the modules it did import
    assert "headwater._reader" in modules
    assert _heavy(modules) == []


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json", "--limit", "5"), ("status", "--all", "--state", "completed")],
    ids=["status", "json", "all"],
)
def test_status_through_the_entry_point_imports_neither_click_nor_attrs(
    home: Path, args: tuple[str, ...]
) -> None:
    out, modules = _imported(home, *args, run=_ENTRY)
    assert "000000000001" in out
    assert "headwater._status" in modules and "headwater._reader" in modules
    light = [m for m in modules if m in NOT_FOR_QUICK_STATUS or m.split(".")[0] in NOT_FOR_QUICK_STATUS]
    assert _heavy(modules) + sorted(light) == []


def test_a_status_the_entry_point_leaves_to_click_runs_there(home: Path) -> None:
    out, modules = _imported(home, "status", "--help", run=_ENTRY)
    assert "Show downloads in the journal" in out and "headwater.cli" in modules


def test_the_version_imports_nothing_heavy(tmp_path: Path) -> None:
    out, modules = _imported(tmp_path, "--version")
    assert out.startswith("headwater ")
    assert _heavy(modules) == []


def test_the_public_names_are_there_when_asked_for(tmp_path: Path) -> None:
    """``import headwater`` loads none of its parts; each public name is there on first use, typed."""
    code = (
        "import sys, headwater\n"
        "before = sorted(m for m in sys.modules if m.startswith('headwater.'))\n"
        "from headwater import Engine, hookimpl\n"
        "print(before, Engine.__module__, hookimpl.project_name, all(hasattr(headwater, n) "
        "for n in headwater.__all__))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=isolated_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["[]", "headwater._engine", "headwater", "True"], done.stderr


def test_status_through_the_entry_point_with_a_config_file_imports_no_click(
    home: Path, tmp_path: Path
) -> None:
    """A ``headwater.toml`` brings its reader (attrs, tomllib), not the command line."""
    configured = tmp_path / "configured"
    configured.mkdir()
    (configured / "journal.sqlite3").write_bytes((home / "journal.sqlite3").read_bytes())
    (configured / "headwater.toml").write_text('destination = "~/Music"\n')
    out, modules = _imported(configured, "status", run=_ENTRY)
    assert "000000000001" in out and "headwater._config" in modules
    assert _heavy(modules) == [] and "click" not in modules and "headwater.cli" not in modules
