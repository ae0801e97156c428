"""The builtin yt-dlp source, offline: yt-dlp's generic extractor against a media file on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from localhttp import LocalServer, Resource, Step, serving
from waiting import wait_until

from headwater import Engine, RatePolicy, SQLiteStore, State
from headwater_ytdlp import YtDlpSource, youtube_id

pytestmark = pytest.mark.timeout(60)

MEDIA = os.urandom(200_000)
VIDEO = {"content-type": "video/mp4"}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as srv:
        yield srv


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    # delay 0 so tests do not wait the 3 s default between downloads
    with Engine(
        tmp_path / "dest", plugins={"yt-dlp": YtDlpSource()}, policies={"yt-dlp": RatePolicy(1, 0)}
    ) as eng:
        yield eng


def test_downloads_a_direct_media_link(server, engine):
    pytest.importorskip("yt_dlp")
    url = server.add("/media/clip.mp4", Resource(MEDIA, headers=VIDEO))
    rid = engine.submit("youtube", url)
    rec = engine.wait([rid], timeout=50)[0]
    assert rec.state is State.COMPLETED, rec.error
    path = Path(rec.file_path)
    assert path.parent == engine.dest_dir
    assert path.name == "clip [clip].mp4"
    assert path.read_bytes() == MEDIA
    assert rec.extra == {"webpage_url": url}
    assert sorted(p.name for p in engine.dest_dir.iterdir()) == ["clip [clip].mp4"]


def slow_media(server: LocalServer) -> tuple[Resource, threading.Semaphore, str]:
    """A media file served a 10 kB chunk per release of the returned gate (the probe ungated)."""
    gate = threading.Semaphore(0)
    # the first request is the generic extractor's probe: let it through ungated
    slow = Resource(MEDIA, headers=VIDEO, gate=gate, chunk=10_000, script=[Step(ungated=True)])
    return slow, gate, server.add("/media/slow.mp4", slow)


def started_with_progress(engine: Engine, url: str, gate: threading.Semaphore) -> str:
    """Submit ``url``, let three chunks through, return the id once progress reached the record."""
    rid = engine.submit("yt-dlp", url)
    gate.release(3)
    wait_until(lambda: engine.get(rid).transferred != 0, 20, "no progress reached the record", step=0.02)
    return rid


def test_cancel_raises_inside_the_hook_and_removes_partials(server, engine):
    pytest.importorskip("yt_dlp")
    slow, gate, url = slow_media(server)
    rid = started_with_progress(engine, url, gate)
    assert engine.cancel(rid)
    gate.release(2)
    wait_until(
        lambda: not any(engine.dest_dir.iterdir()),
        20,
        lambda: f"left behind: {list(engine.dest_dir.iterdir())}",
        step=0.02,
    )
    assert engine.get(rid).state is State.CANCELLED
    assert len(slow.requests) == 2  # the probe and the one transfer the cancel stopped


def test_missing_yt_dlp_names_the_pip_command(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "yt_dlp", None)  # import yt_dlp now raises ImportError
    rec = engine.wait([engine.submit("soundcloud", "https://soundcloud.com/a/b")], timeout=10)[0]
    assert rec.state is State.FAILED
    assert "MissingDependencyError" in rec.error and "pip install 'headwater[ytdlp]'" in rec.error


def test_rate_policy_and_aliases(tmp_path):
    with Engine(tmp_path, plugins={"yt-dlp": YtDlpSource()}) as eng:
        (info,) = eng.sources()
    assert info.policy == RatePolicy(concurrency=1, delay=3.0)
    assert set(info.aliases) == {"youtube", "soundcloud", "ytdlp"}


def test_record_fields_at_submit(engine):
    rid = engine.submit("youtube", "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1")
    assert engine.get(rid).extra == {
        "webpage_url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1",
        "video_id": "dQw4w9WgXcQ",
    }
    engine.cancel(rid)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://youtu.be/dQw4w9WgXcQ?si=x", "dQw4w9WgXcQ"),
        ("https://m.youtube.com/shorts/dQw4w9WgXcQ", "dQw4w9WgXcQ"),
        ("https://www.youtube.com/embed/dQw4w9WgXcQ", "dQw4w9WgXcQ"),
        ("https://www.youtube.com/watch?v=short", None),
        ("https://evil.example/watch?v=dQw4w9WgXcQ", None),
        ("https://soundcloud.com/artist/track", None),
    ],
)
def test_youtube_id(url, expected):
    assert youtube_id(url) == expected


def test_non_http_target_is_refused(engine):
    rec = engine.wait([engine.submit("yt-dlp", "/etc/passwd")], timeout=10)[0]
    assert rec.state is State.FAILED and "not an http" in rec.error


def test_hostile_titles_go_through_the_sanitiser(server, engine):
    pytest.importorskip("yt_dlp")
    url = server.add("/media/CON%E2%80%AE..%2F..%2Fx.mp4", Resource(MEDIA, headers=VIDEO))
    rec = engine.wait([engine.submit("yt-dlp", url)], timeout=50)[0]
    assert rec.state is State.COMPLETED, rec.error
    path = Path(rec.file_path)
    assert path.parent == engine.dest_dir
    assert "\u202e" not in path.name and "/" not in path.name
    assert path.name.startswith("_CON")
    assert path.read_bytes() == MEDIA


def test_an_interrupt_keeps_the_partial_file_and_the_next_engine_continues_it(server, tmp_path):
    pytest.importorskip("yt_dlp")
    slow, gate, url = slow_media(server)
    journal, dest = tmp_path / "journal.sqlite3", tmp_path / "dest"
    policies = {"yt-dlp": RatePolicy(1, 0)}
    first = Engine(dest, plugins={"yt-dlp": YtDlpSource()}, policies=policies, store=SQLiteStore(journal))
    rid = started_with_progress(first, url, gate)
    stopper = threading.Thread(target=first.close, kwargs={"timeout": 20, "interrupt": True})
    stopper.start()
    while stopper.is_alive():  # a chunk at a time until the hook sees the stop
        gate.release(1)
        stopper.join(0.05)
    assert first.get(rid).state is State.QUEUED
    (part,) = dest.glob("*.part")
    kept = part.stat().st_size
    assert kept > 0

    gate.release(1000)
    with Engine(
        dest, plugins={"yt-dlp": YtDlpSource()}, policies=policies, store=SQLiteStore(journal)
    ) as again:
        rec = again.wait([rid], timeout=50)[0]
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == MEDIA
    assert slow.requests[-1].get("range") == f"bytes={kept}-"
