"""Cluster benchmark: the cost of a download on the cluster path, and small files over HTTP vs aria2c.

Both use real ``headwater worker`` processes on the local Redis and
PostgreSQL (a key prefix and a schema of their own, removed afterwards),
one of which schedules:

(1) overhead: a no-op source (it touches an empty file and returns it),
    submitted through ``Engine(..., cluster=...)``: ``--noop`` downloads at once
    (wall time from the first submit to the last COMPLETED, per download),
    and ``--serial`` downloads one after the other (submit to COMPLETED,
    each: the latency a single download sees).
(2) small files: ``--small`` x ``--small-kib`` KiB from a local HTTP server
    (bench/http.py's), the builtin http source on ``--workers`` worker
    processes of ``--threads`` threads (``[sources.http] concurrency`` =
    ``--jobs``), against ``aria2c -j --jobs`` in the same run; and the
    floor (bench/cluster_floor.py): the same files fetched by ``--workers``
    plain Python processes of ``--threads`` httpx threads, no headwater,
    landed durably (``.part``, fsync, link) and in place (no ``.part``, no
    fsync), each row with the HTTP server's CPU a file beside its own. The
    cluster's row also gives the share of its slots' time (``--jobs`` x
    wall) that downloads spent running, from the records' ``started_at``
    and ``finished_at``: the rest is slots passing from one download to the
    next.

(3) limits: ``--limits`` no-op downloads of a source of concurrency 2 on 3
    worker processes of 4 threads; the most running at once, from the
    plugin's own log of each start and end.

Each row also gives the CPU a download cost (``cpu ms``): the worker
processes, the PostgreSQL backends their connections and the client's lead
to, the Redis server (shared with whatever else uses it) and the client,
from ``/proc`` (Linux).

    python bench/cluster.py [--noop 2000] [--serial 100] [--limits 10000] [--small 2000] [--small-kib 64]
                            [--jobs 16] [--workers 2] [--threads 8] [--rounds 2] [--parts 1,2,3]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import redis
from cluster_floor import TICK, CarriedFloor, Floor, ticks
from table import print_table

from headwater import ClusterConfig, Engine, Record, State

#: This folder: its http.py would shadow the standard library's ``http`` for httpx.
HERE = os.path.dirname(os.path.abspath(__file__))


def _bench_http():  # type: ignore[no-untyped-def]
    """bench/http.py as a module named ``bench_http``, with this folder off the import path."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    spec = importlib.util.spec_from_file_location("bench_http", Path(HERE) / "http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOOP = """
import os, time
from headwater import RatePolicy, hookimpl

def log(kind, job):
    where = os.environ.get("HW_BENCH_LOG")
    if where:
        fd = os.open(where, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{kind} {job.id} {time.time():.6f}\\n".encode())
        os.close(fd)

@hookimpl
def download_impl(job, ctx):
    log("start", job)
    path = ctx.dest_dir / job.id
    path.touch()
    log("end", job)
    return path

@hookimpl
def rate_policy():
    return RatePolicy(concurrency=64)
"""

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def install_noop(folder: Path) -> Path:
    """``folder`` holding the no-op source ``noop`` as an installed plugin."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "noop_source.py").write_text(NOOP)
    info = folder / "noopsource-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: noopsource\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[headwater.sources]\nnoop = noop_source\n")
    return folder


@contextmanager
def cluster(
    root: Path, workers: int, threads: int, jobs: int, plugins: Path, noop_concurrency: int = 64
) -> Iterator[tuple[ClusterConfig, Path, list[int]]]:
    """A cluster of ``workers`` worker processes with its own names; stopped and removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    config = ClusterConfig(REDIS_URL, PG_URL, f"bench_{tag}", 5.0, f"bench-{tag}")
    dest = root / f"dest-{tag}"
    dest.mkdir()
    config_file = root / f"headwater-{tag}.toml"
    config_file.write_text(
        f'[cluster]\nbroker = "{REDIS_URL}"\npostgres = "{PG_URL}"\nschema = "{config.schema}"\n'
        f'lease = {config.lease}\nprefix = "{config.prefix}"\n[sources.http]\nconcurrency = {jobs}\n'
        f"[sources.noop]\nconcurrency = {noop_concurrency}\n"
    )
    path = [p for p in sys.path if p and os.path.abspath(p) != HERE]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugins), *path]))
    command = [sys.executable, "-m", "headwater.cli", "--config", str(config_file), "worker"]
    started = [
        subprocess.Popen(
            [*command, "--threads", str(threads), "--dest", str(dest)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for child in started:
            assert child.stderr is not None
            line = child.stderr.readline()
            if not line.startswith("headwater: worker"):
                child.kill()  # what it says next, up to its end
                raise SystemExit(f"a worker did not start: {line}{child.stderr.read()}")
        yield config, dest, [child.pid for child in started]
    finally:
        for child in started:
            child.terminate()
        for child in started:
            child.wait(30)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=config.prefix + "*"))
        if keys:
            client.delete(*keys)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{config.schema}" CASCADE')


def _pg_ports(pid: int) -> set[int]:
    """The local ports of process ``pid``'s TCP connections to PostgreSQL (port 5432)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        with suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[2].endswith(":1538") and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Cpu:
    """CPU over a run: the workers, their and the client's PostgreSQL backends, Redis, the client."""

    def __init__(self, workers: list[int]) -> None:
        self.workers = workers
        found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout.split()
        self.redis = [int(p) for p in found]
        self._start = self._now()

    def _backends(self) -> list[int]:
        ports = set().union(*(_pg_ports(p) for p in [*self.workers, os.getpid()]))
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (sorted(ports),)
            ).fetchall()
        return [row[0] for row in rows]

    def _now(self) -> dict[str, dict[int, int]]:
        own = os.times()
        return {
            "workers": {p: ticks(p) for p in self.workers},
            "pg": {p: ticks(p) for p in self._backends()},
            "redis": {p: ticks(p) for p in self.redis},
            "client": {0: round((own.user + own.system) * TICK)},
        }

    def per(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per download since this was made, by part (and ``all``), over ``count``."""
        end = self._now()
        spent = {
            part: sum(t - self._start[part].get(p, 0) for p, t in counts.items())
            for part, counts in end.items()
        }
        per = {part: t / TICK * 1000 / count for part, t in spent.items()}
        per["all"] = sum(per.values())
        return per


def shown(per: dict[str, float]) -> str:
    """A CPU split as the table shows it: all (workers + pg + redis + client)."""
    return f"{per['all']:.2f} ({per['workers']:.2f}+{per['pg']:.2f}+{per['redis']:.2f}+{per['client']:.2f})"


def commit_latency(count: int = 100) -> float:
    """Median milliseconds of a one-row commit with a NOTIFY now (what each state change waits for)."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS hw_bench_probe (x int)")
        times = []
        for _ in range(count):
            began = time.perf_counter()
            with conn.transaction():
                conn.execute("INSERT INTO hw_bench_probe VALUES (1)")
                conn.execute("NOTIFY hw_bench_probe")
            times.append(time.perf_counter() - began)
        conn.execute("DROP TABLE hw_bench_probe")
    return statistics.median(times) * 1000


