"""Safe defaults of `headwater serve`: token, Origin, Host, CORS, cookie, CSP, binds, the token file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from served import TOKEN, Served, serving

import headwater_file
from headwater import ServeError
from headwater._serve._security import SESSION_COOKIE, check_bind, check_cors_origins, is_loopback
from headwater._serve._state import ensure_token, read_token
from headwater._serve.run import BackgroundServer
from headwater.cli import main

pytestmark = pytest.mark.timeout(60)

LISTED = "https://dash.example"
FOREIGN = "http://evil.example"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("dest"), {"file": headwater_file}, cors_origins=[LISTED]) as server:
        yield server


def code_of(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def test_401_without_the_token(served: Served) -> None:
    with served.anonymous() as anonymous:
        for method, path in (
            ("GET", "/api/v1/health"),
            ("GET", "/api/v1/downloads"),
            ("POST", "/api/v1/downloads"),
            ("GET", "/api/v1/events"),
            ("POST", "/api/v1/sources/pause"),
            ("GET", "/api/v1/schema/openapi.json"),
        ):
            response = anonymous.request(method, path)
            assert response.status_code == 401 and code_of(response) == "unauthorized", path
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.get("/api/v1/health", headers={"authorization": f"Bearer {TOKEN[:-1]}x"})
        assert wrong.status_code == 401
        assert anonymous.get("/").status_code == 200  # the page itself holds no data
        assert anonymous.get("/static/app.js").status_code == 200
    assert "file" not in served.engine.paused()


def test_403_for_a_foreign_origin_on_changes_and_on_the_event_stream(served: Served) -> None:
    foreign = {"origin": FOREIGN}
    refused = served.http.post("/api/v1/sources/file/pause", headers=foreign)
    assert refused.status_code == 403 and code_of(refused) == "forbidden_origin"
    assert served.engine.paused() == []
    events = served.http.get("/api/v1/events", headers=foreign)
    assert events.status_code == 403 and code_of(events) == "forbidden_origin"
    assert served.http.delete("/api/v1/downloads/x", headers={"origin": "null"}).status_code == 403
    # The server's own origin, and requests without one (scripts), pass.
    own = served.http.post("/api/v1/sources/file/pause", headers={"origin": served.url})
    assert own.status_code == 200 and served.engine.paused() == ["file"]
    assert served.http.post("/api/v1/sources/file/resume").status_code == 200
    assert served.engine.paused() == []


def test_a_bad_host_is_refused(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{int(port) + 1}"):
        response = served.http.get("/api/v1/health", headers={"host": host})
        assert response.status_code == 400 and code_of(response) == "bad_host", host
    with served.anonymous() as anonymous:  # the page too: a rebinding page cannot even load it
        assert anonymous.get("/", headers={"host": f"evil.example:{port}"}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert served.http.get("/api/v1/health", headers={"host": host}).status_code == 200


def test_no_cors_for_other_origins_and_never_a_wildcard(served: Served) -> None:
    plain = served.http.get("/api/v1/health", headers={"origin": FOREIGN})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    preflight = served.http.options(
        "/api/v1/downloads", headers={"origin": FOREIGN, "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    listed = served.http.get("/api/v1/health", headers={"origin": LISTED})
    assert listed.headers["access-control-allow-origin"] == LISTED and listed.headers["vary"] == "Origin"
    preflight = served.http.options(
        "/api/v1/downloads", headers={"origin": LISTED, "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == LISTED
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    with pytest.raises(ServeError, match=r"'\*'"):
        check_cors_origins(["*"])
    with pytest.raises(ServeError, match="must look like"):
        check_cors_origins(["dash.example"])


def test_the_page_logs_in_once_and_gets_an_httponly_strict_cookie(served: Served) -> None:
    with served.anonymous() as page:
        assert page.post("/api/v1/session", json={"token": "wrong"}).status_code == 401
        login = page.post("/api/v1/session", json={"token": TOKEN})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert TOKEN not in cookie  # the cookie is a MAC of the token, never the token
        assert page.get("/api/v1/health").status_code == 200  # the cookie alone lets it in
        foreign = page.post("/api/v1/sources/file/pause", headers={"origin": FOREIGN})
        assert foreign.status_code == 403
        assert page.delete("/api/v1/session").status_code == 200
        assert page.get("/api/v1/health").status_code == 401


def test_the_page_has_a_content_security_policy(served: Served) -> None:
    with served.anonymous() as anonymous:
        page = anonymous.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert 'src="/static/app.js"' in page.text and "<script>" not in page.text


def test_a_non_loopback_bind_without_a_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HEADWATER_HOME", str(home))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr and "headwater token" in result.stderr
    assert not (home / "serve.token").exists()  # refused before anything was made
    assert not (home / "serve.json").exists()
    made = CliRunner().invoke(main, ["token"])
    assert made.exit_code == 0 and made.stdout.strip() == read_token(home / "serve.token")
    assert stat.S_IMODE((home / "serve.token").stat().st_mode) == 0o600
    assert CliRunner().invoke(main, ["token"]).stdout == made.stdout  # printed again, not replaced
    with pytest.raises(ServeError, match="without a token configured"):
        BackgroundServer(None, TOKEN, host="0.0.0.0", token_configured=False)  # type: ignore[arg-type]
    check_bind("0.0.0.0", True, "t")  # with a token configured it may
    check_bind("127.0.0.5", False, "t")  # loopback needs none
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.0.2.1")
    assert not is_loopback("myhost")


def test_the_token_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "home" / "serve.token"
    old = os.umask(0)  # even with no umask to help, the file is made 0600
    try:
        token = ensure_token(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and read_token(path) == token == ensure_token(path)
    assert ensure_token(path, new=True) != token
    path.chmod(0o644)
    with pytest.raises(ServeError, match="may be read by other users"):
        read_token(path)
