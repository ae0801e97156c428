"""Ctrl-C and SIGTERM while ``headwater get`` starts up: one line saying what was and was not queued.

Real processes started through the command's entry point (``_headwater_entry``),
real signals. Each test holds the command at one moment of its start-up (a
module being imported, a plugin being loaded, a target being queued) until
the signal is sent, so the moment is certain, not a matter of timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import install_plugin
from test_cli_resume import env_for, journaled, start
from waiting import wait_until

from headwater import State

pytestmark = pytest.mark.timeout(60)

#: The command as the installed ``headwater`` script runs it.
ENTRY = [sys.executable, "-c", "from _headwater_entry import main; main()"]

#: Writes what it is doing to $PAUSE_MARKER, then waits for the signal.
PAUSE = """
import os, time
from pathlib import Path

def pause(where):
    Path(os.environ["PAUSE_MARKER"]).write_text(where)
    time.sleep(60)
"""

#: A source that pauses while it is loaded (PAUSE_AT=load) or while target "pause" is queued,
#: and whose downloads run until they are stopped.
PAUSING_SOURCE = (
    PAUSE
    + """
from headwater import DownloadCancelled, hookimpl

if os.environ.get("PAUSE_AT") == "load":
    pause("load")

@hookimpl
def record_fields(job, settings):
    if job.target == "pause":
        pause("queueing")
    return None

@hookimpl
def download_impl(job, ctx):
    while not ctx.cancelled.wait(0.02):
        pass
    raise DownloadCancelled("stopped")
"""
)

SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


def paused(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen[str], Path]:
    """``headwater ARGS`` started with the source ``pausing`` installed, and held where it (or a module)
    pauses; the process and its ``HEADWATER_HOME``."""
    plugins = install_plugin(tmp_path / "plugins", "pausing_source", PAUSING_SOURCE, "pausing", "pausing")
    home, marker = tmp_path / "home", tmp_path / "paused"
    child_env = {**env_for(home), "PAUSE_MARKER": str(marker), **env}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(plugins)]))
    child = start(child_env, *args, cwd=tmp_path, command=ENTRY)
    wait_until(marker.exists, 30, "the command paused")
    return child, home


def paused_get(tmp_path: Path, *targets: str, **env: str) -> tuple[subprocess.Popen[str], Path]:
    """``headwater get pausing TARGETS``, held where the source (or a module) pauses."""
    return paused(tmp_path, "get", "pausing", *targets, "--dest", str(tmp_path / "out"), "-q", **env)


@pytest.mark.parametrize(("signum", "code", "word"), SIGNALS)
def test_a_signal_while_the_command_is_imported(tmp_path: Path, signum: int, code: int, word: str) -> None:
    """Not a traceback (Ctrl-C), not a silent end (SIGTERM): one line, and nothing was queued."""
    shadow = tmp_path / "shadow"
    (shadow / "click").mkdir(parents=True)
    (shadow / "click" / "__init__.py").write_text(PAUSE + "pause('import')\n")  # cli is a click program
    child, home = paused_get(tmp_path, "1", PYTHONPATH=str(shadow))
    child.send_signal(signum)
    _, err = child.communicate(timeout=30)
    assert (child.returncode, err) == (
        code,
        f"Error: {word} while headwater was starting up; nothing was queued\n",
    )
    assert not (home / "journal.sqlite3").exists()


def test_ctrl_c_while_the_sources_load(tmp_path: Path) -> None:
    child, home = paused_get(tmp_path, "1", "2", PAUSE_AT="load")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert err == (
        "Error: interrupted: stopped while opening the journal and loading the sources; nothing was queued\n"
    )
    assert journaled(home) == {}


def test_sigterm_while_queueing_says_what_was_queued(tmp_path: Path) -> None:
    """The first target is queued (and running), the second is being queued, the third is not yet."""
    child, home = paused_get(tmp_path, "1", "pause", "3")
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 143, err
    assert err == (
        "Error: terminated: stopped while queueing: 1 of 3 download(s) queued, 1 of them unfinished, which "
        "stay in the journal (run `headwater resume` to continue them); the other 2 were not queued\n"
    )
    (record,) = journaled(home).values()
    assert (record.target, record.state) == ("1", State.QUEUED)


def test_sigterm_in_another_command_ends_it_with_one_line(tmp_path: Path) -> None:
    """Not a silent end: every command says it was stopped (``sources`` here, while a plugin loads)."""
    child, _ = paused(tmp_path, "sources", PAUSE_AT="load")
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert (child.returncode, err) == (
        143,
        "Error: terminated: `headwater sources` stopped before it finished\n",
    )
