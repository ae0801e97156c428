"""`headwater serve` benchmark: list latency, a 1,000-target submit, progress latency, idle CPU.

Workload (issue 15): a journal holding 10,000 downloads and 50 connected
event streams. Measured: listing 100 downloads (p50, p99 of 1,000 requests);
submitting 1,000 targets in one request; how long progress reported by 200
running downloads takes to reach every stream; the server's CPU while idle
with the 50 streams connected.

The server runs in its own process (this script with ``--child``), on a
SQLite journal, with one source whose downloads report the wall-clock time
as their progress every 100 ms, so each stream can tell how old a figure is
when it arrives.

    python bench/serve.py [--journal 10000] [--streams 50] [--running 200] [--idle 10]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package that httpx imports: look in
# this folder only after the packages, and only for table.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]
sys.path.append(_HERE)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import attrs  # noqa: E402
import httpx  # noqa: E402
from table import print_table  # noqa: E402

from headwater import DownloadContext, Engine, Job, RatePolicy, Record, SQLiteStore, State, hookimpl  # noqa: E402
from headwater._serve.run import BackgroundServer  # noqa: E402

TOKEN = "bench-token-0123456789abcdefghijklmnopqrstuvwxyz"
TOTAL = 10**15  # the "size" of a progress download: its progress is the time in milliseconds


class BenchSource:
    """``done:...`` lands at once; ``progress:SECONDS:...`` reports the time (ms) as progress every 0.1 s."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        kind, _, arg = job.target.partition(":")
        if kind == "progress":
            end = time.monotonic() + float(arg.split(":")[0])
            while time.monotonic() < end and not ctx.cancelled.wait(0.1):
                ctx.progress(int(time.time() * 1000), TOTAL)
        path = ctx.dest_dir / "done"
        path.touch()
        return path

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        return RatePolicy(concurrency=250, existing="overwrite")


def child(journal: Path, dest: Path) -> None:
    """The server process: serve the journal until stdin closes; print the URL and pid first."""
    engine = Engine(dest, plugins={"bench": BenchSource()}, store=SQLiteStore(journal), idle_timeout=30)
    with BackgroundServer(engine, TOKEN) as server:
        print(json.dumps({"url": server.url, "pid": os.getpid()}), flush=True)
        sys.stdin.read()
    engine.close()


def fill(journal: Path, count: int) -> None:
    """Put ``count`` completed downloads in the journal."""
    store = SQLiteStore(journal)
    now = time.time()
    records = [
        Record(
            f"{int((now - count + n) * 1000):012x}{n:020x}",
            "bench",
            f"done:{n}",
            None,
            "bench",
            State.COMPLETED,
            now - count + n,
            now - count + n,
            progress=100.0,
            file_path="/tmp/done",
        )
        for n in range(count)
    ]
    for at in range(0, count, 1000):
        store.commit(records[at : at + 1000])
    store.close()


@attrs.define
class Streams:
    """``count`` event streams on one event loop, noting how old each progress figure is on arrival."""

    url: str
    count: int
    latencies: list[float] = attrs.Factory(list)  # ms from the report to its arrival, all streams
    reached: list[set[str]] = attrs.Factory(list)  # per stream: downloads whose progress it saw
    snapshots: int = 0  # streams that got their snapshot
    connected: threading.Event = attrs.Factory(threading.Event)

    def start(self) -> None:
        self.reached = [set() for _ in range(self.count)]
        threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True).start()
        if not self.connected.wait(60):
            raise RuntimeError(f"only {self.snapshots} of {self.count} streams connected")

    async def _run(self) -> None:
        headers = {"authorization": f"Bearer {TOKEN}"}
        limits = httpx.Limits(max_connections=self.count + 5)
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=None, limits=limits) as http:
            await asyncio.gather(*(self._follow(http, n) for n in range(self.count)))

    async def _follow(self, http: httpx.AsyncClient, n: int) -> None:
        async with http.stream("GET", "/api/v1/events", params={"keepalive": 15}) as response:
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "snapshot":
                    self.snapshots += 1  # one event loop: no lock needed
                    if self.snapshots == self.count:
                        self.connected.set()
                elif line.startswith("data: ") and kind == "progress":
                    now = time.time() * 1000
                    for figures in json.loads(line[6:])["downloads"]:
                        self.latencies.append(now - figures["transferred"])
                        self.reached[n].add(figures["id"])


