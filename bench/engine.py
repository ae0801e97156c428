"""Engine benchmark: submit rate, peak threads, memory per queued job, drain time.

Workload (issue 2): 50,000 jobs over 4 sources of concurrency 2 whose
download sleeps 5 ms. Ideal drain = jobs x 5 ms / total concurrency. The
submit rate is measured twice: while the workers drain (sharing the GIL
with them), and with the sources held shut (the submit path alone, best
of three rounds; issue 14 asks >= 150,000 jobs/s of it).

    python bench/engine.py [--jobs 50000] [--sources 4] [--concurrency 2] [--sleep 0.005]
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from table import print_table

from headwater import DownloadContext, Engine, Job, RatePolicy, hookimpl


class SleepSource:
    def __init__(self, seconds: float, gate: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.gate = gate

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.seconds)
        return ctx.dest_dir / "done"


def peak_threads_during(stop: threading.Event, out: list[int]) -> None:
    peak = 0
    while not stop.wait(0.005):
        peak = max(peak, threading.active_count())
    out.append(peak)


def bare_thread_floor(jobs: int, threads: int, seconds: float) -> tuple[float, float]:
    """(wall s, process CPU s) for ``threads`` plain threads to sleep ``seconds`` ``jobs`` times in all."""

    def loop(n: int) -> None:
        for _ in range(n):
            time.sleep(seconds)

    workers = [threading.Thread(target=loop, args=(jobs // threads,)) for _ in range(threads)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0, time.process_time() - cpu0


def run_workload(dest: Path, args: argparse.Namespace, **engine_args: object) -> tuple[float, float, float]:
    """Submit ``args.jobs`` sleeping jobs over the sources and wait for all; (submit s, drain s, CPU s).

    The CPU is the whole process's (``time.process_time``) from the first
    submit to the end of the wait.

    ``dest`` must hold the file ``done`` the jobs return; ``engine_args`` go
    to :class:`Engine` (a ``store``, say).
    """
    names = [f"s{i}" for i in range(args.sources)]
    engine = Engine(
        dest,
        plugins={n: SleepSource(args.sleep) for n in names},
        policies={n: RatePolicy(concurrency=args.concurrency) for n in names},
        **engine_args,  # type: ignore[arg-type]
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    ids = [engine.submit(names[i % len(names)], f"https://example.org/{i}") for i in range(args.jobs)]
    submitted = time.perf_counter()
    records = engine.wait(ids, timeout=3600)
    drained, cpu = time.perf_counter(), time.process_time() - cpu0
    engine.close()
    assert all(r.state.value == "completed" for r in records), "some jobs did not complete"
    return submitted - t0, drained - t0, cpu


def held_submit_rate(dest: Path, args: argparse.Namespace, rounds: int = 3) -> tuple[float, float]:
    """``args.jobs`` submits over the sources, each held shut: (jobs/s, CPU µs per job), best of ``rounds``.

    The CPU time (``time.process_time``; the held workers use none) is the
    figure to compare on a loaded machine, where the wall time is not.
    """
    rate, cpu = 0.0, float("inf")
    for _ in range(rounds):
        gate = threading.Event()
        names = [f"s{i}" for i in range(args.sources)]
        engine = Engine(dest, plugins={n: SleepSource(0, gate) for n in names})
        targets = [f"https://example.org/{i}" for i in range(args.jobs)]
        t0, c0 = time.perf_counter(), time.process_time()
        for i, target in enumerate(targets):
            engine.submit(names[i % len(names)], target)
        cpu = min(cpu, (time.process_time() - c0) / args.jobs * 1e6)
        rate = max(rate, args.jobs / (time.perf_counter() - t0))
        gate.set()
        engine.close(timeout=5)
    return rate, cpu


def memory_per_queued_job(dest: Path, jobs: int) -> float:
    """Bytes allocated per queued (not yet started) job, by tracemalloc."""
    gate = threading.Event()
    engine = Engine(dest, plugins={"held": SleepSource(0, gate)})
    engine.submit("held", "warm-up")  # the one running job; the rest stay queued
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(jobs):
        engine.submit("held", f"https://example.org/track/{i:08d}.flac")
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gate.set()
    engine.close(timeout=5)
    return (after - before) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.005)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp)
        (dest / "done").write_bytes(b"")
        stop = threading.Event()
        peak: list[int] = []
        sampler = threading.Thread(target=peak_threads_during, args=(stop, peak), daemon=True)
        base_threads = threading.active_count() + 1  # + the sampler itself
        sampler.start()
        submit_s, drain, cpu = run_workload(dest, args)
        stop.set()
        sampler.join()

        per_job = memory_per_queued_job(dest, 20_000)
        held_rate, held_cpu = held_submit_rate(dest, args)
    total_conc = args.sources * args.concurrency
    floor, floor_cpu = bare_thread_floor(args.jobs, total_conc, args.sleep)

    ideal = args.jobs * args.sleep / total_conc
    rows = [
        ("jobs", f"{args.jobs:,}", ""),
        ("sources x concurrency", f"{args.sources} x {args.concurrency}", ""),
        ("submit rate, while draining (jobs/s)", f"{args.jobs / submit_s:,.0f}", ">= 100,000"),
        ("submit rate, sources held shut (jobs/s)", f"{held_rate:,.0f}", ">= 150,000"),
        ("submit CPU per job, held shut (µs)", f"{held_cpu:.2f}", "<= 6.67 (150,000/s)"),
        ("peak threads (engine's own)", f"{peak[0] - base_threads}", f"<= {total_conc + 4}"),
        ("peak threads (process)", f"{peak[0]}", ""),
        ("peak RSS (MB)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f}", ""),
        ("memory per queued job (bytes)", f"{per_job:,.0f}", "<= 518"),
        ("drain time (s)", f"{drain:.2f}", ""),
        ("ideal drain (s)", f"{ideal:.2f}", ""),
        ("drain over ideal", f"{(drain / ideal - 1) * 100:+.1f}%" if ideal else "n/a", "<= +2%"),
        ("bare threads, same sleeps (s)", f"{floor:.2f}", "the machine's floor"),
        ("drain over bare threads", f"{(drain / floor - 1) * 100:+.1f}%", ""),
        ("CPU per job, engine (µs)", f"{cpu / args.jobs * 1e6:.1f}", "submit to wait, whole process"),
        ("CPU per job, bare threads (µs)", f"{floor_cpu / args.jobs * 1e6:.1f}", "the sleep alone"),
    ]
    print_table(("measure", "value", "target"), rows)


if __name__ == "__main__":
    main()
