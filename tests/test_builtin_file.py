"""The builtin file source, found through its entry point like any other source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headwater import Engine, State

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADWATER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file")
    with Engine(tmp_path / "dest") as engine:
        yield engine


def test_file_source_is_discovered_and_copies(engine, tmp_path):
    assert [s.name for s in engine.sources()] == ["file"]
    (info,) = engine.sources()
    assert info.distribution == "headwater"
    src = tmp_path / "song.flac"
    payload = os.urandom(3 * (1 << 20) + 17)
    src.write_bytes(payload)
    by_path, by_url = engine.wait(
        [engine.submit("file", str(src)), engine.submit("file", src.as_uri())], timeout=20
    )
    for record in (by_path, by_url):
        assert record.state is State.COMPLETED, record.error
        assert Path(record.file_path).read_bytes() == payload
        assert record.size == len(payload)
    assert not list(engine.dest_dir.glob("*.part"))


def test_file_source_refuses_what_it_cannot_copy(engine, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    targets = {
        str(tmp_path): "is a directory",
        str(tmp_path / "absent"): "no such file",
        str(fifo): "not a regular file",
        "file://elsewhere/x": "only local files",
    }
    ids = {engine.submit("file", t): message for t, message in targets.items()}
    for record in engine.wait(list(ids), timeout=20):
        assert record.state is State.FAILED and ids[record.id] in record.error
    assert list(engine.dest_dir.iterdir()) == []
