"""An installed-looking slow source for command-line tests in real subprocesses.

:func:`install` writes a module and a ``.dist-info`` folder declaring it as
the ``slow`` entry point into a folder; put that folder on PYTHONPATH and
discovery finds it like any installed plugin. Target ``N`` writes N chunks,
one every 50 ms, and stops within a chunk of a cancel.
"""

from __future__ import annotations

from pathlib import Path

from child_env import install_plugin

MODULE = """
import time
from pathlib import Path
from headwater import DownloadCancelled, RatePolicy, hookimpl

@hookimpl
def download_impl(job, ctx):
    chunks = int(job.target)
    final = ctx.dest_dir / f"slow-{job.target}-{job.id}.bin"
    part = final.with_name(final.name + ".part")
    with part.open("wb") as out:
        for i in range(chunks):
            if ctx.cancelled.is_set():
                out.close()
                part.unlink()
                raise DownloadCancelled("stopped")
            time.sleep(0.05)
            out.write(b"x" * 1000)
            ctx.progress((i + 1) * 1000, chunks * 1000)
    part.replace(final)
    return final

@hookimpl
def rate_policy():
    return RatePolicy(concurrency=2)
"""


def install(folder: Path) -> Path:
    """Make ``folder`` hold the ``slow`` source plugin (distribution ``slowsource 1.0``); return it."""
    return install_plugin(folder, "slow_source", MODULE, "slow", "slowsource")