def run(client: Engine, source: str, targets: list[str], folder: Path | None = None) -> float:
    """Submit ``targets`` at once (into ``folder``) and wait for all; the wall seconds.

    Exits if one did not complete.
    """
    return run_records(client, source, targets, folder)[0]


def run_records(
    client: Engine, source: str, targets: list[str], folder: Path | None = None
) -> tuple[float, list[Record]]:
    """As :func:`run`; the wall seconds and the final records."""
    began = time.perf_counter()
    ids = [client.submit(source, t, dest_dir=folder) for t in targets]
    records = client.wait(ids, timeout=3600)
    took = time.perf_counter() - began
    failed = [r for r in records if r.state is not State.COMPLETED]
    if failed:
        raise SystemExit(f"{len(failed)} downloads did not complete, first: {failed[0].error}")
    return took, records


def running_share(records: list[Record], took: float, slots: int) -> float:
    """The share of ``slots`` x ``took`` seconds that ``records`` spent running (started_at to finished_at).

    A worker sets ``started_at`` just before it records the start and
    ``finished_at`` once the attempt is over, before its end is written; the
    rest of a slot's time is its hand-over to the next download.
    """
    ran = sum(r.finished_at - r.started_at for r in records if r.started_at and r.finished_at)
    return ran / (slots * took)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noop", type=int, default=2000)
    parser.add_argument("--serial", type=int, default=100)
    parser.add_argument("--limits", type=int, default=10000, help="downloads of the concurrency-2 run (3)")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parts", default="1,2,3", help="which workloads to run, of 1, 2 and 3")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if shutil.which("aria2c") is None and "2" in parts:
        raise SystemExit("aria2c is not installed (Debian: apt-get install aria2)")
    latency = commit_latency()
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plugins = install_noop(root / "plugins")
        if "1" in parts:
            rows += overhead(args, root, plugins)
        if "3" in parts:
            rows += limits(args, root, plugins)
        if "2" in parts:
            rows += small_files(args, root, plugins)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.rounds} rounds, medians; lease 5 s; local Redis and PostgreSQL; load average {load}")
    print(f"a PostgreSQL commit (one row and a NOTIFY) took {latency:.2f} ms (median of 100) at the start")
    header = ["workload", "runner", "wall s", "per s", "ms per download / ratio", "cpu ms (w+pg+r+c)"]
    print_table([*header, "server ms"], [row + [""] * (len(header) + 1 - len(row)) for row in rows])


