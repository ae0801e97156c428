"""Store benchmark: the bench/engine.py workload drained with the in-memory store and with SQLite.

Workload: 50,000 jobs over 4 sources of concurrency 2 whose download sleeps
5 ms (bench/engine.py's), run once per store in the same process, memory
first. Each SQLite job commits two state changes (RUNNING, COMPLETED) before
they are visible, plus its buffered insert.

    python bench/store.py [--jobs 50000] [--sources 4] [--concurrency 2] [--sleep 0.005]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine import SleepSource  # noqa: E402  (bench/engine.py)

from headwater import Engine, RatePolicy  # noqa: E402
from headwater.store import RecordStore, SQLiteStore  # noqa: E402


def drain(dest: Path, store: RecordStore | None, args: argparse.Namespace) -> tuple[float, float]:
    """(submit seconds, drain seconds) of the workload on ``store``."""
    names = [f"s{i}" for i in range(args.sources)]
    engine = Engine(
        dest,
        plugins={n: SleepSource(args.sleep) for n in names},
        policies={n: RatePolicy(concurrency=args.concurrency) for n in names},
        store=store,
    )
    t0 = time.perf_counter()
    ids = [engine.submit(names[i % len(names)], f"https://example.org/{i}") for i in range(args.jobs)]
    submitted = time.perf_counter()
    records = engine.wait(ids, timeout=3600)
    drained = time.perf_counter()
    engine.close()
    assert all(r.state.value == "completed" for r in records), "some jobs did not complete"
    return submitted - t0, drained - t0


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
        sql_submit, sql_drain = drain(dest, SQLiteStore(journal), args)
        size = journal.stat().st_size
    ideal = args.jobs * args.sleep / (args.sources * args.concurrency)
    rows = [
        ("jobs", f"{args.jobs:,}", f"{args.jobs:,}", ""),
        ("submit rate (jobs/s)", f"{args.jobs / mem_submit:,.0f}", f"{args.jobs / sql_submit:,.0f}", ""),
        ("drain time (s)", f"{mem_drain:.2f}", f"{sql_drain:.2f}", f"ideal {ideal:.2f}"),
        ("SQLite over memory", "", f"{(sql_drain / mem_drain - 1) * 100:+.1f}%", "<= +10%"),
        ("journal size (MB)", "", f"{size / 1e6:.1f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'memory':>12}  {'sqlite':>12}  target")
    for name, mem, sql, target in rows:
        print(f"{name:<{width}}  {mem:>12}  {sql:>12}  {target}")


if __name__ == "__main__":
    main()
