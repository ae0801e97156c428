"""The secrets store and `headwater keys`; `sources` and `get` with a source that needs configuration."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import isolated_env
from child_env import run_headwater as headwater
from test_cli_terminal import drain, read_until
from token_plugin import install

from headwater import ConfigError, KeyStore

pytestmark = pytest.mark.timeout(60)

SECRET = "pa55-w0rd-7f3e9c"


# -- the store ---------------------------------------------------------------------


def test_values_are_kept_in_a_file_only_the_owner_can_read(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "home" / "secrets.json")
    assert store.read() == {} and store.names() == []
    old = os.umask(0)  # a permissive umask must not loosen the file
    try:
        store.set("tidal", "token", SECRET)
        store.set("tidal", "user", "me")
        store.set("slskd", "api_key", "k-1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.get("tidal") == {"token": SECRET, "user": "me"}
    assert store.names() == [("slskd", "api_key"), ("tidal", "token"), ("tidal", "user")]
    assert store.remove("tidal", "token") is True and store.remove("tidal", "token") is False
    assert store.remove("slskd", "api_key") is True
    assert store.read() == {"tidal": {"user": "me"}}
    assert [p.name for p in store.path.parent.iterdir()] == ["secrets.json"]  # no temporary file left


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "secrets.json")
    store.set("tidal", "token", SECRET)
    store.path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"can be read by other users \(mode 0644\); run: chmod 600 "):
        store.read()


@pytest.mark.parametrize(
    "body",
    [
        b"not json " + SECRET.encode(),
        b'{"version": 2, "sources": {}}',
        b'{"version": 1, "sources": {"a": 5}}',
    ],
)
def test_a_file_that_is_not_a_secrets_file_is_named_never_quoted(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(body)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is not a headwater secrets file") as refused:
        KeyStore(path).read()
    assert SECRET not in str(refused.value) and str(path) in str(refused.value)
    with pytest.raises(ConfigError):
        KeyStore(path).set("a", "b", "c")
    assert path.read_bytes() == body  # nothing lost


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    """A write cut short (here by a file size limit, which binds root too) changes nothing."""
    store = KeyStore(tmp_path / "secrets.json")
    store.set("tidal", "token", SECRET)
    before = store.path.read_bytes()
    child = f"""
import resource, signal
from headwater import ConfigError, KeyStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 10}, {len(before) + 10}))
try:
    KeyStore({str(store.path)!r}).set("tidal", "token", "x" * 10000)
except ConfigError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "cannot write secrets file" in done.stdout and "File too large" in done.stdout
    assert store.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # the partial file is gone


# -- the commands ---------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        **isolated_env(tmp_path / "user"),
        "HEADWATER_HOME": str(home),
        "HEADWATER_LOAD_PLUGINS": "tokened,file",
        "PYTHONPATH": str(install(tmp_path / "plugins")),
    }


def test_keys_set_list_remove_from_standard_input(env: dict[str, str]) -> None:
    stored = headwater(env, "keys", "set", "tokened", "token", stdin=SECRET + "\n")
    assert stored.returncode == 0, stored.stderr
    assert SECRET not in stored.stdout + stored.stderr
    path = Path(env["HEADWATER_HOME"]) / "secrets.json"
    assert KeyStore(path).get("tokened") == {"token": SECRET}  # the final line end is not part of it
    listed = headwater(env, "keys", "list")
    assert listed.stdout == "tokened token\n" and SECRET not in listed.stdout
    assert json.loads(headwater(env, "keys", "list", "--json").stdout) == [
        {"source": "tokened", "field": "token"}
    ]
    assert headwater(env, "keys", "remove", "tokened", "token").returncode == 0
    again = headwater(env, "keys", "remove", "tokened", "token")
    assert again.returncode == 2 and "holds no token of tokened" in again.stderr
    assert KeyStore(path).read() == {}


@pytest.mark.parametrize(
    ("args", "stdin", "error"),
    [
        (["nosuch", "token"], SECRET, "unknown source 'nosuch'; known sources: file, tokened"),
        (
            ["tokened", "tokn"],
            SECRET,
            "source 'tokened' has no setting 'tokn'; its settings: token, base, quality",
        ),
        (["file", "token"], SECRET, "source 'file' has no setting 'token'; its settings: it declares none"),
        (["tokened", "token"], "", "an empty value; nothing stored"),
    ],
)
def test_keys_set_refuses_what_it_cannot_store(env: dict[str, str], args, stdin, error) -> None:
    refused = headwater(env, "keys", "set", *args, stdin=stdin)
    assert refused.returncode == 2 and error in refused.stderr
    assert not (Path(env["HEADWATER_HOME"]) / "secrets.json").exists()


