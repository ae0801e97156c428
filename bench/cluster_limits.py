"""What the cluster's Redis leases cost: round trips per second, and the latency a lease adds to a start.

Against the Redis on 127.0.0.1:6379 (``--port``), under a key prefix of this
run's own, deleted at the end. Each row runs ``--ops`` operations from each of
1 and ``--threads`` threads of one process (one client, its connection pool):

- PING: one round trip and nothing else, the floor of any Redis call;
- acquire + release: a start and an end of one download (two scripts);
- acquire, granted: the cost a lease adds to a start (one script);
- acquire, refused: a source whose every slot is held;
- renew: what a worker pays per running download every third of a lease;
- acquire + release, per-minute cap: with the window's sorted set too.

Latency is per call, from the single-threaded run: median and 99th percentile.

    python bench/cluster_limits.py [--ops 5000] [--threads 4] [--port 6379]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).parent))

from table import print_table  # noqa: E402
from timing import Op, timed  # noqa: E402

from headwater import RatePolicy  # noqa: E402
from headwater._cluster._limits import RedisLimits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=5000, help="operations per thread and row")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--port", type=int, default=6379)
    args = parser.parse_args()
    client = redis.Redis("127.0.0.1", args.port, socket_timeout=5)
    prefix = f"hwbench:{uuid.uuid4().hex}:"
    open_ = RedisLimits(client, "open", RatePolicy(concurrency=10**9), lease=10.0, settle=0, prefix=prefix)
    capped = RedisLimits(
        client, "capped", RatePolicy(concurrency=10**9, per_minute=10**9), lease=10.0, settle=0, prefix=prefix
    )
    full = RedisLimits(client, "full", RatePolicy(concurrency=1), lease=600.0, settle=0, prefix=prefix)
    assert full.acquire("holder", 0.0).granted
    renewed = [f"renewed:{i}" for i in range(args.threads)]
    for holder in renewed:
        assert open_.acquire(holder, 0.0).granted

    def start_end(limits: RedisLimits, tag: str) -> Op:
        def op(index: int, n: int) -> None:
            holder = f"{tag}:{index}:{n}"
            limits.acquire(holder, 0.0)
            limits.release(holder, 0.0)

        return op

    rows_spec: list[tuple[str, Op]] = [
        ("PING", lambda index, n: client.ping()),
        ("acquire + release", start_end(open_, "a")),
        ("acquire, granted", lambda index, n: open_.acquire(f"g:{index}:{n}", 0.0)),
        ("acquire, refused", lambda index, n: full.acquire(f"r:{index}:{n}", 0.0)),
        ("renew", lambda index, n: open_.renew(renewed[index], 0.0)),
        ("acquire + release, per-minute cap", start_end(capped, "c")),
    ]
    rows = []
    medians: dict[str, float] = {}
    timed(rows_spec[0][1], args.ops, args.threads)  # warm up: connections made, caches filled
    try:
        for name, op in rows_spec:
            one, latencies = timed(op, args.ops, 1)
            many, _ = timed(op, args.ops, args.threads)
            latencies.sort()
            medians[name] = statistics.median(latencies)
            p99 = latencies[int(len(latencies) * 0.99)]
            rows.append(
                (
                    name,
                    f"{one:,.0f}",
                    f"{many:,.0f}",
                    f"{medians[name] * 1e6:.0f}",
                    f"{p99 * 1e6:.0f}",
                )
            )
            if name == "acquire, granted":  # it left its leases held: drop them, as the other rows do
                client.delete(open_.keys()[0])
                for holder in renewed:
                    open_.acquire(holder, 0.0)
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    version = client.info("server")["redis_version"]
    print(f"Redis {version} on 127.0.0.1:{args.port}; {args.ops} operations per thread")
    print_table(
        ["operation", "per s, 1 thread", f"per s, {args.threads} threads", "median us", "p99 us"],
        rows,
    )
    start, end, trip = medians["acquire, granted"], medians["acquire + release"], medians["PING"]
    print(
        f"A lease adds {start * 1e6:.0f} us to a start (a round trip alone: {trip * 1e6:.0f} us), "
        f"{(end - start) * 1e6:.0f} us to an end."
    )


if __name__ == "__main__":
    main()
