"""Dramatiq's ConcurrentRateLimiter beside headwater's Redis leases, on the same Redis: two failures.

Both limiters run against the Redis on 127.0.0.1:6379 (``--port``), under a
key prefix of this run's own, deleted at the end. Dramatiq's limiter is one
counter key whose TTL every change refreshes; headwater's is a sorted set of
leases that expire unless renewed (docs/cluster.md). The TTL and the lease are
both ``--ttl`` seconds (Dramatiq's default TTL is 15 minutes; a short one
shows the same behaviour sooner).

1. dead holder: limit 2. A holder process takes a slot and is SIGKILLed.
   Then steady traffic: for ``--traffic`` seconds, a second holder takes and
   gives back the other slot every 10 ms, and while it holds it a third
   asks for a slot. The table shows when the dead holder's slot was free
   again, counted from the kill.
2. long holder: limit 1. Holder A runs for 2.5 TTLs (headwater's renews its
   lease meanwhile); B asks at 1.2 TTLs and, if let in, runs 2 TTLs; C asks
   right after A ends. Each holder counts itself in and out; the table shows
   the most that ran at once.

    python bench/dramatiq_limits.py [--ttl 1.0] [--traffic 4.0] [--port 6379]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import redis
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

sys.path.insert(0, str(Path(__file__).parent))

from table import print_table  # noqa: E402

from headwater import RatePolicy  # noqa: E402
from headwater._cluster._keeper import LeaseKeeper  # noqa: E402
from headwater._cluster._limits import RedisLimits  # noqa: E402

#: A slot held for the length of a ``with``: yields whether it was granted.
Slot = Callable[[str], AbstractContextManager[bool]]

#: How many slots are held now, read without changing anything.
Held = Callable[[], int]


def dramatiq_slots(client: redis.Redis, key: str, limit: int, ttl: float) -> tuple[Slot, Held]:
    """Slots of Dramatiq's ConcurrentRateLimiter on ``key`` (the holder's name is not used: it has none)."""
    limiter = ConcurrentRateLimiter(RedisBackend(client=client), key, limit=limit, ttl=int(ttl * 1000))

    def slot(holder: str) -> AbstractContextManager[bool]:
        return limiter.acquire(raise_on_failure=False)  # type: ignore[no-any-return]

    return slot, lambda: int(client.get(key) or 0)


def headwater_slots(
    client: redis.Redis, prefix: str, limit: int, ttl: float, keeper: LeaseKeeper
) -> tuple[Slot, Held]:
    """Slots of headwater's RedisLimits: a lease of ``ttl`` seconds, renewed by ``keeper`` while held."""
    limits = RedisLimits(client, "bench", RatePolicy(concurrency=limit), lease=ttl, settle=0, prefix=prefix)

    @contextmanager
    def slot(holder: str) -> Iterator[bool]:
        granted = limits.acquire(holder, time.monotonic()).granted
        if granted:
            keeper.keep(holder, lambda: limits.renew(holder, 0.0), ttl, lambda: None)
        try:
            yield granted
        finally:
            if granted:
                keeper.drop(holder)
                limits.release(holder, 0.0)

    return slot, limits.running


def make_slots(
    kind: str, client: redis.Redis, prefix: str, limit: int, ttl: float, keeper: LeaseKeeper
) -> tuple[Slot, Held]:
    if kind == "dramatiq":
        return dramatiq_slots(client, prefix + "dramatiq", limit, ttl)
    return headwater_slots(client, prefix, limit, ttl, keeper)


def dead_holder(kind: str, args: argparse.Namespace, prefix: str) -> str:
    """Scenario 1: seconds from the SIGKILL of a slot's holder until the slot was taken again."""
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--hold",
            kind,
            "--prefix",
            prefix,
            "--ttl",
            str(args.ttl),
            "--port",
            str(args.port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "HELD"
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed = time.monotonic()
    client = redis.Redis("127.0.0.1", args.port)
    keeper = LeaseKeeper(args.ttl / 4)
    slots, held = make_slots(kind, client, prefix, 2, args.ttl, keeper)
    free_at = None
    round_ = 0
    while time.monotonic() < killed + args.traffic and free_at is None:
        with slots(f"second:{round_}") as second:
            if second:
                with slots("third:1") as third:
                    if third:
                        free_at = time.monotonic() - killed
        round_ += 1
        time.sleep(0.01)
    traffic_ended = time.monotonic()
    if free_at is not None:
        keeper.close()
        return f"{free_at:.2f} s, under traffic"
    keeper.close()
    while held() > 0:  # traffic over: when does the slot come free, with no one touching the key?
        time.sleep(0.01)
    return (
        f"never in {args.traffic:g} s of traffic; {time.monotonic() - traffic_ended:.2f} s after it stopped"
    )


def long_holder(kind: str, args: argparse.Namespace, prefix: str) -> str:
    """Scenario 2: the most holders at once, counted by themselves, and who was let in."""
    client = redis.Redis("127.0.0.1", args.port)
    keeper = LeaseKeeper(args.ttl / 4)
    slots, _ = make_slots(kind, client, prefix, 1, args.ttl, keeper)
    inside, most, let_in = 0, 0, []
    lock = threading.Lock()

    def hold(name: str, start: float, seconds: float) -> None:
        nonlocal inside, most
        time.sleep(start)
        with slots(name) as granted:
            if not granted:
                return
            with lock:
                inside += 1
                most = max(most, inside)
                let_in.append(name)
            time.sleep(seconds)
            with lock:
                inside -= 1

    ttl = args.ttl
    plan = [("A", 0.0, 2.5 * ttl), ("B", 1.2 * ttl, 2.0 * ttl), ("C", 2.6 * ttl, 0.5 * ttl)]
    threads = [threading.Thread(target=hold, args=step) for step in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keeper.close()
    return f"at most {most} at once; let in: {', '.join(let_in)}"


def hold_forever(kind: str, args: argparse.Namespace) -> None:
    """The holder that scenario 1 kills: take a slot (limit 2), say HELD, keep it."""
    client = redis.Redis("127.0.0.1", args.port)
    keeper = LeaseKeeper(args.ttl / 4)
    slot, _ = make_slots(kind, client, args.prefix, 2, args.ttl, keeper)
    with slot("doomed:1") as granted:
        assert granted
        print("HELD", flush=True)
        while True:
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ttl", type=float, default=1.0, help="Dramatiq's TTL and headwater's lease, seconds"
    )
    parser.add_argument("--traffic", type=float, default=4.0, help="seconds of steady traffic in scenario 1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--hold", choices=["dramatiq", "headwater"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold_forever(args.hold, args)
        return
    client = redis.Redis("127.0.0.1", args.port)
    rows = []
    for kind in ("dramatiq", "headwater"):
        prefix = f"hwbench:{uuid.uuid4().hex}:"
        try:
            rows.append(
                (kind, dead_holder(kind, args, prefix + "dead:"), long_holder(kind, args, prefix + "long:"))
            )
        finally:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
    print(f"TTL / lease {args.ttl:g} s; Redis on 127.0.0.1:{args.port}")
    print_table(["limiter", "1. dead holder's slot free after", "2. holder outliving the TTL"], rows)


if __name__ == "__main__":
    main()
