"""The http source against a hostile server on 127.0.0.1: resumes of another resource, stalls, leftovers.

Fixtures and helpers come from test_http.py (so their names are redefined as
test arguments: F811 is off here); the server is tests/localhttp.py.
"""
# ruff: noqa: F811

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest
from child_env import isolated_env
from click.testing import CliRunner
from localhttp import Resource, Step, serving
from test_cli import headwater_script
from test_http import body, fetch, http, leftovers, server  # noqa: F401 (fixtures)

from headwater import InvalidTargetError, State
from headwater._reader import read_records
from headwater.cli import main
from headwater_http import HttpSource

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(300_000)
STAMP = "Wed, 21 Oct 2015 07:28:00 GMT"


# -- a resumed response must be the rest of the same resource ------------------

#: After a drop at 100,000 bytes, a 206 for the rest that is not the rest of what the 200 announced.
NOT_THE_SAME = {
    "shorter total": ({}, Step(data=DATA[:200_000])),
    "longer total": ({}, Step(data=DATA + os.urandom(100_000))),
    "unknown total": ({}, Step(content_range="bytes 100000-299999/*")),
    "not to the end": ({}, Step(content_range="bytes 100000-199999/300000", length=100_000)),
    "other etag": ({}, Step(data=os.urandom(len(DATA)), etag='"v2"', ignore_if_range=True)),
    "other last-modified": (
        {"etag": None, "headers": {"last-modified": STAMP}},
        Step(
            data=os.urandom(len(DATA)),
            headers={"last-modified": "Thu, 22 Oct 2015 07:28:00 GMT"},
            ignore_if_range=True,
        ),
    ),
}


