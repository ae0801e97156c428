"""The builtin file source: copies, refusals, names and cancel."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

import headwater_file
from headwater import (
    DownloadCancelled,
    DownloadContext,
    Engine,
    IntegrityError,
    InvalidTargetError,
    Job,
    State,
    safe_filename,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    with Engine(tmp_path / "dest", plugins={"file": headwater_file}) as eng:
        yield eng


def copy(engine: Engine, target: str):
    return engine.wait([engine.submit("file", target)], timeout=20)[0]


def test_copies_a_path_and_a_file_url(engine, tmp_path):
    src = tmp_path / "song one.flac"
    data = os.urandom(3 * headwater_file.CHUNK_SIZE + 5)
    src.write_bytes(data)
    for target, name in ((str(src), "song one.flac"), (src.as_uri(), "song one (1).flac")):
        rec = copy(engine, target)
        assert rec.state is State.COMPLETED, rec.error
        assert Path(rec.file_path) == engine.dest_dir / name  # the second finds the name taken
        assert Path(rec.file_path).read_bytes() == data
        assert rec.size == len(data)
    assert sorted(p.name for p in engine.dest_dir.iterdir()) == ["song one (1).flac", "song one.flac"]


def test_refuses_directories_and_special_files(engine, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        recs = {t: copy(engine, str(t)) for t in (tmp_path, fifo, sock_path, Path("/dev/null"))}
    finally:
        sock.close()
    assert "is a directory" in recs[tmp_path].error
    for special in (fifo, sock_path, Path("/dev/null")):
        assert recs[special].state is State.FAILED
        assert "InvalidTargetError" in recs[special].error and "not a regular file" in recs[special].error
    assert list(engine.dest_dir.iterdir()) == []


def test_missing_file_and_remote_host(engine, tmp_path):
    missing = copy(engine, str(tmp_path / "nope"))
    assert "no such file" in missing.error
    remote = copy(engine, "file://example.org/etc/passwd")
    assert "only local files" in remote.error


@pytest.mark.parametrize("name", ["CON", "...x", "evil\u202egnp.exe", "a\uff0fb", "x" * 250, " .hidden"])
def test_names_go_through_the_sanitiser(engine, tmp_path, name):
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(b"data")
    rec = copy(engine, str(src))
    assert rec.state is State.COMPLETED, rec.error
    landed = Path(rec.file_path)
    assert landed.parent == engine.dest_dir
    assert landed.name == safe_filename(name)
    assert landed.read_bytes() == b"data"


def test_a_link_in_dest_leading_out_is_refused(engine, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (engine.dest_dir / "victim.txt").symlink_to(outside)
    src = tmp_path / "victim.txt"
    src.write_bytes(b"attack")
    rec = copy(engine, str(src))
    assert rec.state is State.FAILED and "outside the destination" in rec.error
    assert outside.read_bytes() == b"precious"


def test_cancel_stops_within_one_chunk_and_removes_the_part(tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (4 * headwater_file.CHUNK_SIZE))
    dest = tmp_path / "dest"
    dest.mkdir()
    ctx = DownloadContext(dest.resolve(), logging.getLogger("test"))
    ctx.cancelled.set()
    with pytest.raises(DownloadCancelled, match="after 0 of"):
        headwater_file.download_impl(Job("id", "file", str(src)), ctx)
    assert list(dest.iterdir()) == []


def test_bad_target_type_is_invalid_target():
    with pytest.raises(InvalidTargetError):
        headwater_file.source_path("file://host/x")


def test_a_part_left_by_a_killed_copy_is_not_prefixed(engine, tmp_path):
    """A .part from an earlier run that died mid-copy is emptied, not appended to."""
    src = tmp_path / "song.flac"
    src.write_bytes(b"REAL CONTENT")
    engine.dest_dir.mkdir(parents=True, exist_ok=True)
    (engine.dest_dir / "song.flac.part").write_bytes(b"STALE-")
    rec = copy(engine, str(src))
    assert rec.state is State.COMPLETED, rec.error
    assert Path(rec.file_path).read_bytes() == b"REAL CONTENT"
    assert sorted(p.name for p in engine.dest_dir.iterdir()) == ["song.flac"]


class _GrowsWhileCopied(DownloadContext):
    """Appends to the file being copied after the first chunk is reported: a file still being written."""

    def __init__(self, dest: Path, src: Path) -> None:
        super().__init__(dest, logging.getLogger("test"))
        self.src = src

    def progress(self, transferred: int, total: int | None = None) -> None:
        super().progress(transferred, total)
        if transferred == headwater_file.CHUNK_SIZE:
            with self.src.open("ab") as more:
                more.write(b"late bytes")


def test_a_file_that_changes_size_while_copied_fails_and_lands_nothing(tmp_path):
    src = tmp_path / "growing.wav"
    src.write_bytes(b"x" * (2 * headwater_file.CHUNK_SIZE))
    dest = (tmp_path / "dest").resolve()
    dest.mkdir()
    grown = r"changed size while being copied: 2097152 bytes when opened, 2097162 read"
    with pytest.raises(IntegrityError, match=grown):
        headwater_file.download_impl(Job("id", "file", str(src)), _GrowsWhileCopied(dest, src))
    assert list(dest.iterdir()) == []
