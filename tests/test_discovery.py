"""Discovery for real: plugin distributions built here, pip-installed into a virtual environment.

One session fixture builds a venv, installs headwater and a set of tiny
plugin distributions into it with one ``pip install``, and the tests run
Python and the ``headwater`` console script of that venv as subprocesses.
The venv sees the test environment's site-packages (pluggy, attrs, click,
hatchling, pip) through a ``.pth`` file, so nothing is fetched.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import importlib_metadata
import pytest

from headwater import RatePolicy

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]

#: Sources the environment running the tests already has (the builtin ones,
#: and any other installed); the test venv sees them too.
AMBIENT = frozenset(ep.name for ep in importlib_metadata.entry_points(group="headwater.sources"))

GOOD = """
from pathlib import Path
from headwater import RatePolicy, hookimpl

@hookimpl
def download_impl(job, ctx):
    path = Path(ctx.dest_dir) / f"good-{job.target}.txt"
    path.write_text(f"good {job.target}\\n")
    ctx.progress(path.stat().st_size, path.stat().st_size)
    return path

@hookimpl
def aliases():
    return ["good_dl", "goodie"]

@hookimpl
def rate_policy():
    return RatePolicy(concurrency=2, delay=0.05)

@hookimpl
def record_fields(job):
    return {"good_id": job.target}
"""


def writer(tag: str) -> str:
    """A module whose download writes ``<tag>-<target>.txt``."""
    return f"""
from pathlib import Path
from headwater import hookimpl

@hookimpl
def download_impl(job, ctx):
    path = Path(ctx.dest_dir) / f"{tag}-{{job.target}}.txt"
    path.write_text("{tag}")
    return path
"""


def with_aliases(names: list[str]) -> str:
    return writer("thief") + f"\n@hookimpl\ndef aliases():\n    return {names!r}\n"


def with_policy(expr: str) -> str:
    return (
        writer("policy")
        + f"\nfrom headwater import RatePolicy\n\n@hookimpl\ndef rate_policy():\n    return {expr}\n"
    )


OBJECT = """

class Source:
    download_impl = staticmethod(hookimpl(impl))

source = Source()
"""

# distribution -> (version, {entry point name: (module or module:attribute, module source)})
DISTRIBUTIONS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "headwater-good": ("1.2.3", {"good": ("hw_good", GOOD)}),
    "headwater-importfail": (
        "0.2.0",
        {
            # It prints first: `headwater sources --json` must keep stdout clean all the same.
            "importfail": (
                "hw_importfail",
                'print("noisy plugin at import")\nraise RuntimeError("cannot reach\\n    the moon")\n',
            ),
            "exits": ("hw_exits", 'raise SystemExit("bye")\n'),
            "noattr": ("hw_noattr:plugin", "x = 1\n"),
        },
    ),
    "headwater-nodownload": (
        "0.3.0",
        {
            "nodownload": (
                "hw_nodownload",
                "from headwater import hookimpl\n\n@hookimpl\ndef aliases():\n    return []\n",
            ),
        },
    ),
    "headwater-misspelled": (
        "0.4.0",
        {
            "typo": ("hw_typo", writer("typo") + "\n@hookimpl\ndef rate_polcy():\n    return None\n"),
            "wrongarg": (
                "hw_wrongarg",
                "from headwater import hookimpl\n\n"
                "@hookimpl\ndef download_impl(job, context):\n    return None\n",
            ),
        },
    ),
    # The winner of the clash is an object, not a module.
    "headwater-clash-a": (
        "1.0.0",
        {
            "clash": (
                "hw_clash_a:source",
                writer("clash-a").replace("def download_impl(", "def impl(") + OBJECT,
            )
        },
    ),
    "headwater-clash-b": ("2.0.0", {"clash": ("hw_clash_b", writer("clash-b"))}),
    "headwater-thief": (
        "0.5.0",
        {
            # Sorted before "good", yet a source's name beats an alias.
            "aliasthief": ("hw_aliasthief", with_aliases(["good"])),
            "zthief": ("hw_zthief", with_aliases(["zz", "good_dl"])),
        },
    ),
    "headwater-badpolicy": (
        "0.6.0",
        {
            "zeropolicy": ("hw_zeropolicy", with_policy("RatePolicy(concurrency=0)")),
            "notpolicy": ("hw_notpolicy", with_policy('{"concurrency": 2}')),
        },
    ),
}

# source name -> (distribution, version, a fragment of its error)
BROKEN = {
    "importfail": ("headwater-importfail", "0.2.0", "failed to import: RuntimeError: cannot reach the moon"),
    "exits": ("headwater-importfail", "0.2.0", "failed to import: SystemExit: bye"),
    "noattr": ("headwater-importfail", "0.2.0", "failed to import: AttributeError"),
    "nodownload": ("headwater-nodownload", "0.3.0", "does not implement download_impl"),
    "typo": ("headwater-misspelled", "0.4.0", "unknown hook(s) rate_polcy (headwater's hooks: aliases,"),
    "wrongarg": ("headwater-misspelled", "0.4.0", "PluginValidationError"),
    "aliasthief": ("headwater-thief", "0.5.0", "alias 'good' is already taken by source 'good'"),
    "zthief": ("headwater-thief", "0.5.0", "alias 'good_dl' is already taken by source 'good'"),
    "zeropolicy": ("headwater-badpolicy", "0.6.0", "RatePolicy.concurrency must be a whole number"),
    "notpolicy": ("headwater-badpolicy", "0.6.0", "rate_policy() returned dict, not a RatePolicy"),
    "clash": ("headwater-clash-b", "2.0.0", "source name 'clash' is already taken"),
}

PROBE = """
import json, logging, sys
from headwater import Engine, HeadwaterError

