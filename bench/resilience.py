"""Resilience benchmark: what chains and retries cost on top of plain downloads.

Measures, best of ``--repeat`` runs:

- submit rate of single-source jobs and of 3-source chains (nothing runs:
  the sources are held shut), the hot path the engine benchmark demands
  >= 100,000/s of;
- chain throughput: jobs that fail instantly on two sources and complete on
  the third, moved between shards by the engine;
- retry throughput: jobs that fail transiently twice (backoff 0) and then
  complete on the same source.

    python bench/resilience.py [--jobs 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from table import print_table

from headwater import DownloadContext, Engine, Job, RatePolicy, hookimpl


class Held:
    """Blocks every download until the gate opens, then declines."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> None:
        self.gate.wait()


class Fails:
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> None:
        raise ValueError("down")


class Delivers:
    def __init__(self, flaky: int = 0) -> None:
        self.flaky = flaky
        self.tries: Counter[str] = Counter()

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        self.tries[job.id] += 1
        if self.tries[job.id] <= self.flaky:
            raise ConnectionError("reset")
        return ctx.dest_dir / "done"


def submit_rate(dest: Path, jobs: int, chain: bool) -> float:
    gate = threading.Event()
    names = ["a", "b", "c"]
    engine = Engine(dest, plugins={n: Held(gate) for n in names})
    t0 = time.perf_counter()
    for i in range(jobs):
        engine.submit(names if chain else names[i % 3], f"https://example.org/{i}")
    rate = jobs / (time.perf_counter() - t0)
    gate.set()
    engine.close(timeout=1)
    return rate


def drain_rate(dest: Path, jobs: int, plugins: dict[str, object], source: str | list[str]) -> float:
    policies = {n: RatePolicy(concurrency=2, retries=2, backoff=0.0) for n in plugins}
    engine = Engine(dest, plugins=plugins, policies=policies)
    t0 = time.perf_counter()
    ids = [engine.submit(source, f"t{i}") for i in range(jobs)]
    records = engine.wait(ids, timeout=600)
    rate = jobs / (time.perf_counter() - t0)
    engine.close()
    assert all(r.state.value == "completed" for r in records), "some jobs did not complete"
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, k = args.jobs, args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp)
        (dest / "done").write_bytes(b"")
        rows = [
            ("submit, one source (jobs/s)", max(submit_rate(dest, n, False) for _ in range(k)), ">= 100,000"),
            ("submit, 3-source chain (jobs/s)", max(submit_rate(dest, n, True) for _ in range(k)), ""),
            (
                "plain downloads (jobs/s)",
                max(drain_rate(dest, n // 4, {"c": Delivers()}, "c") for _ in range(k)),
                "",
            ),
            (
                "chain: 2 failures then success (jobs/s)",
                max(
                    drain_rate(dest, n // 4, {"a": Fails(), "b": Fails(), "c": Delivers()}, ["a", "b", "c"])
                    for _ in range(k)
                ),
                "",
            ),
            (
                "2 transient errors then success (jobs/s)",
                max(drain_rate(dest, n // 4, {"c": Delivers(flaky=2)}, "c") for _ in range(k)),
                "",
            ),
        ]
    print_table(
        ("measure", "value", "target"), [(name, f"{value:,.0f}", target) for name, value, target in rows]
    )


if __name__ == "__main__":
    main()
