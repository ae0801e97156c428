"""What a cluster's records in PostgreSQL cost: writes per second, the change feed's latency, page queries.

Against the PostgreSQL on 127.0.0.1:5432 (``--url``), in schemas of this
run's own, dropped at the end:

- ``SELECT 1`` through the store's pool: the floor of any write;
- commit: one state change of one record (an upsert of the whole row, its
  change logged and NOTIFY sent by the trigger), from 1 and ``--threads``
  threads, each thread on records of its own;
- conditional update: the same through ``commit_if`` (``WHERE id AND state
  AND attempts``), one swap a call, and 16 a call;
- the change feed: from before ``commit_if`` is called to the listener's
  ``publish`` in the same process, median and 99th percentile;
- page queries on ``--records`` records (filled with COPY, triggers off):
  the first page of 100, a page deep in the history (by cursor), pages
  filtered by state, by source, by both; median of 20.

    python bench/pgstore.py [--ops 2000] [--threads 8] [--records 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from table import print_table  # noqa: E402
from timing import Op, timed  # noqa: E402

from headwater import Change, Record, State, Swap  # noqa: E402
from headwater._cluster._pgfeed import RecordListener  # noqa: E402
from headwater._cluster._pgstore import PostgresStore  # noqa: E402
from headwater._codec import encode  # noqa: E402

#: Records each thread cycles through.
PER_THREAD = 50


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


class Writers:
    """Records of each thread's own, and the ops that change them through ``store``."""

    def __init__(self, store: PostgresStore, threads: int, tag: str) -> None:
        self.store = store
        self.rows = [
            [Record(f"{tag}-{t}-{i}", "a", "t", None, "u", State.QUEUED, 1.0, 1.0) for i in range(PER_THREAD)]
            for t in range(threads)
        ]
        for mine in self.rows:
            for record in mine:
                store.add(record)
        store.flush()

    def _next(self, record: Record) -> Record:
        state = State.QUEUED if record.state is State.RUNNING else State.RUNNING
        attempts = record.attempts + (state is State.RUNNING)
        return attrs.evolve(record, state=state, attempts=attempts, updated_at=record.updated_at + 1)

    def commit(self, t: int, n: int) -> None:
        mine = self.rows[t]
        new = self._next(mine[n % PER_THREAD])
        self.store.commit([new])
        mine[n % PER_THREAD] = new

    def swap(self, t: int, n: int, width: int = 1) -> None:
        mine = self.rows[t]
        places = [(n * width + k) % PER_THREAD for k in range(width)]
        swaps = [Swap.over(mine[p], self._next(mine[p])) for p in places]
        assert all(self.store.commit_if(swaps)), "a conditional write of the only writer was refused"
        for p, swap in zip(places, swaps, strict=True):
            mine[p] = swap.record


def writes(url: str, ops: int, threads: int) -> list[list[object]]:
    schema = f"hwbench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(url, schema=schema, pool_size=threads)
    rows: list[list[object]] = []
    try:

        def ping(t: int, n: int) -> None:
            store._read(lambda conn: conn.execute("SELECT 1").fetchone(), "read")  # noqa: SLF001

        cases: list[tuple[str, Callable[[Writers], Op], int]] = [
            ("SELECT 1 (the floor)", lambda w: ping, 1),
            ("commit, 1 record", lambda w: w.commit, 1),
            ("conditional update, 1 a call", lambda w: w.swap, 1),
            ("conditional update, 16 a call (rows)", lambda w: lambda t, n: w.swap(t, n, 16), 16),
        ]
        for case, (name, make, width) in enumerate(cases):
            row: list[object] = [name]
            for count in (1, threads):
                op = make(Writers(store, count, f"c{case}t{count}"))
                per_s, latencies = timed(op, ops // width if width > 1 else ops, count)
                row.append(f"{per_s * width:,.0f}")
                if count == 1:
                    row += [f"{statistics.median(latencies) * 1e3:.2f}", f"{p99(latencies) * 1e3:.2f}"]
            rows.append(row)
    finally:
        store.close()
        drop(url, schema)
    return rows


def feed_latency(url: str, changes: int) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, changes heard): from before a conditional write to the listener's publish."""
    schema = f"hwbench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(url, schema=schema)
    sent: dict[tuple[str, int], float] = {}
    heard: dict[tuple[str, int], float] = {}
    done = threading.Event()

    def publish(batch: list[Change]) -> None:
        now = time.perf_counter()
        for change in batch:
            key = (change.record.id, change.record.attempts)
            if change.record.state is State.RUNNING:
                heard[key] = now
        if len(heard) >= changes:
            done.set()

    listener = RecordListener(url, publish, schema=schema)
    listener.start()
    try:
        record = Record("feed", "a", "t", None, "u", State.QUEUED, 1.0, 1.0)
        store.add(record)
        store.flush()
        for n in range(changes):
            running = attrs.evolve(record, state=State.RUNNING, attempts=record.attempts + 1)
            sent[(record.id, running.attempts)] = time.perf_counter()
            store.commit_if([Swap.over(record, running)])
            record = attrs.evolve(running, state=State.QUEUED)
            store.commit_if([Swap.over(running, record)])
            if n % 10 == 0:
                time.sleep(0.002)  # not only back to back
        done.wait(60)
        waits = [heard[key] - at for key, at in sent.items() if key in heard]
        return statistics.median(waits) * 1e3, p99(waits) * 1e3, len(heard)
    finally:
        listener.close()
        store.close()
        drop(url, schema)