def overhead(args: argparse.Namespace, root: Path, plugins: Path) -> list[list[object]]:
    """(1): ``--noop`` no-op downloads at once, ``--rounds`` times, and ``--serial`` one by one; the rows."""
    with (
        cluster(root, args.workers, args.threads, args.jobs, plugins) as (config, dest, pids),
        Engine(dest, {"noop": _noop_plugin(plugins)}, cluster=config) as client,
    ):
        run(client, "noop", ["warm-up"])  # the source's first slot waits one lease (settling)
        cpu = Cpu(pids)
        many = [run(client, "noop", [f"n{i}" for i in range(args.noop)]) for _ in range(args.rounds)]
        many_cpu = cpu.per(args.noop * args.rounds)
        cpu = Cpu(pids)
        serial = [run(client, "noop", [f"s{i}"]) for i in range(args.serial)]
        serial_cpu = cpu.per(max(1, args.serial))
    per = statistics.median(many) / args.noop * 1000
    p90 = sorted(serial)[int(len(serial) * 0.9)]
    return [
        [
            f"(1) no-op x {args.noop}, at once",
            f"{args.workers} workers x {args.threads}",
            f"{statistics.median(many):.2f}",
            f"{args.noop / statistics.median(many):,.0f}",
            f"{per:.2f}",
            shown(many_cpu),
        ],
        [
            f"(1) no-op x {args.serial}, one by one",
            "submit -> COMPLETED",
            f"{sum(serial):.2f}",
            f"{args.serial / sum(serial):,.0f}",
            f"p50 {statistics.median(serial) * 1000:.1f} / p90 {p90 * 1000:.1f}",
            shown(serial_cpu),
        ],
    ]


def limits(args: argparse.Namespace, root: Path, plugins: Path) -> list[list[object]]:
    """(3): ``--limits`` no-op downloads of a source of concurrency 2 on 3 workers of 4 threads; the row."""
    log = root / "events.log"
    os.environ["HW_BENCH_LOG"] = str(log)  # the workers of this cluster log each start and end
    with (
        cluster(root, 3, 4, args.jobs, plugins, noop_concurrency=2) as (config, dest, pids),
        Engine(dest, {"noop": _noop_plugin(plugins)}, cluster=config) as client,
    ):
        run(client, "noop", ["warm-up"])
        log.unlink()
        cpu = Cpu(pids)
        took = run(client, "noop", [f"c{i}" for i in range(args.limits)])
        spent = cpu.per(args.limits)
    del os.environ["HW_BENCH_LOG"]
    return [
        [
            f"(3) concurrency 2, no-op x {args.limits}",
            "3 workers x 4",
            f"{took:.2f}",
            f"{args.limits / took:,.0f}",
            f"at most {peak(log)} running at once",
            shown(spent),
        ]
    ]