warnings = []

class Collect(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())

logging.getLogger("headwater").addHandler(Collect())
dest, submits = sys.argv[1], json.loads(sys.argv[2])
out = {"errors": [], "records": []}
with Engine(dest_dir=dest) as engine:
    out["sources"] = [
        {
            "name": i.name,
            "aliases": list(i.aliases),
            "policy": [i.policy.concurrency, i.policy.delay] if i.policy else None,
            "distribution": i.distribution,
            "version": i.version,
            "status": i.status,
            "error": i.error,
        }
        for i in engine.sources(include_broken=True)
    ]
    ids = []
    for source, target in submits:
        try:
            ids.append(engine.submit(source, target))
        except HeadwaterError as exc:
            out["errors"].append([source, type(exc).__name__, str(exc)])
    for r in engine.wait(ids, timeout=30):
        out["records"].append(
            {
                "source": r.source,
                "target": r.target,
                "state": r.state.value,
                "file_path": r.file_path,
                "error": r.error,
                "extra": dict(r.extra),
            }
        )
out["warnings"] = warnings
print(json.dumps(out))
"""


def write_distribution(root: Path, dist: str, version: str, entries: Mapping[str, tuple[str, str]]) -> Path:
    """Write a distribution's folder; each entry's module is ``package`` or ``package:attribute``."""
    folder = root / dist
    packages = [module.partition(":")[0] for module, _ in entries.values()]
    for package, (_, source) in zip(packages, entries.values(), strict=True):
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text(textwrap.dedent(source))
    points = "\n".join(f'{name} = "{module}"' for name, (module, _) in entries.items())
    listed = ", ".join(f'"{package}"' for package in packages)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["hatchling>=1.21"]
            build-backend = "hatchling.build"

            [project]
            name = "{dist}"
            version = "{version}"

            [project.entry-points."headwater.sources"]
            """
        )
        + points
        + f"\n\n[tool.hatch.build.targets.wheel]\npackages = [{listed}]\n"
    )
    return folder


@dataclass(frozen=True)
class PluginVenv:
    """A venv with headwater and the test distributions installed."""

    root: Path
    work: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def headwater(self) -> Path:
        return self.root / "bin" / "headwater"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        env.update(extra)
        return env

    def run(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            env=self.env(**env),
            cwd=self.work,
            timeout=60,
        )

    def probe(self, submits: Sequence[tuple[str, str]] = (), **env: str) -> dict[str, Any]:
        """Run the probe script: the sources the engine sees, then ``submits`` downloaded."""
        dest = tempfile.mkdtemp(prefix="dest-", dir=self.work)
        done = self.run(self.python, self.work / "probe.py", dest, json.dumps(submits), **env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])  # a plugin may print while it loads


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    base = tmp_path_factory.mktemp("discovery")
    dists = base / "dists"
    folders = [write_distribution(dists, d, v, e) for d, (v, e) in DISTRIBUTIONS.items()]
    root = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        check=True,
        timeout=60,
    )
    # Not --system-site-packages: when the tests run in a venv, those are the
    # base interpreter's, not this environment's. Add exactly ours (and their
    # .pth files, such as an editable headwater's).
    outer = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    [inner] = [p for p in (root / "lib").glob("python*/site-packages") if p.is_dir()]  # one python version
    (inner / "_headwater_tests_outer.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n"
    )
    work = base / "work"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    installed = subprocess.run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            str(REPO),
            *map(str, folders),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return PluginVenv(root, work)


