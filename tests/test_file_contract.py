"""The builtin ``file`` source against the conformance kit (headwater.testing)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import headwater_file
from headwater import State
from headwater.testing import EngineFactory, SourceContract


class TestFileSourceContract(SourceContract):
    plugin = headwater_file
    name = "file"

    def make_targets(self, tmp_path: Path) -> Sequence[str]:
        big = tmp_path / "big.bin"  # several chunks, so a cancel can land mid-copy
        big.write_bytes(os.urandom(3 * headwater_file.CHUNK_SIZE + 7))
        small = tmp_path / "small name.txt"
        small.write_text("hello")
        empty = tmp_path / "empty"
        empty.touch()
        return [str(big), small.as_uri(), str(empty)]


def test_the_engine_fixture_loads_only_the_named_installed_source(
    headwater_engine: EngineFactory, tmp_path: Path
) -> None:
    source = tmp_path / "a.txt"
    source.write_text("abc")
    engine = headwater_engine("file")
    assert [s.name for s in engine.sources()] == ["file"]
    record = engine.wait([engine.submit("file", str(source))], timeout=10)[0]
    assert record.state is State.COMPLETED
    assert Path(record.file_path or "").read_text() == "abc"