def streams_child(url: str, count: int) -> None:
    """The streams' process: ``count`` streams; on stdin ``begin`` clears the figures, ``end`` prints them."""
    streams = Streams(url, count)
    streams.start()
    print("connected", flush=True)
    for command in sys.stdin:
        if command.strip() == "begin":
            streams.latencies = []
            streams.reached = [set() for _ in range(count)]
        elif command.strip() == "end":
            report = {"latencies": streams.latencies, "reached": [sorted(seen) for seen in streams.reached]}
            print(json.dumps(report), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--journal", type=int, default=10_000, help="downloads in the journal")
    parser.add_argument("--streams", type=int, default=50, help="event streams connected")
    parser.add_argument("--running", type=int, default=200, help="downloads reporting progress")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    parser.add_argument("--child", nargs=2, metavar=("JOURNAL", "DEST"), help=argparse.SUPPRESS)
    parser.add_argument("--streams-child", nargs=2, metavar=("URL", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    if args.streams_child:
        streams_child(args.streams_child[0], int(args.streams_child[1]))
        return

    folder = Path(tempfile.mkdtemp(prefix="headwater-bench-serve-"))
    journal = folder / "journal.sqlite3"
    fill(journal, args.journal)
    server = subprocess.Popen(
        [sys.executable, __file__, "--child", str(journal), str(folder / "dest")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    hello = json.loads(server.stdout.readline())
    url, pid = hello["url"], hello["pid"]
    rows: list[tuple[str, str, str]] = []
    http = httpx.Client(base_url=url + "/api/v1", headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
    streams = subprocess.Popen(
        [sys.executable, __file__, "--streams-child", url, str(args.streams)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert streams.stdout is not None and streams.stdin is not None
    try:
        assert streams.stdout.readline().strip() == "connected"

        for _ in range(50):  # warm up
            http.get("/downloads", params={"limit": 100})
        times = []
        for n in range(1000):
            params = {"limit": 100} if n % 2 else {"limit": 100, "state": "completed", "source": "bench"}
            t0 = time.perf_counter()
            page = http.get("/downloads", params=params)
            times.append((time.perf_counter() - t0) * 1000)
            assert len(page.json()["downloads"]) == 100
        rows.append(("list 100 downloads, p50", f"{statistics.median(times):.1f} ms", ""))
        rows.append(("list 100 downloads, p99", f"{percentile(times, 99):.1f} ms", "<= 20 ms"))

        http.post("/sources/bench/pause")
        submits = []
        for n in range(3):
            t0 = time.perf_counter()
            answer = http.post(
                "/downloads", json={"source": "bench", "targets": [f"done:{n}:{i}" for i in range(1000)]}
            )
            submits.append((time.perf_counter() - t0) * 1000)
            assert answer.status_code == 201 and len(answer.json()["ids"]) == 1000
        rows.append(
            (
                "submit 1,000 targets, one request",
                f"{statistics.median(submits):.0f} ms (max {max(submits):.0f})",
                "<= 200 ms",
            )
        )
        http.post("/sources/bench/resume")
        while http.get("/health").json()["active"]:
            time.sleep(0.2)
        http.post("/downloads/clear")

        streams.stdin.write("begin\n")
        streams.stdin.flush()
        ids = http.post(
            "/downloads",
            json={"source": "bench", "targets": [f"progress:6:{i}" for i in range(args.running)]},
        ).json()["ids"]
        time.sleep(7)
        streams.stdin.write("end\n")
        streams.stdin.flush()
        report = json.loads(streams.stdout.readline())
        samples = report["latencies"]
        everywhere = sum(1 for seen in report["reached"] if set(ids) <= set(seen))
        rows.append((f"progress of {args.running} running, p50", f"{statistics.median(samples):.0f} ms", ""))
        rows.append(
            (f"progress of {args.running} running, p99", f"{percentile(samples, 99):.0f} ms", "<= 500 ms")
        )
        rows.append((f"progress of {args.running} running, max", f"{max(samples):.0f} ms", ""))
        rows.append(("streams that saw all of them", f"{everywhere} of {args.streams}", f"{args.streams}"))
        while http.get("/health").json()["active"]:
            time.sleep(0.2)

        time.sleep(1)
        used = cpu_seconds(pid)
        time.sleep(args.idle)
        idle = (cpu_seconds(pid) - used) / args.idle * 100
        rows.append((f"server CPU idle, {args.streams} streams", f"{idle:.2f} %", "< 2 %"))
    finally:
        http.close()
        streams.kill()
        streams.wait(30)
        server.stdin.close()
        server.wait(30)
    print(f"journal: {args.journal} downloads; {args.streams} event streams connected")
    print_table(("measure", "value", "target"), rows)


if __name__ == "__main__":
    main()