@pytest.fixture(scope="session")
def everything(venv: PluginVenv) -> dict[str, Any]:
    """One probe with every installed source, downloading through names and aliases."""
    sample = venv.work / "sample.bin"
    sample.write_bytes(b"headwater" * 100)
    submits = [("good_dl", "one"), ("goodie", "two"), ("good", "three"), ("file", str(sample))]
    submits += [("clash", "c"), ("zz", "x")] + [(name, "x") for name in sorted(set(BROKEN) - {"clash"})]
    return venv.probe(submits)


def by_status(result: dict, status: str) -> dict[str, dict]:
    return {s["name"]: s for s in result["sources"] if s["status"] == status}


# -- the good source -------------------------------------------------------------


def test_good_source_found_under_its_entry_point_name(everything):
    good = by_status(everything, "ok")["good"]
    assert good == {
        "name": "good",
        "aliases": ["good_dl", "goodie"],
        "policy": [2, 0.05],
        "distribution": "headwater-good",
        "version": "1.2.3",
        "status": "ok",
        "error": None,
    }


def test_good_source_downloads_through_its_aliases(everything):
    records = {r["target"]: r for r in everything["records"]}
    for target in ("one", "two", "three"):
        record = records[target]
        assert record["state"] == "completed", record
        assert record["source"] == "good"
        assert record["extra"] == {"good_id": target}
        path = Path(record["file_path"])
        assert path.name == f"good-{target}.txt"
        assert path.read_text() == f"good {target}\n"


def test_engine_runs_the_rest_beside_broken_plugins(everything):
    ok = set(by_status(everything, "ok"))
    assert "file" in ok and ok - AMBIENT == {"clash", "good"}
    records = [r for r in everything["records"] if r["source"] in ("file", "clash")]
    assert [r["state"] for r in records] == ["completed", "completed"]
    file_record = next(r for r in records if r["source"] == "file")
    assert Path(file_record["file_path"]).read_bytes() == b"headwater" * 100
    # The clash winner is the distribution sorted first, and its download ran.
    clash_record = next(r for r in records if r["source"] == "clash")
    assert Path(clash_record["file_path"]).read_text() == "clash-a"


# -- broken plugins --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_plugin_is_reported_and_left_out(everything, name):
    dist, version, fragment = BROKEN[name]
    info = by_status(everything, "broken")[name]
    assert (info["distribution"], info["version"]) == (dist, version)
    assert fragment in info["error"]
    assert "\n" not in info["error"]
    assert info["aliases"] == [] and info["policy"] is None
    # It was logged with its name, distribution and version ...
    assert any(
        f"source {name!r} ({dist} {version}) left out" in w and fragment in w for w in everything["warnings"]
    ), everything["warnings"]
    # ... and it cannot be used (the clash name goes to the winner instead).
    if name != "clash":
        [error] = [e for e in everything["errors"] if e[0] == name]
        known = ", ".join(sorted(by_status(everything, "ok")))
        assert error[1] == "UnknownSourceError" and f"known sources: {known}" in error[2]


def test_name_clash_names_both_distributions(everything):
    [loser] = [s for s in everything["sources"] if s["name"] == "clash" and s["status"] == "broken"]
    assert "headwater-clash-a 1.0.0" in loser["error"]
    assert "headwater-clash-b 2.0.0" in loser["error"]
    [winner] = [s for s in everything["sources"] if s["name"] == "clash" and s["status"] == "ok"]
    assert winner["distribution"] == "headwater-clash-a"


def test_alias_stealers_leave_the_owner_intact(everything):
    assert by_status(everything, "ok")["good"]["aliases"] == ["good_dl", "goodie"]
    # Nothing answers to the aliases of the sources left out.
    assert {e[0]: e[1] for e in everything["errors"] if e[0] in ("zz", "goodie")} == {
        "zz": "UnknownSourceError"
    }


# -- the environment switches ----------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true"])
def test_disable_autoload_loads_none(venv, value):
    result = venv.probe([("file", "x")], HEADWATER_DISABLE_PLUGIN_AUTOLOAD=value)
    assert result["sources"] == []
    assert result["errors"] == [
        ["file", "UnknownSourceError", "unknown source 'file'; known sources: none are loaded"]
    ]


@pytest.mark.parametrize("value", ["0", ""])
def test_disable_autoload_off_values_load_all(venv, value):
    result = venv.probe(HEADWATER_DISABLE_PLUGIN_AUTOLOAD=value)
    assert set(by_status(result, "ok")) - AMBIENT == {"clash", "good"}


