"""``headwater get --via``: a fallback chain from the command line (needs main's chains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from localhttp import Resource, Step, serving

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


def test_a_chain_that_fails_prints_every_sources_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure line names each source of the chain and why it failed, not just the last one."""
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEADWATER_LOAD_PLUGINS", "file,http")
    with serving() as server:
        url = server.add("/gone.bin", Resource(b"x", script=[Step(status=404)]))
        result = CliRunner().invoke(
            main, ["get", "http", url, "--via", "file", "--dest", str(tmp_path), "-q"]
        )
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.startswith(f"{url}: failed: http: TransferError: HTTP 404 Not Found from {url}; file: "), line
    assert "FileNotFoundError" in line, line
