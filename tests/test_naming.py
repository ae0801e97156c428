"""One sanitiser for every file name: safe_filename and destination, against hostile names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from localhttp import LocalServer, Resource, Step, serving

from headwater import Engine, State, UnsafePathError, destination, safe_filename
from headwater._files import MAX_NAME_BYTES
from headwater_http import HttpSource

HOSTILE = [
    "../../etc/passwd",
    "..\\..\\windows\\system32\\config",
    "/etc/passwd",
    "/",
    "\\",
    "C:\\Windows\\evil.dll",
    "C:evil",
    "\\\\server\\share\\x",
    "..",
    ".",
    "...",
    ". .",
    " ",
    "",
    ".bashrc",
    "./.ssh/authorized_keys",
    "a/../../b",
    "CON",
    "con.txt",
    "Nul",
    "AUX.tar.gz",
    "COM1",
    "lpt9.log",
    "COM\u00b9",  # superscript one: reserved on Windows too
    "CONIN$",
    "name\x00.txt",
    "\x00",
    "bell\x07\x1b[31mred",
    "line\nbreak\r.txt",
    "tab\tname",
    "x" * 300,
    "y" * 300 + ".flac",
    "é" * 300 + ".mp3",
    "z" * 250 + "." + "e" * 40,
    "evil\u202egnp.exe",
    "zero\u200bwidth\u200d.txt",
    "\ufeffbom.txt",
    "a\uff0fb",  # fullwidth solidus
    "a\uff3cb",  # fullwidth reverse solidus
    "a\u2215b\u2044c\u29f8d",  # division, fraction and big solidus
    "\uff0e\uff0e\uff0fetc\uff0fpasswd",  # fullwidth ../etc/passwd
    "a\u2028b\u2029c",
    "trailing.  ",
    "trailing dot.",
    'quote"s<and>pipes|?*:',
    "\udcff\udcfe",  # lone surrogates (undecodable bytes)
    "%2e%2e%2fetc%2fpasswd",
    "ok name (1).tar.gz",
]


def _check_one(name: str, result: str) -> None:
    assert result, name
    assert result not in (".", "..")
    assert not result.startswith((".", " "))
    assert not result.endswith((".", " "))
    assert not any(ch in result for ch in '/\\\x00:*?"<>|\u202e\u200b\ufeff\n\r\t')
    assert len(result.encode()) <= MAX_NAME_BYTES
    assert result.split(".")[0].upper() not in ("CON", "NUL", "AUX", "PRN", "COM1", "LPT9", "CONIN$")


def test_corpus_is_large_enough():
    assert len(HOSTILE) >= 40


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_filename_on_hostile_names(name: str) -> None:
    result = safe_filename(name)
    _check_one(name, result)
    assert safe_filename(result) == result  # idempotent


def test_length_cut_keeps_a_short_extension():
    assert safe_filename("y" * 300 + ".flac").endswith("y.flac")
    assert not safe_filename("z" * 250 + "." + "e" * 40).endswith("e" * 40)


@given(st.text())
def test_safe_filename_property(name: str) -> None:
    _check_one(name, safe_filename(name))


def test_destination_refuses_a_link_leading_out(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="outside the destination"):
        destination(dest, "evil")
    assert destination(dest, "../evil") == dest / "_evil"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as srv:
        yield srv


def _all_files(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, files in os.walk(root) for f in files}


@pytest.mark.timeout(60)
def test_hostile_names_from_the_server_stay_inside(server: LocalServer, tmp_path: Path) -> None:
    """Every hostile name, as Content-Disposition and as the URL path: nothing lands outside dest.

    Concurrency 1: many hostile names clean to the same name, and two
    downloads of one name at once would (rightly) refuse each other.
    """
    outer = tmp_path / "outer"
    dest = outer / "inner" / "dest"
    dest.mkdir(parents=True)
    before = _all_files(tmp_path)
    targets = []
    for i, name in enumerate(HOSTILE):
        raw = name.encode("utf-8", "surrogateescape") if name.isascii() else name.encode("utf-8", "replace")
        header = f"attachment; filename*=UTF-8''{quote(raw, safe='')}"
        targets.append(server.add(f"/cd/{i}", Resource(b"cd%d" % i, headers={"content-disposition": header})))
        encoded = "".join(f"%{b:02X}" for b in raw)
        targets.append(server.add(f"/p{i}/{encoded}", Resource(b"path%d" % i)))
    with Engine(dest, plugins={"http": HttpSource(read_timeout=5, concurrency=1)}) as engine:
        records = engine.wait([engine.submit("http", t) for t in targets], timeout=50)
    outside = {p for p in _all_files(tmp_path) - before if dest not in p.parents}
    assert outside == set()
    assert all(r.state is State.COMPLETED for r in records), [r.error for r in records if r.error]
    for rec in records:
        path = Path(rec.file_path)
        assert path.parent == dest
        _check_one(rec.target, path.name)
    assert not any(p.name.endswith((".part", ".part.json")) for p in dest.iterdir())


def test_links_planted_at_the_part_names_are_not_followed(server: LocalServer, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (dest / "a.bin.part").symlink_to(victim)
    (dest / "b.bin.part.json").symlink_to(victim)
    url_a = server.add("/a.bin", Resource(b"A" * 1000))
    url_b = server.add("/b.bin", Resource(b"B" * 1000, script=[Step(drop_after=10)]))
    with Engine(dest, plugins={"http": HttpSource(read_timeout=5, max_resumes=0)}) as engine:
        a, b = engine.wait([engine.submit("http", url_a), engine.submit("http", url_b)], timeout=20)
    assert a.state is State.FAILED and "Too many levels of symbolic links" in a.error
    assert b.state is State.FAILED and "outside the destination" in b.error
    assert victim.read_bytes() == b"precious"


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"} | {
    f"{kind}{i}" for kind in ("COM", "LPT") for i in range(10)
}


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=210))
def test_printable_ascii_names_are_kept_unless_a_rule_changes_them(name: str) -> None:
    """The sanitiser's quick path for plain ASCII keeps exactly the names no rule would change."""
    changed = (
        any(ch in '/\\:*?"<>|' for ch in name)
        or name[0] in ". "
        or name[-1] in ". "
        or len(name) > MAX_NAME_BYTES
        or name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED
    )
    assert (safe_filename(name) == name) is not changed
