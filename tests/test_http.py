"""The builtin http source against a real server on 127.0.0.1."""

from __future__ import annotations

import gc
import hashlib
import http.cookiejar as http_cookiejar
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from localhttp import LocalServer, Resource, Step, TLSContexts, serving, tls_contexts
from waiting import wait_until

import headwater_http
import headwater_http.direct as direct
import headwater_http.transfer as transfer
from headwater import Engine, InvalidTargetError, State
from headwater_http import HttpSource
from headwater_http.naming import parse_target, retry_after_seconds
from headwater_http.tls import default_context as tls_default

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(300_000)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as srv:
        yield srv


@pytest.fixture(scope="module")
def tls() -> TLSContexts:
    """One throwaway CA for the module: a server context for 127.0.0.1 and a client context trusting it."""
    return tls_contexts()


@pytest.fixture
def tls_server(tls: TLSContexts) -> Iterator[LocalServer]:
    """A :class:`LocalServer` speaking HTTPS with a certificate from the ``tls`` CA."""
    with serving(tls.server) as srv:
        yield srv


@pytest.fixture
def http(make_engine: Callable[..., Engine]) -> Callable[..., Engine]:
    """An engine whose only source is an HttpSource built with the given settings."""

    def build(**settings: object) -> Engine:
        settings.setdefault("read_timeout", 5.0)
        return make_engine({"http": HttpSource(**settings)})  # type: ignore[arg-type]

    return build


class BodyPath:
    """Which reader carries response bodies in a test, counting what direct.py's reader did."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct
        self.bodies = 0  # bodies direct.py's reader took over
        self.views = 0  # pieces it handed out

    def check(self) -> None:
        """Fail unless the bodies went the way this path names."""
        assert (self.bodies > 0) == self.direct, f"direct={self.direct} but {self.bodies} direct bodies"


def count_direct_reads(monkeypatch: pytest.MonkeyPatch, path: BodyPath) -> None:
    """Count, in ``path``, the bodies and pieces that direct.py's reader hands to the transfer."""
    real = transfer.read_body

    def counted(*args: Any) -> Iterator[memoryview]:
        path.bodies += 1
        for view in real(*args):
            path.views += 1
            yield view

    monkeypatch.setattr(transfer, "read_body", counted)


