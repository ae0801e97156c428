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

:class:`CarriedFloor` is the same durable fetch with each download carried
as a message the way the cluster carries it (headwater's Dramatiq broker on
Redis: no middleware, no delay queue, a worker of ``threads`` threads per
process polling every 10 ms, acknowledged when done), and nothing else: no
records, no slots, no scheduler. What the cluster's transport costs alone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType

import dramatiq

from headwater._cluster._message import QUEUE, Assignment, broker, declare, send
from headwater._cluster._setup import redis_client
from headwater._cluster._work import POLL_MS

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


def _carry(web: ModuleType, threads: int, url: str, namespace: str, conn: Connection) -> None:
    """A carried floor's process: a Dramatiq worker whose actor lands one URL of the job it was sent last.

    Each message's ``download_id`` is the URL's index; each landing adds one
    to ``<namespace>:done`` in Redis. Answers each ``(urls, dest)`` once it
    is the job; stops on None.
    """
    import httpx  # here: this folder's http.py, on the path at the bench's start, would shadow ``http``

    carrier = broker(url, namespace=namespace)
    counter = redis_client(url)
    job: dict[str, object] = {}
    clients = threading.local()

    def run(assignment: Assignment) -> None:
        client = getattr(clients, "client", None)
        if client is None:
            client = clients.client = httpx.Client()
        urls = job["urls"]
        assert isinstance(urls, list)
        web.get_durable(client, urls[int(assignment.download_id)], job["dest"])
        counter.incr(f"{namespace}:done")

    declare(carrier, run)
    worker = dramatiq.Worker(carrier, queues={QUEUE}, worker_threads=threads, worker_timeout=POLL_MS)
    worker.queue_prefetch = 2 * threads
    worker.start()
    while (sent := conn.recv()) is not None:
        job["urls"], job["dest"] = sent[0], Path(sent[1])
        conn.send(True)
    worker.stop()
    carrier.close()


class CarriedFloor:
    """``processes`` forked Dramatiq workers of ``threads`` threads (Redis ``url``); :meth:`close` stops them.

    Fork before the caller starts threads of its own.
    """

    def __init__(self, web: ModuleType, processes: int, threads: int, url: str) -> None:
        fork = multiprocessing.get_context("fork")
        self._url = url
        self._namespace = f"bench-floor-{uuid.uuid4().hex[:10]}"
        self._conns: list[Connection] = []
        self._children = []
        for _ in range(processes):
            mine, theirs = fork.Pipe()
            args = (web, threads, url, self._namespace, theirs)
            child = fork.Process(target=_carry, args=args, daemon=True)
            child.start()
            self._conns.append(mine)
            self._children.append(child)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children if child.pid is not None]

    def fetch(self, urls: list[str], dest: Path) -> float:
        """Send a message for each of ``urls`` (landed into ``dest``) and wait for all; the wall seconds."""
        for conn in self._conns:
            conn.send((urls, str(dest)))
        for conn in self._conns:
            conn.recv()
        carrier = broker(self._url, namespace=self._namespace)
        counter = redis_client(self._url)
        done = f"{self._namespace}:done"
        counter.delete(done)
        began = time.perf_counter()
        for i in range(len(urls)):
            send(carrier, Assignment(str(i), "http", 0, 5.0))
        while int(counter.get(done) or 0) < len(urls):
            time.sleep(0.005)
        took = time.perf_counter() - began
        carrier.close()
        return took

    def close(self) -> None:
        """Stop the processes, wait for them, and remove the Redis keys they used."""
        for conn in self._conns:
            conn.send(None)
        for child in self._children:
            child.join(30)
        counter = redis_client(self._url)
        keys = list(counter.scan_iter(match=f"{self._namespace}*"))
        if keys:
            counter.delete(*keys)
