"""Store benchmark: the bench/engine.py workload drained with the in-memory store and with SQLite.

Workload: 50,000 jobs over 4 sources of concurrency 2 whose download sleeps
5 ms (bench/engine.py's), run in one process on three stores in turn:

- memory: the default MemoryStore;
- yield: a MemoryStore that releases the GIL once per state change
  (``time.sleep(0)``) where SQLite would write, a control that shows what
  handing the GIL over while a source's lock is held costs by itself;
- sqlite: SQLiteStore; each job commits two state changes (RUNNING,
  COMPLETED) before they are visible, plus its buffered insert.

Also the mean time of one state commit from one thread, without contention.

    python bench/store.py [--jobs 50000] [--sources 4] [--concurrency 2] [--sleep 0.005]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine import run_workload  # noqa: E402  (bench/engine.py)
from table import print_table

from headwater import Record, State  # noqa: E402
from headwater._store import MemoryStore, RecordStore, SQLiteStore  # noqa: E402


class YieldingStore(MemoryStore):
    """Keeps nothing, but lets other threads run at each state change, as a SQLite write does."""

    def commit(self, records: Sequence[Record]) -> None:
        time.sleep(0)


def drain(dest: Path, store: RecordStore | None, args: argparse.Namespace) -> tuple[float, float]:
    """(submit seconds, drain seconds) of the workload on ``store``."""
    return run_workload(dest, args, store=store)


def commit_latency(journal: Path, count: int = 10_000) -> float:
    """Mean seconds of one state commit (an upsert of one record), from one thread, no contention."""
    store = SQLiteStore(journal)
    now = time.time()
    records = [Record(f"{i:032x}", "s", f"t{i}", None, "s", State.RUNNING, now, now) for i in range(count)]
    t0 = time.perf_counter()
    for record in records:
        store.commit((record,))
    took = time.perf_counter() - t0
    store.close()
    return took / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, default in (("jobs", 50_000), ("sources", 4), ("concurrency", 2), ("sleep", 0.005)):
        parser.add_argument(f"--{name}", type=type(default), default=default)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "dest"
        dest.mkdir()
        (dest / "done").write_bytes(b"")
        journal = Path(tmp) / "journal.sqlite3"
        mem_submit, mem_drain = drain(dest, None, args)
        yield_submit, yield_drain = drain(dest, YieldingStore(), args)
        sql_submit, sql_drain = drain(dest, SQLiteStore(journal), args)
        size = journal.stat().st_size
        latency = commit_latency(Path(tmp) / "latency.sqlite3")
    ideal = args.jobs * args.sleep / (args.sources * args.concurrency)

    def over(drain: float) -> str:
        return f"{(drain / mem_drain - 1) * 100:+.1f}%"

    rows = [
        ("jobs", f"{args.jobs:,}", f"{args.jobs:,}", f"{args.jobs:,}", ""),
        (
            "submit rate (jobs/s)",
            *(f"{args.jobs / t:,.0f}" for t in (mem_submit, yield_submit, sql_submit)),
            "",
        ),
        ("drain time (s)", *(f"{t:.2f}" for t in (mem_drain, yield_drain, sql_drain)), f"ideal {ideal:.2f}"),
        ("drain over memory", "", over(yield_drain), over(sql_drain), "sqlite <= +10%"),
        ("journal size (MB)", "", "", f"{size / 1e6:.1f}", ""),
        ("one commit, one thread (us)", "", "", f"{latency * 1e6:.0f}", ""),
    ]
    print_table(("measure", "memory", "yield", "sqlite", "target"), rows)


if __name__ == "__main__":
    main()