@pytest.mark.parametrize("case", list(NOT_THE_SAME))
def test_a_resumed_response_of_another_resource_restarts_from_zero(server, http, body, case):
    """The 206 is not appended: the download starts over and lands the whole resource as served."""
    resource, hostile = NOT_THE_SAME[case]
    res = Resource(DATA, script=[Step(drop_after=100_000), hostile], **resource)
    engine = http()
    rec = fetch(engine, server.add("/other.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert [r.get("range") for r in res.requests] == [None, "bytes=100000-", None]
    assert leftovers(engine) == ["other.bin"]
    body.check()


def test_a_server_that_keeps_resuming_another_resource_fails_with_integrity_error(server, http, body):
    """Out of restarts, a mismatch fails the download (IntegrityError, nothing kept), never COMPLETED."""
    res = Resource(DATA, script=[Step(drop_after=100_000), Step(data=DATA[:200_000])] * 3)
    engine = http(max_resumes=3)
    rec = fetch(engine, server.add("/short.bin", res))
    assert rec.state is State.FAILED
    assert "IntegrityError" in rec.error and "not the rest of the same resource" in rec.error, rec.error
    assert "its total is 200000, not the 300000 bytes announced" in rec.error, rec.error
    assert len(res.requests) == 4  # drop (resume 1), mismatch (restart 2), drop (3), mismatch: none left
    assert leftovers(engine) == []
    body.check()


def test_a_server_answering_every_request_with_a_wrong_206_does_not_loop(server, http):
    """The wrong 206 to the resume restarts the download; the 206 to the restart, which asked for
    the whole resource, fails it at once."""
    res = Resource(DATA, script=[Step(drop_after=100_000), *[Step(range_from=1000)] * 50])
    engine = http(max_resumes=3)
    rec = fetch(engine, server.add("/loop.bin", res))
    assert rec.state is State.FAILED, f"{len(res.requests)} requests"
    assert "TransferError: HTTP 206" in rec.error and "to a request for the whole resource" in rec.error
    assert [r.get("range") for r in res.requests] == [None, "bytes=100000-", None]
    assert leftovers(engine) == []


def test_a_connection_that_keeps_closing_early_fails_saying_so(server, http, body):
    """Content-Length longer than the body, then close, every time: the resume gets a 416, the
    restart breaks again. The error says the connection broke, where, and how often it was resumed."""
    res = Resource(DATA, script=[Step(length=len(DATA) + 1000)] * 10)
    engine = http(max_resumes=3)
    rec = fetch(engine, server.add("/early.bin", res))
    assert rec.state is State.FAILED
    assert "the connection broke 2 time(s), each time resumed (the last: connection broken" in rec.error
    assert f"after {len(DATA)} of {len(DATA) + 1000} announced bytes), and the server's" in rec.error
    assert f"(HTTP 416 to a range from byte {len(DATA)}); gave up after 3 resumes" in rec.error
    assert [r.get("range") for r in res.requests] == [None, f"bytes={len(DATA)}-"] * 2
    assert leftovers(engine) == []
    body.check()


# -- only an answer that carries the file is saved --------------------------------

#: Answers to a plain GET that are not the file: (the answer, words its error must hold).
NO_FILE = {
    "304": (Step(status=304), "HTTP 304 Not Modified", "none was made"),
    "302 without a Location": (Step(status=302), "HTTP 302 Found", "a redirect without a Location"),
    "204": (Step(status=204), "HTTP 204 No Content", "an answer without a body"),
    "206 to a request without Range": (Step(range_from=1000), "HTTP 206", "to a request for the whole"),
}


@pytest.mark.parametrize("case", list(NO_FILE))
def test_an_answer_that_is_not_the_file_fails_at_once_and_saves_nothing(server, http, case):
    step, status, why = NO_FILE[case]
    res = Resource(DATA, script=[step] * 3)
    engine = http()
    rec = fetch(engine, server.add("/nofile.bin", res))
    assert rec.state is State.FAILED, rec.file_path
    assert f"TransferError: {status}" in rec.error and why in rec.error, rec.error
    assert len(res.requests) == 1
    assert leftovers(engine) == []


def test_a_saved_record_of_another_length_is_not_resumed(server, http, body):
    """Across calls, a .part is continued only if the server still announces the recorded total."""
    res = Resource(DATA, script=[Step(drop_after=120_000)])
    url = server.add("/len.bin", res)
    engine = http(max_resumes=0)
    assert fetch(engine, url).state is State.FAILED
    assert leftovers(engine) == ["len.bin.part", "len.bin.part.json"]
    res.data = DATA[:250_000] + os.urandom(10_000)  # another length, the same ETag
    rec = fetch(engine, url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == res.data
    assert [r.get("range") for r in res.requests] == [None, None]
    assert leftovers(engine) == ["len.bin"]
    body.check()


def test_more_bytes_than_announced_fail_at_once(server, http):
    """A 206 without a length that runs past the announced total is cut off, not followed to its end."""
    res = Resource(
        DATA,
        script=[
            Step(drop_after=100_000),
            Step(data=DATA + os.urandom(500_000), content_range="bytes 100000-299999/300000", unframed=True),
        ],
    )
    engine = http(max_resumes=1)
    rec = fetch(engine, server.add("/more.bin", res))
    assert rec.state is State.FAILED
    assert "IntegrityError" in rec.error, rec.error
    assert leftovers(engine) == []


# -- a body that stops -----------------------------------------------------------


def test_a_body_that_keeps_stalling_fails_once_the_stall_timeout_is_spent(server, http, body):
    """Stalls add up over resumes: 0.3 s, then the 0.2 s left of 0.5 s, and the download fails."""
    res = Resource(DATA, script=[Step(stall_after=20_000)] * 10)
    engine = http(read_timeout=0.3, stall_timeout=0.5)
    rec = fetch(engine, server.add("/stall.bin", res))
    assert rec.state is State.FAILED
    assert "stalled" in rec.error and "0.5 s in total" in rec.error, rec.error
    assert len(res.requests) == 2, rec.error
    assert leftovers(engine) == ["stall.bin.part", "stall.bin.part.json"]  # kept for a later call
    body.check()


def test_the_stall_timeout_caps_a_longer_read_timeout(server, http):
    res = Resource(DATA, script=[Step(stall_after=50_000)])
    engine = http(read_timeout=30, stall_timeout=0.3)
    rec = fetch(engine, server.add("/cap.bin", res), timeout=10)
    assert rec.state is State.FAILED
    assert "stalled" in rec.error and "0.3 s in total" in rec.error, rec.error
    assert len(res.requests) == 1


def test_stalls_within_the_stall_timeout_are_resumed(server, http, body):
    res = Resource(DATA, script=[Step(stall_after=50_000), Step(stall_after=100_000)])
    rec = fetch(http(read_timeout=0.2, stall_timeout=1.0), server.add("/ok.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert [r.get("range") for r in res.requests] == [None, "bytes=50000-", "bytes=150000-"]
    body.check()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_a_stall_timeout_that_cannot_work_is_refused(bad):
    with pytest.raises(ValueError, match="stall_timeout must be a finite number of seconds > 0"):
        HttpSource(stall_timeout=bad)


# -- nothing of the resume record outlives its .part ----------------------------

#: What a killed process or a full disk leaves of a resume record: an empty or torn file.
TORN_RECORDS = {"empty": b"", "torn": b'{"url": "http://127.0.0.1'}


@pytest.mark.parametrize("record", list(TORN_RECORDS))
def test_a_torn_resume_record_is_gone_once_the_file_landed(server, http, record):
    url = server.add("/torn.bin", Resource(DATA))
    engine = http()
    engine.dest_dir.mkdir(parents=True, exist_ok=True)
    (engine.dest_dir / "torn.bin.part").write_bytes(DATA[:1000])
    (engine.dest_dir / "torn.bin.part.json").write_bytes(TORN_RECORDS[record])
    rec = fetch(engine, url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert leftovers(engine) == ["torn.bin"]


@pytest.mark.parametrize("record", list(TORN_RECORDS))
def test_a_torn_resume_record_is_gone_when_the_part_is_discarded(server, http, record):
    url = server.add("/bad.bin", Resource(DATA))
    engine = http()
    engine.dest_dir.mkdir(parents=True, exist_ok=True)
    (engine.dest_dir / "bad.bin.part.json").write_bytes(TORN_RECORDS[record])
    rec = fetch(engine, f"{url}#sha256={'0' * 64}")
    assert rec.state is State.FAILED and "IntegrityError" in rec.error, rec.error
    assert leftovers(engine) == []


def test_a_part_whose_record_cannot_be_written_is_not_kept(server, http):
    """A failed download whose resume record fails to write keeps no .part, and reports its own error.

    Something that is not a file (here a directory) at the record's name makes
    the write fail as a full disk would; it is not headwater's, so it stays.
    """
    url = server.add("/nowrite.bin", Resource(DATA, script=[Step(drop_after=100_000)]))
    engine = http(max_resumes=0)
    (engine.dest_dir / "nowrite.bin.part.json").mkdir(parents=True)
    rec = fetch(engine, url)
    assert rec.state is State.FAILED
    assert "connection broken" in rec.error, rec.error
    assert leftovers(engine) == ["nowrite.bin.part.json"]


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


def test_a_refused_target_says_what_was_queued_before_it(tmp_path, monkeypatch):
    """As the server's API does: the targets before the refused one stay queued, and the error says so."""
    home = tmp_path / "home"
    monkeypatch.setenv("HEADWATER_HOME", str(home))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "http")
    with serving() as srv:
        url = srv.add("/first.bin", Resource(DATA, gate=threading.Semaphore(0)))  # runs until stopped
        args = ["get", "http", url, f"{url}#sha256=zz", "--dest", str(tmp_path / "dest"), "-q"]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: '{url}#sha256=zz': the sha256 'zz' is not 64 hex digits")
    assert result.stderr.endswith(
        "; before it, 1 of 2 download(s) queued, 1 of them unfinished, which stay in the journal "
        "(run `headwater resume` to continue them); the other 1 were not queued\n"
    )
    (record,) = read_records(home / "journal.sqlite3")
    assert record.target == url and not record.state.terminal
