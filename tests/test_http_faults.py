"""The http source against bad input and a hostile server on 127.0.0.1.

Fixtures and helpers come from test_http.py (so their names are redefined as
test arguments: F811 is off here); the server is tests/localhttp.py.
"""
# ruff: noqa: F811

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from child_env import isolated_env
from localhttp import Resource, serving
from test_cli import headwater_script
from test_http import fetch, http, server  # noqa: F401 (fixtures)

from headwater import InvalidTargetError, State

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(300_000)


# -- a malformed target is refused at submit --------------------------------------


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("http://127.0.0.1:9/x.bin#sha256=zz", "64 hex digits"),
        (f"http://127.0.0.1:9/x.bin#sha256={'a' * 63}", "64 hex digits"),
        ("HTTPS://127.0.0.1:9/x.bin#md5=00", "not a checksum"),
        ("http:///x.bin", "names no host"),
    ],
)
def test_a_malformed_url_is_refused_at_submit(http, target, problem):
    engine = http()
    with pytest.raises(InvalidTargetError) as raised:
        engine.submit("https", target)
    assert repr(target) in str(raised.value) and problem in str(raised.value)
    assert engine.records() == []


def test_the_cli_refuses_a_malformed_checksum_with_exit_2(tmp_path):
    with serving() as srv:
        url = srv.add("/x.bin", Resource(DATA))
        done = subprocess.run(
            [headwater_script(), "get", "http", f"{url}#sha256=zz", "--dest", str(tmp_path / "dest")],
            capture_output=True,
            text=True,
            env=isolated_env(tmp_path / "home"),
            timeout=60,
        )
        assert srv.resources["/x.bin"].requests == []
    assert done.returncode == 2, done.stderr
    assert "sha256=zz" in done.stderr and "64 hex digits" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "dest").exists() or list((tmp_path / "dest").iterdir()) == []


def test_a_good_checksum_is_still_accepted(server, http):
    url = server.add("/good.bin", Resource(DATA))
    rec = fetch(http(), f"{url}#sha256={hashlib.sha256(DATA).hexdigest().upper()}")
    assert rec.state is State.COMPLETED, rec.error
