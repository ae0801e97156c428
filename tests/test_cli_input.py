"""Bad input to the ``headwater`` command gets a clear error naming the problem, never a traceback.

A destination folder that cannot be created, a ``--timeout`` that is no
number of seconds, and a ``plugins.load`` name that is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_cli import headwater_script

from headwater._discovery import LOAD_ENV, NamedSources, discover

pytestmark = pytest.mark.timeout(60)


def headwater(*args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``cwd`` with its own journal, the ``file`` source and ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    clean.update({"HEADWATER_HOME": str(cwd / "home"), LOAD_ENV: "file"}, **env)
    clean = {k: v for k, v in clean.items() if v}  # an empty value drops the variable
    return subprocess.run(
        [headwater_script(), *map(str, args)], capture_output=True, text=True, env=clean, cwd=cwd, timeout=30
    )


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text("sample")
    return path


def test_a_destination_under_a_file_is_refused_naming_the_file(tmp_path: Path, sample: Path) -> None:
    dest = tmp_path / "sample.txt" / "out" / "deeper"
    done = headwater("get", "file", sample, "--dest", dest, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot create the destination folder {dest}: {sample} is a file, not a folder" in done.stderr
    listed = headwater("status", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # nothing was queued


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_a_destination_in_proc_is_refused_saying_why(tmp_path: Path, sample: Path) -> None:
    done = headwater("get", "file", sample, "--dest", "/proc/x", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot create the destination folder /proc/x: " in done.stderr


def test_a_configured_destination_that_cannot_be_created_is_refused(tmp_path: Path, sample: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text(f'destination = "{sample}/downloads"\n')
    done = headwater("--config", config, "get", "file", sample, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot create the destination folder {sample}/downloads: {sample} is a file" in done.stderr


@pytest.mark.parametrize(
    ("command", "value"), [("get", "-1"), ("get", "nan"), ("get", "0"), ("get", "inf"), ("resume", "nan")]
)
def test_a_timeout_that_is_no_number_of_seconds_is_refused(
    tmp_path: Path, sample: Path, command: str, value: str
) -> None:
    args = ["get", "file", sample] if command == "get" else ["resume"]
    done = headwater(*args, f"--timeout={value}", "--dest", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Invalid value for '--timeout': must be a finite number of seconds above 0" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_a_timeout_above_zero_is_taken(tmp_path: Path, sample: Path) -> None:
    done = headwater("get", "file", sample, "--timeout", "30", "--dest", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "sample.txt").read_text() == "sample"


def test_a_source_in_plugins_load_that_is_not_installed_names_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text('[plugins]\nload = ["nosuch", "file"]\n')
    done = headwater("--config", config, "sources", "--json", cwd=tmp_path, **{LOAD_ENV: ""})
    assert done.returncode == 0, done.stderr
    broken = {s["name"]: s["error"] for s in json.loads(done.stdout) if s["status"] == "broken"}
    assert broken == {"nosuch": f"not installed (named in plugins.load of {config})"}


def test_a_name_not_installed_is_blamed_on_where_it_was_named() -> None:
    def error(environ: dict[str, str], only: list[str] | NamedSources) -> str | None:
        [candidate] = [c for c in discover(environ, only=only) if c.name == "nosuch"]
        return candidate.error

    assert (
        error({LOAD_ENV: "nosuch"}, ["other"]) == f"not installed (named in {LOAD_ENV})"
    )  # the variable wins
    assert error({}, NamedSources(["nosuch"], "plugins.load of a.toml")) == (
        "not installed (named in plugins.load of a.toml)"
    )
    assert error({}, ["nosuch"]) == "not installed (named in the list of sources to load)"
