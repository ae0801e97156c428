"""The worked example of docs/writing-a-plugin.md, as a real distribution, used as a user would.

``tests/worked_example`` is the ``headwater-tunes`` distribution: its module is
the example's code, character for character. It is pip-installed into a new
virtual environment, configured only through headwater.toml and environment
variables, and run through the ``headwater`` command against a local Tunes
API (tests/localhttp.py): a token, a 429 with Retry-After, a 401, a 404, a
title learned while downloading.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from child_env import isolated_env, make_venv
from localhttp import LocalServer, Resource, Step, serving
from test_docs import python_blocks

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = REPO / "tests" / "worked_example"
MODULE = DISTRIBUTION / "src" / "headwater_tunes" / "__init__.py"
TOKEN = "tok-0f9e8d7c"
BLUE = b"fLaC" + bytes(range(256)) * 1200
SO_WHAT = b"fLaC" + bytes(reversed(range(256))) * 900


def track(title: str, audio: str) -> Resource:
    return Resource(json.dumps({"title": title, "artist": "Miles Davis", "audio": audio}).encode())


@pytest.fixture(scope="module")
def api() -> Iterator[LocalServer]:
    """The Tunes API: tracks 42 and 7 (7 answers 429 first), 13 refuses the token, 404 is missing."""
    with serving() as server:
        server.add("/tracks/42", track("Blue in Green", "/audio/42.flac"))
        server.add("/audio/42.flac", Resource(BLUE))
        server.add("/tracks/7", track("So What", "/audio/7.flac"))
        server.resources["/tracks/7"].script.append(Step(status=429, headers={"Retry-After": "1"}))
        server.add("/audio/7.flac", Resource(SO_WHAT))
        server.add("/tracks/13", track("Flamenco Sketches", "/audio/13.flac"))
        server.resources["/tracks/13"].script.append(Step(status=401))
        yield server


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with headwater-tunes pip-installed from its folder; its python."""
    base = tmp_path_factory.mktemp("tunes")
    python = make_venv(base / "venv")
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", DISTRIBUTION],
        env=isolated_env(base / "home"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return python


class User:
    """Someone with the distribution installed: a home with headwater.toml, and their environment."""

    def __init__(self, python: Path, folder: Path, server: str, token: str | None) -> None:
        self.python = python
        self.folder = folder
        home = folder / "headwater-home"
        home.mkdir(parents=True)
        (home / "headwater.toml").write_text(f'[sources.tunes.settings]\nserver = "{server}"\n')
        self.env = {**isolated_env(folder / "user"), "HEADWATER_HOME": str(home)}
        if token is not None:
            self.env["HEADWATER_TUNES_TOKEN"] = token

    def headwater(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = "import sys; from headwater.cli import main; sys.exit(main())"
        return subprocess.run(
            [self.python, "-c", command, *args],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
        )


def test_the_distribution_is_the_documented_example() -> None:
    page = REPO / "docs" / "writing-a-plugin.md"
    shown = [b.code for b in python_blocks(page, page.read_text()) if "``tunes``" in b.code]
    assert shown == [MODULE.read_text()], "docs/writing-a-plugin.md and tests/worked_example differ"


@pytest.fixture
def user(python: Path, api: LocalServer, tmp_path: Path) -> User:
    """A user with the token in the environment and the API's address in headwater.toml."""
    return User(python, tmp_path, api.url(""), TOKEN)


def test_configured_it_downloads_waits_out_a_429_and_names_the_tracks(
    user: User, api: LocalServer, tmp_path: Path
) -> None:
    got = user.headwater("get", "tunes", "42", "7", "--dest", "music", "-q")
    assert got.returncode == 0, got.stdout + got.stderr
    music = tmp_path / "music"
    assert (music / "Miles Davis - Blue in Green.flac").read_bytes() == BLUE
    assert (music / "Miles Davis - So What.flac").read_bytes() == SO_WHAT
    assert len(api.resources["/tracks/7"].requests) == 2  # a 429, then the track
    tunes = [r for r in api.resources.values() if r.requests]
    assert {q["authorization"] for r in tunes for q in r.requests} == {f"Bearer {TOKEN}"}

    status = user.headwater("status", "--json")
    assert status.returncode == 0, status.stderr
    records = {r["target"]: r for r in json.loads(status.stdout)}
    assert records["42"]["display_name"] == "Miles Davis - Blue in Green"
    assert records["7"]["extra"] == {"track_id": 7, "artist": "Miles Davis", "title": "So What"}
    for out in (got.stdout, got.stderr, status.stdout, status.stderr):
        assert TOKEN not in out


def test_a_refused_token_and_a_missing_track_fail_clearly(user: User, tmp_path: Path) -> None:
    got = user.headwater("get", "tunes", "13", "404", "--dest", "music", "-q")
    assert got.returncode == 1, got.stdout + got.stderr
    assert "Tunes refused the token (401): set a new one with `headwater keys set tunes token`" in got.stderr
    assert "Tunes has no /tracks/404 (404)" in got.stderr
    assert not (tmp_path / "music").exists() or not any((tmp_path / "music").iterdir())


def test_a_target_that_is_no_track_id_is_refused_at_once(user: User) -> None:
    got = user.headwater("get", "tunes", "blue-in-green", "--dest", "music")
    assert got.returncode == 2, got.stdout + got.stderr
    assert "'blue-in-green' is not a Tunes track id (digits only)" in got.stderr


def test_without_a_token_it_needs_configuration(python: Path, api: LocalServer, tmp_path: Path) -> None:
    user = User(python, tmp_path, api.url(""), token=None)
    listed = user.headwater("sources", "--json")
    assert listed.returncode == 0, listed.stderr
    tunes = next(s for s in json.loads(listed.stdout) if s["name"] == "tunes")
    assert tunes["status"] == "needs-configuration"
    assert [p["field"] for p in tunes["problems"]] == ["token"]
    server = next(s for s in tunes["settings"] if s["name"] == "server")
    config = Path(user.env["HEADWATER_HOME"], "headwater.toml")
    assert server["value"] == api.url("")
    assert server["origin"] == f"[sources.tunes.settings] of config file {config}"

    got = user.headwater("get", "tunes", "42", "--dest", "music")
    assert got.returncode == 2
    assert "source 'tunes' needs configuration: token: required" in got.stderr
    assert "HEADWATER_TUNES_TOKEN" in got.stderr
