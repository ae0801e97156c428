"""The floor of the cluster's small-file run: plain Python processes of httpx threads, no headwater.

:class:`Floor` keeps ``processes`` forked processes, each fetching its share
of the URLs on ``threads`` threads with bench/http.py's
:func:`on_client_threads` (one ``httpx.Client`` a thread, as the http source
has) and landing each body with its :func:`get_durable` (a ``.part``,
fsynced, linked to its name: the least file work headwater's http source
does) or :func:`get_in_place` (straight to the name, no fsync: what aria2c
does). The URLs are dealt out before the start, so no process waits on
another: the best any client built of Python processes and httpx could do
on this machine, and what no cluster of them can beat.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType

TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> int:
    """The CPU ticks (user and system) process ``pid`` has used so far; 0 if it is gone (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _serve(web: ModuleType, threads: int, conn: Connection) -> None:
    """A floor process: fetch each ``(urls, dest, durable)`` it is sent, answer when done; stop on None."""
    while (job := conn.recv()) is not None:
        urls, dest, durable = job
        get = web.get_durable if durable else web.get_in_place
        web.on_client_threads(urls, threads, partial(get, dest=Path(dest)))
        conn.send(True)


class Floor:
    """``processes`` forked processes of ``threads`` httpx threads, started now; :meth:`close` stops them.

    ``web`` is bench/http.py as a module. Fork before the caller starts
    threads of its own (a fork copies no thread, and no lock they hold).
    """

    def __init__(self, web: ModuleType, processes: int, threads: int) -> None:
        fork = multiprocessing.get_context("fork")
        self._conns: list[Connection] = []
        self._children = []
        for _ in range(processes):
            mine, theirs = fork.Pipe()
            child = fork.Process(target=_serve, args=(web, threads, theirs), daemon=True)
            child.start()
            self._conns.append(mine)
            self._children.append(child)

    def fetch(self, urls: list[str], dest: Path, durable: bool) -> tuple[float, float]:
        """Fetch ``urls`` into ``dest``, dealt out over the processes; (wall seconds, their CPU seconds)."""
        pids = [child.pid for child in self._children if child.pid is not None]
        before = sum(ticks(p) for p in pids)
        began = time.perf_counter()
        count = len(self._conns)
        for i, conn in enumerate(self._conns):
            conn.send((urls[i::count], str(dest), durable))
        for conn in self._conns:
            conn.recv()
        took = time.perf_counter() - began
        return took, (sum(ticks(p) for p in pids) - before) / TICK

    def close(self) -> None:
        """Stop the processes and wait for them."""
        for conn in self._conns:
            conn.send(None)
        for child in self._children:
            child.join(30)