def pages(url: str, count: int) -> list[list[object]]:
    """Milliseconds per page query on ``count`` records: median of 20."""
    schema = f"hwbench_{uuid.uuid4().hex[:8]}"
    PostgresStore(url, schema=schema).close()
    states = [State.COMPLETED] * 7 + [State.FAILED, State.CANCELLED, State.QUEUED]
    sources = ["http", "file", "yt-dlp", "other"]
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers: the fill is not a change
        table = f'"{schema}".records'
        columns = "(id, source, state, attempts, owner, created_at, updated_at, data)"
        with conn.cursor().copy(f"COPY {table} {columns} FROM STDIN") as copy:
            for i in range(count):
                at = 1_700_000_000.0 + i * 0.01
                record = Record(
                    f"{i:016x}{uuid.uuid4().hex[:16]}", sources[i % 4], f"https://example.org/{i}", None,
                    "u", states[i % 10], at, at, attempts=1, file_path=f"/d/{i}",
                )  # fmt: skip
                copy.write_row((record.id, record.source, record.state.value, 1, "o", at, at, encode(record)))
        conn.execute(f"ANALYZE {table}")
        middle = conn.execute(
            f"SELECT id FROM {table} ORDER BY created_at, id OFFSET %s LIMIT 1", (count // 2,)
        )
        deep = middle.fetchone()[0]  # type: ignore[index]
    filled = time.perf_counter() - began
    store = PostgresStore(url, schema=schema)
    rows: list[list[object]] = []
    try:
        cases: list[tuple[str, Callable[[], object]]] = [
            ("first page of 100, ended", lambda: store.page(limit=100)),
            ("page of 100 at the middle (cursor)", lambda: store.page(before=deep, limit=100)),
            ("page of 100, failed only", lambda: store.page(states={State.FAILED}, limit=100)),
            ("page of 100, one source", lambda: store.page(sources={"file"}, limit=100)),
            (
                "page of 100, 2 states x 2 sources",
                lambda: store.page(
                    states={State.FAILED, State.CANCELLED}, sources={"file", "http"}, limit=100
                ),
            ),
            ("get one ended record", lambda: store.get(deep)),
        ]
        for name, query in cases:
            assert query(), name
            took = []
            for _ in range(20):
                t = time.perf_counter()
                query()
                took.append(time.perf_counter() - t)
            rows.append([name, f"{statistics.median(took) * 1e3:.2f}", f"{max(took) * 1e3:.2f}"])
    finally:
        store.close()
        drop(url, schema)
    rows.append([f"(filled {count:,} records with COPY in {filled:.0f} s)", "", ""])
    return rows


def drop(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--ops", type=int, default=2000, help="calls per thread and row")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--changes", type=int, default=2000, help="changes timed through the feed")
    parser.add_argument("--records", type=int, default=1_000_000, help="records under the page queries")
    args = parser.parse_args()

    print(f"writes: {args.ops} calls per thread and row; latency from the 1-thread run\n")
    print_table(
        ["operation", "per s, 1 thread", "median ms", "p99 ms", f"per s, {args.threads} threads"],
        writes(args.url, args.ops, args.threads),
    )
    p50, p99_ms, heard = feed_latency(args.url, args.changes)
    print(f"\nchange feed (NOTIFY to publish), {heard} changes: p50 {p50:.2f} ms, p99 {p99_ms:.2f} ms\n")
    print_table(["query", "median ms", "max ms"], pages(args.url, args.records))


if __name__ == "__main__":
    main()
