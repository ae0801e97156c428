"""PartFile, the locked ``.part`` every builtin source writes through."""

from __future__ import annotations

import array
import io
import os
from pathlib import Path

import pytest

from headwater import PartFile, destination


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = (tmp_path / "dest").resolve()
    path.mkdir()
    return path


def test_a_part_left_from_before_starts_empty(dest: Path) -> None:
    (dest / "song.flac.part").write_bytes(b"STALE-")
    part = PartFile(dest, destination(dest, "song.flac"))
    assert part.size() == part.opened_size == 0
    part.write(b"REAL CONTENT")
    assert part.land().read_bytes() == b"REAL CONTENT"


def test_keep_leaves_the_bytes_for_a_resume_and_appends(dest: Path) -> None:
    (dest / "song.flac.part").write_bytes(b"first half, ")
    part = PartFile(dest, destination(dest, "song.flac"), keep=True)
    assert part.size() == part.opened_size == len(b"first half, ")
    part.stream.seek(0)  # reading back moves the position; writes still append
    assert part.stream.read(5) == b"first"
    part.write(b"second half")
    assert part.land().read_bytes() == b"first half, second half"


def test_a_second_writer_of_one_name_gets_its_own_part_and_cuts_nothing(dest: Path) -> None:
    first = PartFile(dest, destination(dest, "a.bin"))
    first.write(b"0123456789")
    second = PartFile(dest, destination(dest, "a.bin"))  # not keep: would empty it if it got the lock
    assert (first.path.name, second.path.name) == ("a.bin.part", "a (1).bin.part")
    second.write(b"second")
    assert first.size() == 10
    first.discard()
    assert second.land() == dest / "a.bin"  # the name is decided at landing, and a.bin is free
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]


class _Dribble(io.FileIO):
    """A file that takes at most three bytes a write, as a short write may."""

    def write(self, data: object) -> int:
        return super().write(memoryview(data)[:3])  # type: ignore[arg-type]


def test_write_finishes_short_writes_and_counts_bytes_not_items(dest: Path) -> None:
    part = PartFile(dest, destination(dest, "w.bin"))
    plain = part.stream
    part.stream = _Dribble(os.dup(plain.fileno()), "r+")  # same open file, same lock
    plain.close()
    part.write(b"abcdefghij")
    wide = array.array("i", range(5))  # items of 4 bytes: a byte count, not an item count
    part.write(memoryview(wide))
    assert part.land().read_bytes() == b"abcdefghij" + wide.tobytes()
