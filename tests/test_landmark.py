"""A download run again after its process died between landing and end keeps the one file it landed.

The landing marks the file with its download's id and attempt (an extended
attribute); a later attempt of that download finds a name taken by an
earlier attempt's mark and completes with that file instead of landing a
copy beside it. A file without the mark, or with another download's, is
never taken.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import headwater._files as files
from headwater import ExistingFileKept, PartFile, check_existing, land
from headwater._files import discard_landed
from headwater._landmark import ATTRIBUTE, attempt_of

pytestmark = pytest.mark.timeout(60)

CHILD = Path(__file__).with_name("landkill_child.py")
A, B = "a" * 32, "b" * 32


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = (tmp_path / "dest").resolve()
    path.mkdir()
    probe = path / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.headwater.probe", b"1")
    except (AttributeError, OSError) as exc:
        pytest.skip(f"this filesystem keeps no user extended attributes: {exc}")
    finally:
        probe.unlink()
    return path


def part_with(folder: Path, data: bytes) -> Path:
    path = folder / "p.part"
    path.write_bytes(data)
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_later_attempt_completes_with_the_file_an_earlier_one_landed(dest: Path) -> None:
    with attempt_of(A, 1):
        first = land(part_with(dest, b"attempt 1"), dest / "once.bin")
    assert os.getxattr(first, ATTRIBUTE) == f"{A} 1".encode()
    with attempt_of(A, 2):
        again = land(part_with(dest, b"attempt 2"), dest / "once.bin")
    assert again == first == dest / "once.bin"
    assert names(dest) == ["once.bin"] and first.read_bytes() == b"attempt 1"
    assert os.getxattr(first, ATTRIBUTE) == f"{A} 2".encode()  # now attempt 2's


def test_one_attempt_landing_one_name_twice_gets_two_files(dest: Path) -> None:
    with attempt_of(A, 1):
        first = land(part_with(dest, b"one"), dest / "n.bin")
        second = land(part_with(dest, b"two"), dest / "n.bin")
    assert (first, second) == (dest / "n.bin", dest / "n (1).bin")


def test_a_file_of_the_user_or_of_another_download_is_never_taken(dest: Path) -> None:
    users = dest / "a.bin"
    users.write_bytes(b"the user's")
    with attempt_of(B, 1):
        others = land(part_with(dest, b"download b"), dest / "a.bin")
    with attempt_of(A, 1):
        mine = land(part_with(dest, b"download a"), dest / "a.bin")
    assert (others, mine) == (dest / "a (1).bin", dest / "a (2).bin")
    with attempt_of(A, 2):  # a's attempt 2 finds its own past the two that are not
        assert land(part_with(dest, b"a again"), dest / "a.bin") == mine
    contents = [p.read_bytes() for p in (users, others, mine)]
    assert contents == [b"the user's", b"download b", b"download a"]
    assert names(dest) == ["a (1).bin", "a (2).bin", "a.bin"]


def test_a_stale_attempt_neither_takes_nor_deletes_a_later_attempts_file(dest: Path) -> None:
    with attempt_of(A, 2):
        current = land(part_with(dest, b"attempt 2"), dest / "s.bin")
    with attempt_of(A, 1):  # attempt 1, frozen past its lease, lands late
        late = land(part_with(dest, b"attempt 1"), dest / "s.bin")
    assert late == dest / "s (1).bin"
    discard_landed(dest, late, (A, 1))  # its end refused: what it landed goes
    discard_landed(dest, current, (A, 1))
    assert names(dest) == ["s.bin"] and current.read_bytes() == b"attempt 2"


def test_a_file_a_later_attempt_took_stays_when_the_earlier_attempts_end_is_refused(dest: Path) -> None:
    with attempt_of(A, 1):
        first = land(part_with(dest, b"attempt 1"), dest / "t.bin")
    with attempt_of(A, 2):
        assert land(part_with(dest, b"attempt 2"), dest / "t.bin") == first
    discard_landed(dest, first, (A, 1))  # attempt 1 was alive after all: its end is refused
    assert names(dest) == ["t.bin"]
    discard_landed(dest, first, (A, 2))  # attempt 2 cancelled: its file goes
    assert names(dest) == []


def test_a_landing_outside_an_attempt_carries_no_mark(dest: Path) -> None:
    stale = part_with(dest, b"left by download a")
    os.setxattr(stale, ATTRIBUTE, f"{A} 1".encode())  # a .part another download left, taken over
    landed = land(stale, dest / "x.bin")
    with pytest.raises(OSError) as missing:
        os.getxattr(landed, ATTRIBUTE)
    assert missing.value.errno == errno.ENODATA
    with attempt_of(A, 2):
        assert land(part_with(dest, b"a"), dest / "x.bin") == dest / "x (1).bin"


def test_skip_completes_with_its_own_earlier_file_and_keeps_anothers(dest: Path) -> None:
    with attempt_of(A, 1):
        first = land(part_with(dest, b"attempt 1"), dest / "k.bin", "skip")
    with attempt_of(A, 2):
        check_existing(dest / "k.bin", "skip")  # its own: no ExistingFileKept before fetching
        part = PartFile(dest, dest / "k.bin", existing="skip")
        part.write(b"attempt 2")
        assert part.land() == first
    assert names(dest) == ["k.bin"] and first.read_bytes() == b"attempt 1"
    with attempt_of(B, 2), pytest.raises(ExistingFileKept):
        check_existing(dest / "k.bin", "skip")


def test_without_hard_links_the_mark_lands_with_the_file(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted (no hard links here)")

    monkeypatch.setattr(files.os, "link", refuse)
    with attempt_of(A, 1):
        first = land(part_with(dest, b"attempt 1"), dest / "h.bin")
    with attempt_of(A, 2):
        assert land(part_with(dest, b"attempt 2"), dest / "h.bin") == first
    assert names(dest) == ["h.bin"]


def test_an_engine_killed_after_landing_before_its_end_is_journaled_leaves_one_file(dest: Path) -> None:
    journal = dest.parent / "journal.sqlite3"

    def child(mode: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, str(CHILD), str(journal), str(dest), mode]
        return subprocess.run(args, capture_output=True, text=True, timeout=50)

    killed = child("kill")
    assert killed.returncode == -9, killed.stderr
    assert names(dest) == ["once.bin"]  # attempt 1 landed it, and its end was never written
    resumed = child("resume")
    assert resumed.returncode == 0, resumed.stderr
    (record,) = map(json.loads, resumed.stdout.splitlines())
    assert record == {"state": "completed", "path": str(dest / "once.bin"), "attempts": 2}
    assert names(dest) == ["once.bin"]
