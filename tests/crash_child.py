"""The process the crash test kills: runs jobs against a slow local source on a SQLite journal.

    python crash_child.py JOURNAL DEST JOBS submit   # submit JOBS jobs, print "SUBMITTED", drain
    python crash_child.py JOURNAL DEST JOBS resume   # run what the journal holds, print "DRAINED"

Targets are ``job-NNNN``. Every 50th fails (the source raises), every 100th
is cancelled right after submission; the rest complete. The source writes
``<target>.part`` in chunks and renames it to its final path, resuming a
``.part`` a killed run left behind, so a file at a final path is complete.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from headwater import DownloadContext, Engine, Job, RatePolicy, hookimpl
from headwater._journal import SQLiteStore

CHUNKS = 4
CHUNK = 1024


def content(target: str) -> bytes:
    """What a completed download of ``target`` holds."""
    return (target.encode() * (CHUNKS * CHUNK // len(target) + 1))[: CHUNKS * CHUNK]


def outcome(index: int) -> str:
    """The terminal state job ``index`` must end in."""
    if index % 100 == 0:
        return "cancelled"
    if index % 50 == 0:
        return "failed"
    return "completed"


class SlowSource:
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        if outcome(int(job.target.split("-")[1])) == "failed":
            raise RuntimeError(f"{job.target} fails on purpose")
        final = ctx.dest_dir / job.target
        part = final.with_name(final.name + ".part")
        data = content(job.target)
        done = part.stat().st_size if part.exists() else 0
        with part.open("ab") as out:
            while done < len(data):
                if ctx.cancelled.is_set():
                    out.close()
                    part.unlink()
                    return None
                time.sleep(0.002)
                piece = data[done : done + CHUNK]
                out.write(piece)
                out.flush()
                done += len(piece)
                ctx.progress(done, len(data))
            os.fsync(out.fileno())
        os.replace(part, final)
        return final

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        return RatePolicy(concurrency=8)


def main() -> None:
    journal, dest, jobs, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    engine = Engine(dest, plugins={"slow": SlowSource()}, store=SQLiteStore(journal, flush_interval=0.05))
    if mode == "submit":
        ids = []
        for i in range(jobs):
            ids.append(engine.submit("slow", f"job-{i:04d}"))
            if outcome(i) == "cancelled":
                engine.cancel(ids[-1])
        engine.flush()
        print("SUBMITTED", flush=True)
    engine.wait([r.id for r in engine.records()], timeout=120)
    engine.close()
    print("DRAINED", flush=True)


if __name__ == "__main__":
    main()