@pytest.fixture(params=["h11", "direct"])
def body(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> BodyPath:
    """Run the test with bodies read through httpx (h11) and again straight from the socket.

    For "direct", every body of at least 1 byte takes direct.py's reader
    (instead of only those of 4 MiB and up).
    """
    path = BodyPath(request.param == "direct")
    if path.direct:
        monkeypatch.setattr(direct, "DIRECT_MIN_BYTES", 1)
    count_direct_reads(monkeypatch, path)
    return path


def fetch(engine: Engine, url: str, timeout: float = 30) -> object:
    return engine.wait([engine.submit("http", url)], timeout=timeout)[0]


def leftovers(engine: Engine) -> list[str]:
    return sorted(p.name for p in engine.dest_dir.iterdir())


def test_plain_download(server, http, body):
    url = server.add("/files/data.bin", Resource(DATA))
    engine = http()
    rec = fetch(engine, url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path) == engine.dest_dir / "data.bin"
    assert Path(rec.file_path).read_bytes() == DATA
    assert (rec.size, rec.transferred) == (len(DATA), len(DATA))
    assert leftovers(engine) == ["data.bin"]
    body.check()


def test_https_alias_and_bad_targets(server, http):
    """Another scheme fails when run (a chain moves on); malformed http URLs: test_http_faults.py."""
    engine = http()
    assert engine.sources()[0].aliases == ("https",)
    rec = engine.wait([engine.submit("https", "ftp://example.org/x")], timeout=10)[0]
    assert rec.state is State.FAILED
    assert "InvalidTargetError" in rec.error and "not an http" in rec.error
    with pytest.raises(InvalidTargetError):
        parse_target("file:///etc/passwd")


def test_resume_after_drop_mid_body(server, http, body):
    res = Resource(DATA, script=[Step(drop_after=100_000)])
    url = server.add("/d.bin", res)
    rec = fetch(http(), url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert len(res.requests) == 2
    assert res.requests[1]["range"] == "bytes=100000-"
    assert res.requests[1]["if-range"] == '"v1"'
    body.check()


def test_resume_with_last_modified_when_etag_is_weak(server, http):
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    res = Resource(DATA, etag='W/"weak"', headers={"last-modified": stamp}, script=[Step(drop_after=1000)])
    rec = fetch(http(), server.add("/lm.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert res.requests[1]["if-range"] == stamp


def test_no_validator_means_no_range_request(server, http):
    res = Resource(DATA, etag=None, script=[Step(drop_after=1000)])
    rec = fetch(http(), server.add("/nv.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert "range" not in res.requests[1]


def test_server_ignoring_range_restarts_cleanly(server, http, body):
    res = Resource(DATA, script=[Step(drop_after=100_000), Step(ignore_range=True)])
    rec = fetch(http(), server.add("/ir.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert res.requests[1]["range"] == "bytes=100000-"
    body.check()


def test_a_206_from_the_wrong_offset_restarts_cleanly(server, http, body):
    """A 206 whose Content-Range starts elsewhere than asked is not appended; the download starts over."""
    res = Resource(DATA, script=[Step(drop_after=100_000), Step(range_from=50_000)])
    rec = fetch(http(), server.add("/wr.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert [r.get("range") for r in res.requests] == [None, "bytes=100000-", None]
    body.check()


def test_changed_resource_restarts_cleanly(server, http, body):
    new = os.urandom(200_000)
    res = Resource(DATA, script=[Step(drop_after=100_000), Step(data=new, etag='"v2"')])
    rec = fetch(http(), server.add("/ch.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == new
    body.check()


def test_resume_across_calls_from_the_part_file(server, http, body):
    res = Resource(DATA, script=[Step(drop_after=120_000)])
    url = server.add("/x.bin", res)
    engine = http(max_resumes=0)
    first = fetch(engine, url)
    assert first.state is State.FAILED and "connection broken" in first.error
    assert leftovers(engine) == ["x.bin.part", "x.bin.part.json"]
    assert (engine.dest_dir / "x.bin.part").stat().st_size == 120_000
    second = fetch(engine, url)
    assert second.state is State.COMPLETED, second.error
    assert Path(second.file_path).read_bytes() == DATA
    assert res.requests[-1]["range"] == "bytes=120000-"
    assert leftovers(engine) == ["x.bin"]
    body.check()


@pytest.mark.parametrize("part_bytes", [None, b""], ids=["no-part", "empty-part"])
def test_a_resume_record_left_without_bytes_is_removed(server, http, part_bytes):
    """A record whose .part is gone or empty resumes nothing, and does not outlive the download."""
    res = Resource(DATA)
    url = server.add("/rec.bin", res)
    engine = http()
    engine.dest_dir.mkdir(parents=True, exist_ok=True)
    if part_bytes is not None:
        (engine.dest_dir / "rec.bin.part").write_bytes(part_bytes)
    record = {"url": url, "validator": '"v1"', "total": len(DATA)}
    (engine.dest_dir / "rec.bin.part.json").write_text(json.dumps(record))
    rec = fetch(engine, url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert "range" not in res.requests[0]
    assert leftovers(engine) == ["rec.bin"]


def test_a_part_without_a_matching_record_restarts_from_zero(server, http, body):
    """Bytes of unknown origin in a .part are dropped, never prefixed to the new body."""
    res = Resource(DATA)
    url = server.add("/old.bin", res)
    engine = http()
    engine.dest_dir.mkdir(parents=True, exist_ok=True)
    (engine.dest_dir / "old.bin.part").write_bytes(b"bytes from some other download")
    rec = fetch(engine, url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert [r.get("range") for r in res.requests] == [None]
    assert leftovers(engine) == ["old.bin"]
    body.check()


def test_wrong_content_length_fails(server, http, body):
    res = Resource(DATA, script=[Step(length=len(DATA) + 5000) for _ in range(10)])
    engine = http(max_resumes=2)
    rec = fetch(engine, server.add("/wl.bin", res))
    assert rec.state is State.FAILED
    assert f"{len(DATA)} of {len(DATA) + 5000} announced bytes" in rec.error
    assert not (engine.dest_dir / "wl.bin").exists()
    assert len(res.requests) == 3  # a break (resume 1), a refused range (restart 2), a break with none left
    body.check()


def test_checksum_match_and_mismatch(server, http):
    url = server.add("/sum.bin", Resource(DATA))
    engine = http()
    good = fetch(engine, f"{url}#sha256={hashlib.sha256(DATA).hexdigest()}")
    assert good.state is State.COMPLETED, good.error
    os.unlink(good.file_path)
    bad = fetch(engine, f"{url}#sha256={'0' * 64}")
    assert bad.state is State.FAILED
    assert "IntegrityError" in bad.error and "sha256" in bad.error
    assert leftovers(engine) == []


def test_429_retry_after_is_waited_out(server, http):
    res = Resource(DATA, script=[Step(status=429, headers={"retry-after": "1"})])
    url = server.add("/busy.bin", res)
    started = time.monotonic()
    rec = fetch(http(), url)
    assert rec.state is State.COMPLETED, rec.error
    assert time.monotonic() - started >= 0.9
    assert len(res.requests) == 2


def test_long_retry_after_fails_saying_when(server, http):
    res = Resource(DATA, script=[Step(status=503, headers={"retry-after": "120"})])
    rec = fetch(http(), server.add("/later.bin", res))
    assert rec.state is State.FAILED
    assert "RetryAfter" in rec.error and "retry after 120 s" in rec.error
    assert len(res.requests) == 1


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_client_errors_fail_at_once(server, http, status):
    res = Resource(DATA, script=[Step(status=status)])
    rec = fetch(http(), server.add("/e.bin", res))
    assert rec.state is State.FAILED and f"HTTP {status}" in rec.error
    assert len(res.requests) == 1


def test_stall_is_detected_and_resumed(server, http, body):
    res = Resource(DATA, script=[Step(stall_after=50_000)])
    rec = fetch(http(read_timeout=0.3), server.add("/st.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert res.requests[1]["range"] == "bytes=50000-"
    body.check()


def test_stall_without_resumes_fails(server, http, body):
    res = Resource(DATA, script=[Step(stall_after=50_000)])
    rec = fetch(http(read_timeout=0.3, max_resumes=0), server.add("/st2.bin", res))
    assert rec.state is State.FAILED and "stalled" in rec.error
    body.check()


def test_connection_refused_fails_clearly(http):
    with serving() as srv:
        url = srv.url("/gone.bin")
    rec = fetch(http(connect_timeout=1), url)
    assert rec.state is State.FAILED and "could not connect" in rec.error


def test_retry_after_http_date():
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert retry_after_seconds("soon") is None


def test_cancel_takes_effect_within_one_chunk(server, http, body):
    gate = threading.Semaphore(0)
    res = Resource(DATA, gate=gate, chunk=10_000)
    url = server.add("/slow.bin", res)
    engine = http()
    rid = engine.submit("http", url)
    gate.release(2)
    wait_until(
        lambda: engine.get(rid).transferred >= 20_000, 10, "the first two chunks never arrived", step=0.01
    )
    assert (engine.dest_dir / "slow.bin.part").exists()
    assert engine.cancel(rid)
    gate.release(1)  # exactly one more chunk: the source must notice the cancel on it
    wait_until(
        lambda: not (engine.dest_dir / "slow.bin.part").exists(),
        5,
        "the transfer went on after the cancel",
        step=0.01,
    )
    assert engine.get(rid).state is State.CANCELLED
    assert leftovers(engine) == []
    body.check()


def test_direct_body_split_across_many_reads(server, http, monkeypatch):
    path = BodyPath(direct=True)
    monkeypatch.setattr(direct, "DIRECT_MIN_BYTES", 1)
    monkeypatch.setattr(direct, "BUFFER_BYTES", 4096)
    count_direct_reads(monkeypatch, path)
    rec = fetch(http(), server.add("/many.bin", Resource(DATA, chunk=1000)))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert path.bodies == 1 and path.views >= (len(DATA) - 65536) // 4096


@pytest.mark.parametrize("size_past_threshold", [-1, 0])
def test_only_bodies_from_the_threshold_up_go_direct(server, http, monkeypatch, size_past_threshold):
    path = BodyPath(direct=size_past_threshold >= 0)
    count_direct_reads(monkeypatch, path)
    data = os.urandom(direct.DIRECT_MIN_BYTES + size_past_threshold)
    rec = fetch(http(), server.add("/edge.bin", Resource(data)))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == data
    path.check()


def test_compressed_bodies_stay_with_httpx(server, http, monkeypatch):
    path = BodyPath(direct=False)
    monkeypatch.setattr(direct, "DIRECT_MIN_BYTES", 1)
    count_direct_reads(monkeypatch, path)
    res = Resource(DATA, headers={"content-encoding": "gzip"})
    rec = fetch(http(), server.add("/gz.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA  # raw bytes, as served
    path.check()


def test_a_connection_read_directly_is_not_reused(server, http, monkeypatch):
    small = server.add("/s.bin", Resource(DATA[:1000]))
    engine = http()
    for _ in range(2):
        assert fetch(engine, small).state is State.COMPLETED
    assert len(set(server.resources["/s.bin"].peers)) == 1  # httpx keeps a connection it read to the end

    monkeypatch.setattr(direct, "DIRECT_MIN_BYTES", 1)
    res = Resource(DATA)
    url = server.add("/big.bin", res)
    for _ in range(2):
        rec = fetch(engine, url)
        assert rec.state is State.COMPLETED, rec.error
        assert Path(rec.file_path).read_bytes() == DATA
        os.unlink(rec.file_path)
    assert len(set(res.peers)) == 2


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_large_bodies_are_handed_to_the_disk_as_they_arrive(server, http, monkeypatch, body):
    monkeypatch.setattr(transfer, "WRITEBACK_BYTES", 65536)
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def recorded(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recorded)
    rec = fetch(http(), server.add("/wb.bin", Resource(DATA)))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    ends = [length for _, length, _ in advised]
    # One call each time 64 KiB more have been written since the last: never sooner, and
    # less than 64 KiB left without one at the end (how many depends on the chunk sizes).
    assert all(later - earlier >= 65536 for earlier, later in pairwise([0, *ends]))
    assert ends and 0 <= len(DATA) - ends[-1] < 65536
    assert {(offset, advice) for offset, _, advice in advised} == {(0, os.POSIX_FADV_DONTNEED)}
    body.check()


def test_two_downloads_of_one_name_at_once_write_two_parts_and_land_two_files(server, http):
    gate = threading.Semaphore(0)
    url = server.add("/same.bin", Resource(DATA, gate=gate, chunk=50_000))
    engine = http()
    ids = [engine.submit("http", url), engine.submit("http", url)]
    parts = [engine.dest_dir / "same.bin.part", engine.dest_dir / "same (1).bin.part"]
    wait_until(  # both are writing, each its own .part
        lambda: all(p.exists() for p in parts), 10, lambda: list(engine.dest_dir.iterdir()), step=0.01
    )
    gate.release(100)
    records = engine.wait(ids, timeout=20)
    assert all(r.state is State.COMPLETED for r in records), [r.error for r in records]
    assert {Path(r.file_path).name for r in records} == {"same.bin", "same (1).bin"}
    assert all(Path(r.file_path).read_bytes() == DATA for r in records)
    assert sorted(p.name for p in engine.dest_dir.iterdir()) == ["same (1).bin", "same.bin"]


def test_large_bodies_write_the_resume_record_before_the_first_byte(server, http, monkeypatch):
    monkeypatch.setattr(transfer, "EARLY_META_BYTES", 100_000)
    gate = threading.Semaphore(0)
    url = server.add("/big.bin", Resource(DATA, gate=gate, chunk=50_000))
    small = server.add("/small.bin", Resource(DATA[:50_000], gate=gate, chunk=50_000))
    engine = http()
    big_id = engine.submit("http", url)
    small_id = engine.submit("http", small)
    meta = engine.dest_dir / "big.bin.part.json"
    wait_until(
        lambda: meta.exists() and (engine.dest_dir / "small.bin.part").exists(),
        10,
        lambda: leftovers(engine),
        step=0.01,
    )
    assert not (engine.dest_dir / "small.bin.part.json").exists()
    gate.release(100)
    recs = engine.wait([big_id, small_id], timeout=20)
    assert all(r.state is State.COMPLETED for r in recs)
    assert leftovers(engine) == ["big.bin", "small.bin"]


def test_name_comes_from_the_final_url_after_redirects(server, http):
    real = server.add("/files/real.bin", Resource(DATA))
    hop = server.add("/go", Resource(b"", script=[Step(status=302, headers={"location": real})]))
    rec = fetch(http(), hop)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).name == "real.bin"


def test_a_cookie_set_by_a_redirect_is_sent_to_the_next_hop(server, http):
    real = server.add("/files/real.bin", Resource(DATA))
    headers = {"location": real, "set-cookie": "session=abc; Path=/"}
    hop = server.add("/go", Resource(b"", script=[Step(status=302, headers=headers)]))
    rec = fetch(http(), hop)
    assert rec.state is State.COMPLETED, rec.error
    assert server.resources["/files/real.bin"].requests[0].get("cookie") == "session=abc"


def test_the_cookie_jar_reads_only_responses_that_set_a_cookie(server, http, monkeypatch):
    read: list[str] = []
    real = http_cookiejar.CookieJar.extract_cookies

    def counted(self: http_cookiejar.CookieJar, response: Any, request: Any) -> None:
        read.append(request.get_full_url())
        real(self, response, request)

    monkeypatch.setattr(http_cookiejar.CookieJar, "extract_cookies", counted)
    plain = server.add("/files/plain.bin", Resource(DATA))
    setting = server.add("/files/setting.bin", Resource(DATA, headers={"set-cookie": "k=v; Path=/"}))
    engine = http()
    assert fetch(engine, plain).state is State.COMPLETED
    assert fetch(engine, setting).state is State.COMPLETED
    assert read == [setting]


def test_redirect_loop_fails_clearly(server, http):
    loop = server.url("/loop")
    server.add("/loop", Resource(b"", script=[Step(status=302, headers={"location": loop})] * 30))
    rec = fetch(http(), loop)
    assert rec.state is State.FAILED and "TransferError" in rec.error and "redirect" in rec.error.lower()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="report 2024.pdf"', "report 2024.pdf"),
        ("attachment; filename*=UTF-8''%E2%82%AC%20rates.txt; filename=\"rates.txt\"", "\u20ac rates.txt"),
        ("inline", "fallback.bin"),
    ],
)
def test_content_disposition_names(server, http, header, expected):
    url = server.add("/dl/fallback.bin", Resource(DATA, headers={"content-disposition": header}))
    rec = fetch(http(), url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).name == expected


def _proxy_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Set exactly these proxy variables (both spellings cleared first)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_proxies_come_from_the_environment(server, http, monkeypatch):
    """HTTP_PROXY sends requests through the proxy; NO_PROXY lets a host go direct."""
    with socket.socket() as probe:  # a port nothing listens on: a direct request is refused
        probe.bind(("127.0.0.1", 0))
        origin = f"http://127.0.0.1:{probe.getsockname()[1]}/via/proxy.bin"
    res = Resource(DATA)
    server.resources[origin] = res  # a proxy receives the absolute URL as the request target
    _proxy_env(monkeypatch, HTTP_PROXY=server.url(""))
    rec = fetch(http(), origin)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert len(res.requests) == 1
    _proxy_env(monkeypatch, HTTP_PROXY=server.url(""), NO_PROXY="127.0.0.1")
    rec = fetch(http(), origin)
    assert rec.state is State.FAILED and "could not connect" in rec.error, rec.error
    assert len(res.requests) == 1


def test_each_worker_thread_has_its_own_client_closed_when_the_thread_ends() -> None:
    """No connection pool (and its lock) is shared between threads; none outlives its thread."""
    source = HttpSource()
    seen: dict[str, list[Any]] = {}
    in_a = threading.Event()
    b_done = threading.Event()

    def use(name: str) -> None:
        seen[name] = [source.client(), source.client()]
        if name == "a":
            in_a.set()
            b_done.wait(10)  # both threads alive at once

    a = threading.Thread(target=use, args=("a",))
    a.start()
    in_a.wait(10)
    b = threading.Thread(target=use, args=("b",))
    b.start()
    b.join(10)
    b_done.set()
    a.join(10)
    (a1, a2), (b1, _) = seen["a"], seen["b"]
    assert a1 is a2 and a1 is not b1
    del a, b  # the finalizer runs once the ended thread is gone
    gc.collect()
    assert a1.is_closed and b1.is_closed


# -- HTTPS -------------------------------------------------------------------


def wait_for_parts(engine: Engine, names: list[str], timeout: float = 10) -> None:
    """Return once every ``<name>.part`` exists in the engine's destination at the same time."""
    wait_until(
        lambda: all((engine.dest_dir / f"{name}.part").exists() for name in names),
        timeout,
        lambda: leftovers(engine),
        step=0.01,
    )


def test_https_with_a_given_ssl_context_on_every_worker_thread(
    tls: TLSContexts, tls_server: LocalServer, http: Callable[..., Engine]
) -> None:
    """Every worker thread's client verifies with the given context (a client without it cannot connect)."""
    gate = threading.Semaphore(0)
    files = {f"t{i}.bin": os.urandom(100_000 + i) for i in range(4)}
    resources = {name: Resource(data, gate=gate, chunk=25_000) for name, data in files.items()}
    urls = [tls_server.add(f"/tls/{name}", res) for name, res in resources.items()]
    assert all(url.startswith("https://127.0.0.1:") for url in urls)
    engine = http(ssl_context=tls.client, concurrency=4)
    ids = [engine.submit("https", url) for url in urls]
    # Each .part appears once its response headers arrived, i.e. after a verified handshake; the
    # gate holds every body back, so four at once means four threads, each with its own client.
    wait_for_parts(engine, list(files))
    gate.release(1000)
    recs = engine.wait(ids, timeout=30)
    for rec, (name, data) in zip(recs, files.items(), strict=True):
        assert rec.state is State.COMPLETED, rec.error
        assert Path(rec.file_path) == engine.dest_dir / name
        assert Path(rec.file_path).read_bytes() == data
    assert len({port for res in resources.values() for port in res.peers}) == 4  # four TLS connections
    assert leftovers(engine) == sorted(files)


def test_the_default_context_is_made_once_and_never_changed_by_connections(
    tls: TLSContexts,
    tls_server: LocalServer,
    http: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Four threads' TLS connections share one default context, which httpcore's ALPN call leaves alone."""
    ca_file = tmp_path / "ca.pem"
    tls.ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the default context trusts the test CA
    made: list[ssl.SSLContext] = []

    def counted_default() -> ssl.SSLContext:
        made.append(tls_default())
        return made[-1]

    monkeypatch.setattr(headwater_http, "default_context", counted_default)
    alpn_sets: list[list[str]] = []
    real_set = ssl.SSLContext.set_alpn_protocols

    def counted(self: ssl.SSLContext, protocols: list[str]) -> None:
        alpn_sets.append(list(protocols))
        real_set(self, protocols)

    monkeypatch.setattr(ssl.SSLContext, "set_alpn_protocols", counted)
    gate = threading.Semaphore(0)
    files = {f"d{i}.bin": os.urandom(50_000 + i) for i in range(4)}
    resources = {name: Resource(data, gate=gate, chunk=25_000) for name, data in files.items()}
    engine = http(concurrency=4)
    ids = [engine.submit("https", tls_server.add(f"/d/{name}", res)) for name, res in resources.items()]
    wait_for_parts(engine, list(files))  # four handshakes done, one per thread
    gate.release(1000)
    recs = engine.wait(ids, timeout=30)
    assert [r.state for r in recs] == [State.COMPLETED] * 4, [r.error for r in recs]
    assert len({port for res in resources.values() for port in res.peers}) == 4  # four TLS connections
    assert len(made) == 1
    assert alpn_sets == [["http/1.1"]]  # set once, before sharing; the four connections changed nothing


def test_a_certificate_for_another_host_name_fails_saying_so(
    tls: TLSContexts, tls_server: LocalServer, http: Callable[..., Engine]
) -> None:
    """A certificate for 127.0.0.1 fetched as localhost fails, without the CA hint (its CA is trusted)."""
    url = tls_server.add("/host.bin", Resource(DATA)).replace("127.0.0.1", "localhost")
    rec = fetch(http(ssl_context=tls.client), url)
    assert rec.state is State.FAILED
    assert "TLS certificate verify failed: " in rec.error and "localhost" in rec.error, rec.error
    assert "ssl_context" not in rec.error


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_large_bodies_are_read_directly_over_plain_http_only(
    tls: TLSContexts, http: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """A body past the direct reader's threshold goes through httpx when it comes over TLS."""
    path = BodyPath(direct=scheme == "http")
    count_direct_reads(monkeypatch, path)
    data = os.urandom(direct.DIRECT_MIN_BYTES + 1000)
    with serving(tls.server if scheme == "https" else None) as srv:
        url = srv.add("/large.bin", Resource(data, chunk=256 << 10))
        assert url.startswith(f"{scheme}://")
        rec = fetch(http(ssl_context=tls.client), url)
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == data
    path.check()


def test_resume_after_drop_mid_body_over_tls(
    tls: TLSContexts, tls_server: LocalServer, http: Callable[..., Engine]
) -> None:
    """A TLS connection closed mid-body (no close_notify) is resumed with a Range like a plain one."""
    res = Resource(DATA, script=[Step(drop_after=100_000)])
    rec = fetch(http(ssl_context=tls.client), tls_server.add("/tls-drop.bin", res))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == DATA
    assert len(res.requests) == 2
    assert res.requests[1]["range"] == "bytes=100000-"
    assert res.requests[1]["if-range"] == '"v1"'


def test_default_context_refuses_an_untrusted_certificate(
    tls_server: LocalServer, http: Callable[..., Engine]
) -> None:
    """Without ``ssl_context`` the source trusts certifi's CAs only: a private CA's certificate fails."""
    res = Resource(DATA)
    url = tls_server.add("/untrusted.bin", res)
    engine = http()
    rec = fetch(engine, url)
    assert rec.state is State.FAILED
    assert "TransferError: TLS certificate verify failed: " in rec.error, rec.error
    assert "ssl_context" in rec.error  # says how to trust the CA
    assert url in rec.error
    assert res.requests == []  # no request got past the handshake
    assert leftovers(engine) == []
