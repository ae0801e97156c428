"""Timing a benchmark's operation from several threads at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: One operation of a row, given the thread's index and the operation's number.
Op = Callable[[int, int], object]


def timed(op: Op, ops: int, threads: int) -> tuple[float, list[float]]:
    """(operations per second, each call's seconds) of ``ops`` calls of ``op`` on ``threads`` threads each."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        mine = latencies[index]
        barrier.wait()
        for n in range(ops):
            began = time.perf_counter()
            op(index, n)
            mine.append(time.perf_counter() - began)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    took = time.perf_counter() - began
    return ops * threads / took, [s for mine in latencies for s in mine]
