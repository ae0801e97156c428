"""A secret setting never leaks: a full command-line run at debug level, every output searched for it.

The ``tokened`` source (tests/token_plugin.py) does everything careless with
its token: logs it, sends it in the query string and a header, and fails
with an error quoting the whole request. The token is set with ``headwater
keys set`` and the server's address in headwater.toml; nothing may show the
token: not stdout or stderr of any command (``-vv`` included), not the
journal's files, not ``--json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote, quote_plus

import attrs
import pytest
from child_env import isolated_env
from child_env import run_headwater as run
from localhttp import LocalServer, Resource, Step
from token_plugin import install

from headwater import Engine, Job, hookimpl, setting
from headwater._redact import redact

#: The secret: with characters that URL-encoding changes, so the encoded form is searched for too.
SECRET = "s3cr3t/T0ken+x=QZ7"
FORMS = {SECRET, quote(SECRET, safe=""), quote_plus(SECRET)}

pytestmark = pytest.mark.timeout(120)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [form for form in FORMS if form.encode() in data]


def test_a_full_run_at_debug_level_never_shows_the_secret(tmp_path: Path) -> None:
    server = LocalServer()
    server.thread.start()
    track = Resource(b"x" * 2000, script=[Step(status=500)])  # fails once, then serves
    server.add("/track/42", track)
    home = tmp_path / "home"
    home.mkdir()
    policy = "[sources.tokened]\nretries = 1\nbackoff = 0\n"
    (home / "headwater.toml").write_text(f'{policy}\n[sources.tokened.settings]\nbase = "{server.url("")}"\n')
    env = {
        **isolated_env(tmp_path / "user"),
        "HEADWATER_HOME": str(home),
        "HEADWATER_LOAD_PLUGINS": "tokened",
        "PYTHONPATH": os.pathsep.join([str(install(tmp_path / "plugins")), os.environ.get("PYTHONPATH", "")]),
    }
    dest = str(tmp_path / "out")
    runs = [
        run(env, "keys", "set", "tokened", "token", stdin=SECRET + "\n"),
        run(env, "-vv", "sources"),
        run(env, "-vv", "sources", "--json"),
        run(env, "-vv", "get", "tokened", "42", "missing", "--dest", dest),
        run(env, "-vv", "get", "tokened", "42", "--json", "--dest", dest),
        run(env, "-vv", "status"),
        run(env, "-vv", "status", "--json"),
        run(env, "-vv", "keys", "list"),
    ]
    try:
        server.httpd.shutdown()
    finally:
        server.httpd.server_close()

    keys_set, _, listing, first, second, status, status_json, keys_list = runs
    assert keys_set.returncode == 0, keys_set.stderr
    assert first.returncode == 1, first.stderr  # "missing" failed (404)
    assert second.returncode == 0, second.stderr
    # The secret was really in play: the server got it, and the error and logs that held it were redacted.
    assert {r["authorization"] for r in track.requests} == {f"Bearer {SECRET}"}
    assert "missing: failed: TransferError: GET" in first.stderr and "token=***" in first.stderr
    assert "Bearer ***" in first.stderr and "Traceback" in first.stderr  # the debug traceback, redacted
    assert "HTTP Request: GET" in first.stderr  # httpx's own log line, redacted by the handler's filter
    assert "token='***'" in first.stderr  # the settings' repr
    assert '"secret": true' in listing.stdout and "track 42" in status.stdout
    assert "tokened token" in keys_list.stdout

    for done in runs:
        assert leaks(done.stdout) == [] and leaks(done.stderr) == [], done.args
    journal_files = [p for p in home.rglob("*") if p.is_file() and p.name != "secrets.json"]
    assert any(p.name == "journal.sqlite3" for p in journal_files)
    for path in journal_files:
        assert leaks(path.read_bytes()) == [], path
    assert leaks((home / "secrets.json").read_bytes()) == [SECRET]  # where it belongs, and only there
    assert status_json.returncode == 0 and "***" in status_json.stdout


def test_an_invalid_secret_is_named_without_its_value(tmp_path: Path) -> None:
    env = {
        **isolated_env(tmp_path / "user"),
        "HEADWATER_HOME": str(tmp_path / "home"),
        "HEADWATER_LOAD_PLUGINS": "tokened",
        "PYTHONPATH": str(install(tmp_path / "plugins")),
        "HEADWATER_TOKENED_BASE": "http://127.0.0.1:9",
    }
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "headwater.toml").write_text(f"[sources.tokened.settings]\ntoken = [{SECRET!r}]\n")
    listing = run(env, "-vv", "sources")
    assert listing.returncode == 0, listing.stderr
    assert "token: not a valid str, in [sources.tokened.settings] of config file" in listing.stdout
    refused = run(env, "get", "tokened", "1")
    assert refused.returncode == 2 and "needs configuration: token: not a valid str" in refused.stderr
    for done in (listing, refused):
        assert leaks(done.stdout) == [] and leaks(done.stderr) == []


@attrs.frozen
class TokenOnly:
    token: str = setting(secret=True)


class Careless:
    """Logs its token on ctx.logger, then fails with an error quoting it."""

    @hookimpl
    def settings_schema(self) -> type:
        return TokenOnly

    @hookimpl
    def download_impl(self, job: Job, ctx) -> None:
        ctx.logger.warning("using token %s for %s", ctx.settings.token, job.target)
        raise RuntimeError(f"GET /track/{job.target}?token={quote_plus(ctx.settings.token)} refused")


def test_the_library_redacts_what_a_source_logs_and_raises_while_the_engine_is_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = {"careless": {"token": SECRET}}
    with Engine(tmp_path, {"careless": Careless()}, settings=settings) as engine:
        record = engine.wait([engine.submit("careless", "7")], timeout=10)[0]
        assert redact(f"x{SECRET}y") == "x***y"
        with Engine(tmp_path, {"careless": Careless()}, settings=settings):
            pass  # a second engine holding the same secret closes first: it stays redacted
        assert redact(SECRET) == "***"
    assert record.error == "RuntimeError: GET /track/7?token=*** refused"
    assert "using token *** for 7" in caplog.text and "Traceback" in caplog.text
    assert leaks(caplog.text) == []
    assert redact(SECRET) == SECRET  # every engine holding it has closed