def test_load_plugins_loads_only_those(venv):
    result = venv.probe([("goodie", "g")], HEADWATER_LOAD_PLUGINS="good, clash,typo,nothere")
    assert sorted(by_status(result, "ok")) == ["clash", "good"]
    broken = by_status(result, "broken")
    assert sorted(broken) == ["clash", "nothere", "typo"]
    assert broken["clash"]["distribution"] == "headwater-clash-b"
    assert "not installed" in broken["nothere"]["error"]
    assert "HEADWATER_LOAD_PLUGINS" in broken["nothere"]["error"]
    assert broken["nothere"]["distribution"] is None
    assert [r["state"] for r in result["records"]] == ["completed"]


def test_load_plugins_wins_over_disable(venv):
    result = venv.probe(HEADWATER_LOAD_PLUGINS="file", HEADWATER_DISABLE_PLUGIN_AUTOLOAD="1")
    assert [s["name"] for s in result["sources"]] == ["file"]


def test_load_plugins_empty_loads_none(venv):
    assert venv.probe(HEADWATER_LOAD_PLUGINS="")["sources"] == []


# -- the console script ----------------------------------------------------------


def test_sources_json_carries_every_field(venv, everything):
    done = venv.run(venv.headwater, "sources", "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    keys = {"name", "aliases", "policy", "distribution", "version", "status", "error", "rule", "settings"}
    assert all(set(entry) == keys | {"problems"} for entry in listing)
    rules = {e["name"]: e["rule"] for e in listing if e["status"] == "broken"}
    assert {n: rules[n] for n in ("typo", "nodownload", "notpolicy", "importfail", "zthief")} == {
        "typo": "hooks",
        "nodownload": "hooks",
        "notpolicy": "rate-policy",
        "importfail": None,  # it broke no rule: it did not import
        "zthief": None,  # nor this one: another source has its alias
    }
    good = next(e for e in listing if e["name"] == "good")
    assert good["aliases"] == ["good_dl", "goodie"]
    assert good["policy"]["concurrency"] == 2 and good["policy"]["delay"] == 0.05
    assert set(good["policy"]) == {a.name for a in attrs.fields(RatePolicy)}
    assert (good["distribution"], good["version"], good["status"], good["error"]) == (
        "headwater-good",
        "1.2.3",
        "ok",
        None,
    )
    # The same view as the Python API, broken ones included.
    assert sorted((e["name"], e["status"], e["error"]) for e in listing) == sorted(
        (s["name"], s["status"], s["error"]) for s in everything["sources"]
    )


def test_sources_table_shows_broken_ones(venv):
    done = venv.run(venv.headwater, "sources")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name, (dist, version, _) in BROKEN.items():
        assert any(line.split()[:2] == [name, "broken"] and f"{dist} {version}" in line for line in lines), (
            name
        )
    good = next(line for line in lines if line.startswith("good "))
    assert "good_dl,goodie" in good and "headwater-good 1.2.3" in good


def test_get_through_an_alias(venv):
    dest = venv.work / "cli-dest"
    done = venv.run(venv.headwater, "get", "goodie", "cli", "--dest", dest)
    assert done.returncode == 0, done.stderr
    path = dest / "good-cli.txt"
    assert path.read_text() == "good cli\n"
    assert str(path) in done.stdout or path.name in done.stdout


def test_get_from_a_broken_source_is_a_usage_error(venv):
    done = venv.run(venv.headwater, "get", "importfail", "x", "--dest", venv.work / "cli-dest2")
    assert done.returncode == 2
    assert "unknown source 'importfail'" in done.stderr
    assert "known sources: " in done.stderr and "clash" in done.stderr and "good" in done.stderr


# -- in this process -------------------------------------------------------------


def test_interrupt_while_importing_a_plugin_is_not_swallowed(tmp_path, monkeypatch):
    """Ctrl-C during a slow plugin import stops discovery instead of marking the plugin broken."""
    from headwater._discovery import discover

    info = tmp_path / "headwater_interrupt-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: headwater-interrupt\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[headwater.sources]\ninterrupt = hw_interrupt\nexiting = hw_exiting\n"
    )
    (tmp_path / "hw_interrupt.py").write_text("raise KeyboardInterrupt\n")
    (tmp_path / "hw_exiting.py").write_text("import sys\nsys.exit(4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [exiting] = discover({"HEADWATER_LOAD_PLUGINS": "exiting"})
    assert (exiting.distribution, exiting.version, exiting.error) == (
        "headwater-interrupt",
        "0.1",
        "failed to import: SystemExit: 4",
    )
    with pytest.raises(KeyboardInterrupt):
        discover({"HEADWATER_LOAD_PLUGINS": "interrupt,exiting"})
