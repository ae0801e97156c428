"""The engine process the landing test kills right after its plugin landed a file.

    python landkill_child.py JOURNAL DEST kill    # submit once.bin; its plugin lands it, then SIGKILLs us
    python landkill_child.py JOURNAL DEST resume  # run what the journal holds; print each record as JSON

In ``kill`` mode the plugin lands only once the submission is in the
journal, and kills the process before the attempt's end can be written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from headwater import DownloadContext, Engine, Job, PartFile, hookimpl
from headwater._journal import SQLiteStore


class LandingSource:
    def __init__(self, kill: bool) -> None:
        self.kill = kill
        self.journaled = threading.Event()

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        part = PartFile(ctx.dest_dir, ctx.dest_dir / job.target, existing=ctx.existing)
        part.write(b"y" * 1000)
        if self.kill:
            self.journaled.wait(30)
        landed = part.land()
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return landed


def main() -> None:
    journal, dest, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    source = LandingSource(kill=mode == "kill")
    engine = Engine(dest, plugins={"landing": source}, store=SQLiteStore(journal, flush_interval=0.05))
    if mode == "kill":
        engine.submit("landing", "once.bin")
        engine.flush()
        source.journaled.set()
        threading.Event().wait(30)  # the plugin kills the process before this returns
        sys.exit("the plugin did not kill the process")
    for record in engine.wait([r.id for r in engine.records()], timeout=30):
        fields = {"state": record.state.value, "path": record.file_path, "attempts": record.attempts}
        print(json.dumps(fields))
    engine.close()


if __name__ == "__main__":
    main()
