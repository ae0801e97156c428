"""``headwater get --via``: a fallback chain from the command line (needs main's chains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from headwater.cli import main


def test_get_via_falls_back_and_prints_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file,http")
    local = tmp_path / "song.txt"
    local.write_text("la")
    result = CliRunner().invoke(
        main, ["get", "http", str(local), "--via", "file", "--dest", str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert (record["state"], record["source"]) == ("completed", "file")
    assert [t["source"] for t in record["tried"]] == ["http"]
    assert (tmp_path / "out" / "song.txt").read_text() == "la"
    plain = CliRunner().invoke(main, ["get", "http", str(local), "--dest", str(tmp_path / "out")])
    assert plain.exit_code == 1 and "not an http:// or https:// URL" in plain.stderr
