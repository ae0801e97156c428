"""``headwater plugin new`` and the copier template it renders.

The end-to-end tests install what they build into fresh virtual environments
that see this interpreter's site-packages through a ``.pth`` file (headwater,
pytest, hatchling), so ``pip install --no-deps --no-build-isolation`` needs
no network.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import threading
import tomllib
import warnings
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import copier
import pytest
import yaml
from child_env import isolated_env, make_venv
from click.testing import CliRunner

import headwater
from headwater._errors import TemplateError
from headwater._plugin_new import find_template, render_plugin
from headwater.cli import main

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "plugin_template"


# -- helpers ---------------------------------------------------------------------------


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    """Run a command and return its output; fail the test with the output if it fails."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def headwater_cli(python: Path) -> list[str | Path]:
    return [python, "-c", "import sys; from headwater.cli import main; sys.exit(main())"]


@pytest.fixture
def asking(tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    """``headwater plugin new acme`` on a pseudo-terminal, at its first question: (pexpect, child, dest)."""
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the terminal session")
    dest = tmp_path / "proj"
    child = pexpect.spawn(
        sys.executable,
        ["-c", "from headwater.cli import main; main()", "plugin", "new", "acme", "--dest", str(dest)],
        env={**isolated_env(tmp_path / "home"), "TERM": "xterm"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    child.expect("One line saying what the source downloads")
    yield pexpect, child, dest
    child.close(force=True)


class _Folder(SimpleHTTPRequestHandler):
    """Serves a folder; each request line goes on the server's ``requests`` instead of stderr."""

    server: FolderServer

    def log_message(self, format: str, *args: object) -> None:
        self.server.requests.append(self.requestline)


class FolderServer(ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1; keeps the client port of each connection and each request line."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Folder, directory=str(root)))
        self.root = root
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.accepted: list[int] = []
        self.requests: list[str] = []

    def verify_request(self, request: object, client_address: Any) -> bool:
        self.accepted.append(client_address[1])
        return True


@pytest.fixture
def served(tmp_path: Path) -> Iterator[FolderServer]:
    """A folder served over HTTP on 127.0.0.1."""
    (tmp_path / "served").mkdir()
    httpd = FolderServer(tmp_path / "served")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the command -----------------------------------------------------------------------


def test_the_template_default_version_is_headwaters() -> None:
    questions = yaml.safe_load((TEMPLATE / "copier.yml").read_text())
    assert questions["headwater_version"]["default"] == headwater.__version__


def test_the_checkout_template_is_found() -> None:
    assert find_template() == TEMPLATE


def test_defaults_are_taken_without_a_terminal(tmp_path: Path) -> None:
    dest = tmp_path / "proj"
    result = CliRunner().invoke(main, ["plugin", "new", "acme_tv", "--dest", str(dest)], input="")
    assert result.exit_code == 0, result.output
    pyproject = (dest / "pyproject.toml").read_text()
    assert 'name = "headwater-acme-tv"' in pyproject
    assert 'acme_tv = "headwater_acme_tv"' in pyproject
    assert f'"headwater>={headwater.__version__},<1"' in pyproject
    assert 'license = "MIT"' in pyproject
    assert (dest / "LICENSE").read_text().startswith("MIT License")
    assert (dest / "src" / "headwater_acme_tv" / "__init__.py").is_file()
    assert {p.name for p in (dest / "tests").iterdir()} >= {"test_source.py", "test_installed.py"}
    assert (dest / ".gitignore").is_file()


def test_the_default_folder_is_named_after_the_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plugin", "new", "acme_tv"], input="")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "headwater-acme-tv" / "pyproject.toml").is_file()


@pytest.mark.parametrize(
    ("given", "source"), [("headwater-acme-tv", "acme-tv"), ("headwater_acme_tv", "acme_tv")]
)
def test_a_distribution_name_is_not_prefixed_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, source: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plugin", "new", given], input="")
    assert result.exit_code == 0, result.output
    assert f"{given} is the distribution; its source is called {source}\n" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["headwater-acme-tv"]
    pyproject = (tmp_path / "headwater-acme-tv" / "pyproject.toml").read_text()
    assert 'name = "headwater-acme-tv"' in pyproject and f'{source} = "headwater_acme_tv"' in pyproject


def test_copier_alone_does_not_prefix_twice(tmp_path: Path) -> None:
    copier.run_copy(str(TEMPLATE), tmp_path, data={"name": "headwater-acme"}, defaults=True, quiet=True)
    project = tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]
    assert project["name"] == "headwater-acme"
    assert project["entry-points"]["headwater.sources"] == {"headwater-acme": "headwater_acme"}
    assert (tmp_path / "src" / "headwater_acme" / "__init__.py").is_file()


@pytest.mark.parametrize(
    ("license", "first_line"),
    [("MIT", "MIT License"), ("BSD-3-Clause", "BSD 3-Clause License"), ("Apache-2.0", "Apache License")],
)
def test_each_license_choice_writes_its_text(tmp_path: Path, license: str, first_line: str) -> None:
    answers = {"name": "acme", "license": license, "author_name": "Ada Lovelace"}
    copier.run_copy(str(TEMPLATE), tmp_path, data=answers, defaults=True, quiet=True)
    text = (tmp_path / "LICENSE").read_text()
    assert text.strip().splitlines()[0].strip() == first_line
    assert ("Ada Lovelace" in text) == (license != "Apache-2.0")  # Apache's text names no holder
    assert f'license = "{license}"' in (tmp_path / "pyproject.toml").read_text()


def test_answers_with_quotes_stay_valid_toml(tmp_path: Path) -> None:
    awkward = {"description": 'Say "hi" \\ <there>', "author_name": 'O\'Brien "Ob"'}
    copier.run_copy(str(TEMPLATE), tmp_path, data={"name": "acme", **awkward}, defaults=True, quiet=True)
    project = tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]
    assert project["description"] == awkward["description"]
    assert project["authors"][0]["name"] == awkward["author_name"]


@pytest.mark.parametrize("name", ["Acme", "-acme", "acme tv", "", "acme/../x"])
def test_an_invalid_name_is_refused_and_nothing_written(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "proj"
    result = CliRunner().invoke(main, ["plugin", "new", "--dest", str(dest), "--", name], input="")
    assert result.exit_code == 2
    assert "invalid source name" in result.output
    assert not dest.exists()


def test_a_folder_with_files_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["plugin", "new", "acme", "--dest", str(tmp_path)], input="")
    assert result.exit_code == 1
    assert "already exists and is not an empty folder" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_missing_copier_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "copier", None)  # makes `import copier` raise ImportError
    with pytest.raises(TemplateError, match=r"pip install 'headwater\[template\]'"):
        render_plugin("acme", tmp_path / "proj", interactive=False)
    assert not (tmp_path / "proj").exists()


@pytest.mark.timeout(120)
def test_questions_are_asked_on_a_terminal(asking: tuple[Any, Any, Path]) -> None:
    """A typed description and a license picked from the list land in the project."""
    pexpect, child, dest = asking
    child.sendline("\x15Downloads Acme things")  # Ctrl-U clears the offered default first
    for _ in range(2):  # author name and email: take the defaults
        child.expect("Author")
        child.sendline("")
    child.expect("License")
    child.send("\x1b[B")  # arrow down: from MIT to Apache-2.0
    child.sendline("")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    pyproject = (dest / "pyproject.toml").read_text()
    assert 'description = "Downloads Acme things"' in pyproject
    assert 'license = "Apache-2.0"' in pyproject
    assert "Apache License" in (dest / "LICENSE").read_text()


@pytest.mark.timeout(120)
def test_interrupting_the_questions_creates_nothing(asking: tuple[Any, Any, Path]) -> None:
    pexpect, child, dest = asking
    child.sendintr()
    child.expect("interrupted; nothing was created")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert not dest.exists()


# -- end to end ------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_rendered_plugin_installs_passes_its_tests_and_downloads(
    tmp_path: Path, served: FolderServer
) -> None:
    env = isolated_env(tmp_path / "home")
    project = tmp_path / "headwater-acme"
    result = CliRunner().invoke(main, ["plugin", "new", "acme", "--dest", str(project)], input="")
    assert result.exit_code == 0, result.output
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], project, env)
    run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], project, env)
    run([sys.executable, "-m", "mypy", "--cache-dir", os.devnull], project, env)

    python = make_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", project], tmp_path, env)
    out = run([python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"], project, env)
    assert " passed" in out and "failed" not in out, out
    if importlib.util.find_spec("headwater.testing") is None:  # the conformance kit is not here
        assert "1 skipped" in out and "no conformance kit" in out, out
    else:
        assert "skipped" not in out, out

    listed = json.loads(run([*headwater_cli(python), "sources", "--json"], tmp_path, env))
    acme = next((s for s in listed if s["name"] == "acme"), None)
    assert acme is not None, listed
    assert (acme["status"], acme["distribution"], acme["aliases"]) == ("ok", "headwater-acme", ["acme_dl"])
    token = next(s for s in acme["settings"] if s["name"] == "token")
    assert (token["secret"], token["required"], token["type"]) == (True, False, "str | None")

    (served.root / "tune.ogg").write_bytes(os.urandom(200_000))
    dest = tmp_path / "downloads"
    get = [*headwater_cli(python), "get", "acme", f"{served.url}/tune.ogg", "--dest", dest]
    seen = "the server accepted connections from ports {0.accepted} and answered {0.requests}"
    try:
        run(get, tmp_path, env)
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{seen.format(served)}") from None
    assert (dest / "tune.ogg").read_bytes() == (served.root / "tune.ogg").read_bytes()
    assert served.requests and set(served.requests) == {"GET /tune.ogg HTTP/1.1"}, seen.format(served)
    if len(served.accepted) > 1:
        # The source's retries (retries=3) took it past a lost connection: a loopback reset was
        # seen once in CI with no cause found in this process. Say so in the run's summary, so a
        # second sighting is noticed, without failing what this test is about.
        warnings.warn(
            f"{len(served.accepted)} connections for one download: {seen.format(served)}", stacklevel=1
        )


@pytest.mark.timeout(300)
def test_the_installed_test_accepts_an_object_in_the_module_as_the_entry_point(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    project = tmp_path / "headwater-acme"
    render_plugin("acme", project, interactive=False)
    pyproject = project / "pyproject.toml"
    entry = pyproject.read_text().replace('acme = "headwater_acme"', 'acme = "headwater_acme:source"')
    pyproject.write_text(entry)
    module = project / "src" / "headwater_acme" / "__init__.py"
    text = module.read_text().replace("import urllib.error\n", "import sys\nimport urllib.error\n", 1)
    module.write_text(text + "\n\nsource = sys.modules[__name__]  # the object the entry point names\n")

    python = make_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", project], tmp_path, env)
    out = run([python, "-m", "pytest", "-qp", "no:cacheprovider", "tests/test_installed.py"], project, env)
    assert "2 passed" in out, out


@pytest.mark.timeout(300)
def test_the_wheel_ships_the_template_and_renders_from_it(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, REPO],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("headwater-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("headwater/plugin_template/") for n in names if "plugin_template/" in n}
    expected = {p.relative_to(TEMPLATE).as_posix() for p in TEMPLATE.rglob("*") if p.is_file()}
    assert shipped == {e for e in expected if "__pycache__" not in e}

    python = make_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], tmp_path, env)
    where = run([python, "-c", "import headwater._plugin_new as p; print(p.find_template())"], tmp_path, env)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where
    project = tmp_path / "made-from-wheel"
    run([*headwater_cli(python), "plugin", "new", "acme", "--dest", project], tmp_path, env)
    assert 'acme = "headwater_acme"' in (project / "pyproject.toml").read_text()
