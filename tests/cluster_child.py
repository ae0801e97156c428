"""Processes that hold the cluster's Redis leases for tests and benchmarks, and the Redis they use.

Run as a program, one holder that the test signals (SIGKILL, SIGSTOP)::

    python cluster_child.py hold PORT PREFIX SOURCE HOLDER LEASE
        # acquire a slot of SOURCE (concurrency 1), print "HELD", renew it until the lease
        # is lost, then print "LOST", release it, print "RELEASED True|False" and exit
    python cluster_child.py lead PORT PREFIX HOLDER TTL
        # claim the scheduler lease until it wins, print "LEADING <term>", renew it forever

Started by multiprocessing (spawn): :func:`race` (holders racing for slots,
counting themselves) and the others taking a ``barrier``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier
from pathlib import Path

import redis

from headwater import RatePolicy
from headwater._cluster._keeper import LeaseKeeper
from headwater._cluster._leader import LeaderLease
from headwater._cluster._limits import RedisLimits, Verdict

HOST = "127.0.0.1"
PORT = 6379


def connect(port: int = PORT, timeout: float = 5.0) -> redis.Redis:
    """A client of the Redis on 127.0.0.1:``port``, waiting at most ``timeout`` seconds per call."""
    return redis.Redis(HOST, port, socket_timeout=timeout, socket_connect_timeout=timeout)


def limits(
    port: int, prefix: str, source: str, policy: RatePolicy, lease: float, settle: float = 0.0
) -> RedisLimits:
    """RedisLimits of ``source`` on the Redis at ``port`` under ``prefix``."""
    return RedisLimits(connect(port), source, policy, lease=lease, settle=settle, prefix=prefix)


def wait_for(found: RedisLimits, holder: str, poll: float = 0.005) -> Verdict:
    """Acquire for ``holder``, asking again at the verdict's time (at most ``poll`` later), until granted."""
    while True:
        verdict = found.acquire(holder, time.monotonic())
        if verdict.granted:
            return verdict
        time.sleep(max(0.0, min(poll, verdict.at - time.monotonic())))


def race(
    port: int,
    prefix: str,
    policy: RatePolicy,
    barrier: Barrier,
    name: str,
    threads: int,
    starts: int,
    work: float,
) -> None:
    """Holders racing for one source's slots, each counting itself in and out of ``<prefix>inside``.

    ``threads`` threads of this process (named ``name``) start together
    with every other racer (``barrier``), and each takes a slot ``starts``
    times, holds it ``work`` seconds, and gives it back. A holder counts
    itself in right after its slot is granted and out right before it
    releases it, so the count never exceeds the slots held; every count it
    saw on entering goes on ``<prefix>seen``.
    """
    client = connect(port)
    found = RedisLimits(client, "racy", policy, lease=30.0, settle=0.0, prefix=prefix)

    def run(index: int) -> None:
        for start in range(starts):
            holder = f"{name}-{index}:{start}"
            wait_for(found, holder, poll=0.001)
            client.rpush(prefix + "seen", int(client.incr(prefix + "inside")))
            time.sleep(work)
            client.decr(prefix + "inside")
            found.release(holder, time.monotonic())

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    barrier.wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def take_all(port: int, prefix: str, policy: RatePolicy, barrier: Barrier, name: str, tries: int) -> None:
    """Ask for a slot ``tries`` times with no wait between, keeping every slot granted.

    Pushes ``<name> <reason>`` of each verdict on ``<prefix>verdicts``.
    """
    client = connect(port)
    found = RedisLimits(client, "capped", policy, lease=30.0, settle=0.0, prefix=prefix)
    barrier.wait()
    for attempt in range(tries):
        verdict = found.acquire(f"{name}:{attempt}", time.monotonic())
        client.rpush(prefix + "verdicts", f"{name} {verdict.reason}")


def paced(port: int, prefix: str, policy: RatePolicy, barrier: Barrier, name: str, starts: int) -> None:
    """Take a slot ``starts`` times; push ``<start> <end>`` (Redis server times) of each on ``<prefix>spans``.

    The start is read right after the grant and the end right before the
    release, so the real span of each slot holds the recorded one.
    """
    client = connect(port)
    found = RedisLimits(client, "paced", policy, lease=30.0, settle=0.0, prefix=prefix)
    barrier.wait()
    for start in range(starts):
        holder = f"{name}:{start}"
        wait_for(found, holder)
        began = server_time(client)
        time.sleep(0.01)
        ended = server_time(client)
        found.release(holder, time.monotonic())
        client.rpush(prefix + "spans", f"{began} {ended}")


def server_time(client: redis.Redis) -> float:
    """The Redis server's clock, in seconds."""
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000


def try_once(port: int, prefix: str, barrier: Barrier, name: str) -> None:
    """Ask once for a slot of ``"paused"`` at the barrier; push ``<reason> <wait>`` on ``<prefix>answers``."""
    client = connect(port)
    found = RedisLimits(client, "paused", RatePolicy(concurrency=5), lease=30.0, settle=0.0, prefix=prefix)
    barrier.wait()
    now = time.monotonic()
    verdict = found.acquire(name, now)
    client.rpush(prefix + "answers", f"{verdict.reason} {verdict.at - now}")


def claim(port: int, prefix: str, barrier: Barrier, name: str, ttl: float) -> None:
    """Claim the leader lease once at the barrier; push ``<name> <term or 0>`` on ``<prefix>claims``."""
    client = connect(port)
    lease = LeaderLease(client, name, ttl=ttl, prefix=prefix)
    barrier.wait()
    client.rpush(prefix + "claims", f"{name} {lease.claim() or 0}")


def _hold(port: int, prefix: str, source: str, holder: str, lease: float) -> None:
    found = limits(port, prefix, source, RatePolicy(concurrency=1), lease)
    wait_for(found, holder)
    lost = threading.Event()
    keeper = LeaseKeeper(lease / 4)
    keeper.keep(holder, lambda: found.renew(holder, time.monotonic()), lease, lost.set)
    print("HELD", flush=True)
    lost.wait()
    print("LOST", flush=True)
    keeper.close()
    print("RELEASED", found.release(holder, time.monotonic()), flush=True)


def _lead(port: int, prefix: str, holder: str, ttl: float) -> None:
    lease = LeaderLease(connect(port), holder, ttl=ttl, prefix=prefix)
    while (term := lease.claim()) is None:
        time.sleep(ttl / 10)
    print("LEADING", term, flush=True)
    while lease.renew():
        time.sleep(ttl / 4)
    print("LOST", flush=True)


def start(*args: str) -> subprocess.Popen[str]:
    """Run this file as a program with ``args``; its stdout is read line by line."""
    return subprocess.Popen(
        [sys.executable, "-u", __file__, *args], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def expect(child: subprocess.Popen[str], word: str) -> str:
    """The next line ``child`` prints, checked to start with ``word``."""
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line.startswith(word), f"expected {word!r} from the child, got {line!r}"
    return line


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_redis(folder: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of our own on ``port`` keeping nothing on disk, stopped when the block ends."""
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = connect(port, timeout=1.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.02)
        yield server
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "hold":
        _hold(int(rest[0]), rest[1], rest[2], rest[3], float(rest[4]))
    elif command == "lead":
        _lead(int(rest[0]), rest[1], rest[2], float(rest[3]))
    else:
        sys.exit(f"unknown command {command!r}")