def small_files(args: argparse.Namespace, root: Path, plugins: Path) -> list[list[object]]:
    """(2): ``--small`` files over HTTP on the cluster, with aria2c and on the floor, rounds alternating.

    The floor (bench/cluster_floor.py): ``--workers`` plain Python processes
    of ``--threads`` httpx threads, no headwater, landing each file durably
    (``.part``, fsync, link) and, below that, in place; and the durable
    floor carried by the cluster's Dramatiq broker (``CarriedFloor``). Every
    row also gives the HTTP server's CPU a file (``server ms``), which the
    clients share the machine with. The rows.
    """
    web = _bench_http()
    served = root / "served"
    served.mkdir()
    web.make_files(served, 0, args.small, args.small_kib)
    ports: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
    server = multiprocessing.Process(target=web.serve, args=(str(served), ports), daemon=True)
    server.start()
    floor = Floor(web, args.workers, args.threads)  # forked before this process has threads
    carried = CarriedFloor(web, args.workers, args.threads, REDIS_URL)
    count = args.small
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[dict[str, float]]] = {}
    shares: list[float] = []  # the cluster's: of its slots' time, the share spent running a download
    try:
        port = ports.get()
        assert server.pid is not None
        urls = [f"http://127.0.0.1:{port}/small/f{i:05d}.bin" for i in range(count)]
        list_file = root / "list.txt"
        list_file.write_text("\n".join(urls) + "\n")
        out = root / "out"
        out.mkdir()
        aria = f"aria2c -j {args.jobs}"
        ours = f"{args.workers} workers x {args.threads}, c={args.jobs}"
        floors = {
            f"floor: {args.workers} processes x {args.threads}, durable": True,
            f"floor: {args.workers} processes x {args.threads}, in place": False,
        }
        by_dramatiq = f"floor, durable, by Dramatiq: {args.workers} x {args.threads}"
        with (
            cluster(out, args.workers, args.threads, args.jobs, plugins) as (config, _, pids),
            Engine(out, load=["http"], cluster=config) as client,
        ):
            run(client, "http", [urls[0]])  # settling, as above

            def one(who: str) -> None:
                folder = web.new_folder(out)
                served_before = ticks(server.pid)
                if who == aria:
                    wall, used = web.timed(lambda: web.aria2c_fetch(list_file, folder, args.jobs))
                    spent = {"all": used * 1000 / count}
                elif who == ours:
                    cpu = Cpu(pids)
                    wall, records = run_records(client, "http", urls, folder)
                    spent = cpu.per(count)
                    shares.append(running_share(records, wall, args.jobs))
                elif who == by_dramatiq:
                    cpu = Cpu(carried.pids)
                    wall = carried.fetch(urls, folder)
                    spent = cpu.per(count)
                else:
                    wall, used = floor.fetch(urls, folder, durable=floors[who])
                    spent = {"all": used * 1000 / count}
                spent["server"] = (ticks(server.pid) - served_before) / TICK * 1000 / count
                walls.setdefault(who, []).append(wall)
                cpus.setdefault(who, []).append(spent)

            order = [aria, ours, *floors, by_dramatiq]
            for round_ in range(args.rounds):
                for who in order if round_ % 2 == 0 else reversed(order):
                    one(who)
    finally:
        floor.close()
        carried.close()
        server.terminate()
        server.join(5)
    small = f"(2) {count} x {args.small_kib} KiB"
    aria_wall = statistics.median(walls[aria])
    rows: list[list[object]] = []
    for who, took in walls.items():
        wall = statistics.median(took)
        ratio = "" if who == aria else f"{aria_wall / wall:.2f}x aria2c"
        if who == ours:
            ratio += f", slots {statistics.median(shares):.0%} running"
        least = min(cpus[who], key=lambda p: p["all"])
        rows.append(
            [
                small,
                who,
                f"{wall:.2f}",
                f"{count / wall:,.0f}",
                ratio,
                shown(least) if who in (ours, by_dramatiq) else f"{least['all']:.2f}",
                f"{least['server']:.2f}",
            ]
        )
    return rows


def peak(log: Path) -> int:
    """The most downloads running at once by the plugin's own start and end lines (an end first on a tie)."""
    edges = []
    for line in log.read_text().splitlines():
        kind, _, at = line.split()
        edges.append((float(at), 1 if kind == "start" else -1))
    running = most = 0
    for _, step in sorted(edges):
        running += step
        most = max(most, running)
    return most


def _noop_plugin(folder: Path) -> object:
    """The no-op source's module, for the submitting engine (a submit asks its hooks)."""
    spec = importlib.util.spec_from_file_location("noop_source", folder / "noop_source.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