def test_keys_set_refuses_a_value_the_setting_cannot_take(env: dict[str, str], tmp_path: Path) -> None:
    plugins = Path(env["PYTHONPATH"])
    module = plugins / "token_source.py"
    module.write_text(
        module.read_text().replace(
            'quality: str = setting(help="audio quality", default="high")',
            'quality: int = setting(help="audio quality", default=1)',
        )
    )
    refused = headwater(env, "keys", "set", "tokened", "quality", stdin="best")
    assert refused.returncode == 2
    assert "not stored: quality: expected a whole number, got 'best'" in refused.stderr
    assert not (Path(env["HEADWATER_HOME"]) / "secrets.json").exists()


def test_keys_set_on_a_terminal_reads_the_value_without_echo(env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "headwater.cli", "keys", "set", "tokened", "token"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execve(sys.executable, argv, env)
    try:
        shown = read_until(fd, b"tokened token: ", 20)
        os.write(fd, SECRET.encode() + b"\r")
        _, status = os.waitpid(pid, 0)
        shown += drain(fd)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, shown
    assert SECRET.encode() not in shown  # the terminal never showed it
    assert KeyStore(Path(env["HEADWATER_HOME"]) / "secrets.json").get("tokened") == {"token": SECRET}


def test_sources_lists_a_source_that_needs_configuration_and_get_refuses_it(
    env: dict[str, str], tmp_path
) -> None:
    listing = headwater(env, "sources")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("file ") and " ok " in lines[0]
    assert lines[1] == "tokened          needs configuration  tokensource 1.0:"
    assert "token: required, not set; set it with environment variable HEADWATER_TOKENED_TOKEN" in lines[2]
    assert "`headwater keys set tokened token`" in lines[2]
    assert "`token = ...` under [sources.tokened.settings] in headwater.toml" in lines[2]
    assert lines[3].startswith("    base: required, not set")
    assert "setting token (str, secret, required): the API token; not set" in listing.stdout
    assert 'setting quality (str, default "high"): audio quality; "high" from default' in listing.stdout

    (file_source, tokened) = json.loads(headwater(env, "sources", "--json").stdout)
    assert file_source["status"] == "ok" and file_source["settings"] == [] and file_source["problems"] == []
    assert tokened["status"] == "needs-configuration"
    assert [p["field"] for p in tokened["problems"]] == ["token", "base"]
    quality = tokened["settings"][2]
    assert quality == {
        "name": "quality",
        "type": "str",
        "default": "high",
        "required": False,
        "secret": False,
        "help": "audio quality",
        "origin": "default",
        "value": "high",
        "places": [
            "Engine(settings={'tokened': {'quality': ...}})",
            "environment variable HEADWATER_TOKENED_QUALITY",
            "`headwater keys set tokened quality`",
            "`quality = ...` under [sources.tokened.settings] in headwater.toml",
        ],
    }

    refused = headwater(env, "get", "tokened", "42", "--dest", str(tmp_path / "out"))
    assert refused.returncode == 2
    assert "source 'tokened' needs configuration: token: required, not set" in refused.stderr
    sample = tmp_path / "sample.txt"
    sample.write_text("still works")
    done = headwater(env, "get", "file", str(sample), "--dest", str(tmp_path / "out"))
    assert done.returncode == 0 and (tmp_path / "out" / "sample.txt").read_text() == "still works"


def test_settings_from_the_environment_and_the_config_file_by_alias(env: dict[str, str]) -> None:
    home = Path(env["HEADWATER_HOME"])
    (home / "headwater.toml").write_text(
        '[sources.tokened.settings]\nbase = "http://127.0.0.1:9"\nquality = "low"\n'
    )
    env = {**env, "HEADWATER_TOKENED_TOKEN": SECRET, "HEADWATER_TOKENED_QUALITY": "lossless"}
    (tokened,) = [s for s in json.loads(headwater(env, "sources", "--json").stdout) if s["name"] == "tokened"]
    assert tokened["status"] == "ok"
    found = {s["name"]: (s["value"], s["origin"]) for s in tokened["settings"]}
    assert found["token"] == (None, "environment variable HEADWATER_TOKENED_TOKEN")
    assert found["quality"] == ("lossless", "environment variable HEADWATER_TOKENED_QUALITY")
    assert found["base"] == (
        "http://127.0.0.1:9",
        f"[sources.tokened.settings] of config file {home / 'headwater.toml'}",
    )


def test_a_settings_table_for_an_unknown_source_exits_2(env: dict[str, str]) -> None:
    home = Path(env["HEADWATER_HOME"])
    (home / "headwater.toml").write_text("[sources.tokend.settings]\ntoken = 'x'\n")
    refused = headwater(env, "sources")
    assert refused.returncode == 2 and "unknown source 'tokend'" in refused.stderr
