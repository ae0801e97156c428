"""The ``headwater`` console script, run as a subprocess with only the builtin ``file`` source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def headwater_script() -> str:
    """The console script installed for this interpreter."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("headwater", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    assert found, f"the headwater console script is not installed (looked in {scripts} and PATH)"
    return found


def headwater(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["HEADWATER_LOAD_PLUGINS"] = "file"
    return subprocess.run(
        [headwater_script(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=30
    )


def names(output: str, path: Path, cwd: Path) -> bool:
    """Whether ``output`` gives ``path``, absolute or relative to ``cwd``."""
    path = path.resolve()
    return str(path) in output or str(path.relative_to(cwd.resolve())) in output


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "sample.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3000))
    return path


def test_get_prints_where_the_file_went(tmp_path, sample):
    dest = tmp_path / "out" / "nested"
    done = headwater("get", "file", sample, "--dest", dest, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    landed = dest.resolve() / "sample.bin"
    assert landed.read_bytes() == sample.read_bytes()
    assert names(done.stdout, landed, tmp_path)


def test_get_several_targets_including_a_file_url(tmp_path, sample):
    other = sample.with_name("other.txt")
    other.write_text("other")
    dest = tmp_path / "out"
    done = headwater("get", "file", sample, other.as_uri(), "--dest", dest, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (dest / "other.txt").read_text() == "other"
    assert names(done.stdout, dest / "sample.bin", tmp_path)
    assert names(done.stdout, dest / "other.txt", tmp_path)


def test_get_exits_1_when_any_download_failed(tmp_path, sample):
    missing = tmp_path / "in" / "missing.bin"
    dest = tmp_path / "out"
    done = headwater("get", "file", sample, missing, "--dest", dest, cwd=tmp_path)
    assert done.returncode == 1
    assert (dest / "sample.bin").read_bytes() == sample.read_bytes()
    assert names(done.stdout, dest / "sample.bin", tmp_path)
    assert str(missing) in done.stderr and "failed" in done.stderr
    assert not (dest / "missing.bin").exists()


def test_get_from_an_unknown_source_exits_2_naming_the_known_ones(tmp_path, sample):
    done = headwater("get", "flie", sample, "--dest", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown source 'flie'" in done.stderr
    assert "known sources: file" in done.stderr
    assert done.stdout == ""


def test_get_dest_defaults_to_the_working_folder(tmp_path, sample):
    work = tmp_path / "work"
    work.mkdir()
    done = headwater("get", "file", sample, cwd=work)
    assert done.returncode == 0, done.stderr
    assert (work / "sample.bin").read_bytes() == sample.read_bytes()


def test_get_keeps_a_file_already_there_and_prints_the_numbered_name(tmp_path, sample):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sample.bin").write_bytes(b"the user's own")
    done = headwater("get", "file", sample, "--dest", dest, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (dest / "sample.bin").read_bytes() == b"the user's own"
    assert (dest / "sample (1).bin").read_bytes() == sample.read_bytes()
    assert done.stdout.strip().endswith("sample (1).bin")
    assert names(done.stdout, dest / "sample (1).bin", tmp_path)


def test_get_existing_skip_and_overwrite(tmp_path, sample):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sample.bin").write_bytes(b"the user's own")
    skipped = headwater("get", "file", sample, "--dest", dest, "--existing", "skip", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.strip().endswith("sample.bin (already there, not downloaded)")
    assert sorted(p.name for p in dest.iterdir()) == ["sample.bin"]
    assert (dest / "sample.bin").read_bytes() == b"the user's own"
    as_json = headwater("get", "file", sample, "--dest", dest, "--existing", "skip", "--json", cwd=tmp_path)
    [record] = json.loads(as_json.stdout)
    assert (record["state"], record["skipped"], record["existing"]) == ("completed", True, "skip")
    replaced = headwater("get", "file", sample, "--dest", dest, "--existing", "overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["sample.bin"]
    assert (dest / "sample.bin").read_bytes() == sample.read_bytes()


def test_get_existing_refuses_an_unknown_choice(tmp_path, sample):
    done = headwater("get", "file", sample, "--dest", tmp_path / "out", "--existing", "keep", cwd=tmp_path)
    assert done.returncode == 2
    assert "Invalid value for '--existing'" in done.stderr and "'rename', 'skip', 'overwrite'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_config_sets_a_sources_choice_and_the_option_wins(tmp_path, sample):
    config = tmp_path / "headwater.toml"
    config.write_text('[sources.file]\nexisting = "skip"\n')
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "sample.bin").write_bytes(b"the user's own")
    by_config = headwater("--config", config, "get", "file", sample, "--dest", dest, cwd=tmp_path)
    assert by_config.returncode == 0, by_config.stderr
    assert "(already there, not downloaded)" in by_config.stdout
    by_option = headwater(
        "--config", config, "get", "file", sample, "--dest", dest, "--existing", "rename", cwd=tmp_path
    )
    assert by_option.returncode == 0, by_option.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["sample (1).bin", "sample.bin"]


def test_sources_lists_the_builtin_file_source(tmp_path):
    done = headwater("sources", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)
    assert entry["name"] == "file" and entry["status"] == "ok" and entry["error"] is None
    assert entry["distribution"] == "headwater"
    assert set(entry["policy"]) >= {"concurrency", "delay"}
    table = headwater("sources", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:2] == ["file", "ok"]
