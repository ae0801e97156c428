"""Child processes that tests start: their environment (no headwater settings, a private home), the
plugins they find installed, the ``headwater`` command run in them, and virtual environments to run
them in."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path


def isolated_env(home: Path) -> dict[str, str]:
    """``os.environ`` without ``HEADWATER_*`` variables, with home, data, config and cache under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def install_plugin(folder: Path, module: str, code: str, entry: str, distribution: str) -> Path:
    """Make ``folder`` hold ``module`` (``code``), which ``distribution 1.0`` declares as source ``entry``.

    Put ``folder`` on PYTHONPATH and discovery finds the source like any
    installed plugin. Returns ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(code)
    info = folder / f"{distribution}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[headwater.sources]\n{entry} = {module}\n")
    return folder


def run_headwater(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m headwater.cli ARGS`` in ``env`` with ``stdin`` as its input (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def make_venv(path: Path) -> Path:
    """A new virtual environment that also sees this interpreter's packages; its python."""
    venv.create(path, with_pip=False, symlinks=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parents = [*site.getsitepackages(), site.getusersitepackages()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents if os.path.isdir(p))
    Path(purelib, "_headwater_test_parent.pth").write_text(lines)
    return python
