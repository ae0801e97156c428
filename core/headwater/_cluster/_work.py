"""One worker process of a cluster: Dramatiq's worker running :class:`ClusterWorker` for each message.

What ``headwater worker`` runs: :class:`WorkerProcess` opens the records
(PostgreSQL) and the limits (Redis) named by a
:class:`~headwater._config.ClusterConfig`, declares the download actor on
Dramatiq's Redis broker, and starts Dramatiq's own worker with ``threads``
threads, each running one download at a time (and taking the next message
as soon as its download's slot is given back: the end is written by the
runner's writer meanwhile), and the process's
:class:`~headwater._cluster._dispatch.Dispatcher`. It holds at most as many
messages as it has threads (those running and those waiting for a thread
together): a worker whose threads are all busy leaves the next message in
the queue for a worker with a free thread, instead of keeping it (with its
slot) until one of its own downloads ends.
"""

from __future__ import annotations

import functools
import os

import dramatiq

from headwater._cluster._dispatch import Dispatcher
from headwater._cluster._gate import SourceGate
from headwater._cluster._message import QUEUE, broker, declare
from headwater._cluster._pgstore import PostgresStore
from headwater._cluster._runner import ClusterWorker
from headwater._cluster._setup import redis_client
from headwater._config import ClusterConfig
from headwater._sources import SourceRegistry

#: Milliseconds an idle worker waits at most between asks for messages (Dramatiq's backoff grows to it).
POLL_MS = 10

#: Seconds a free Dramatiq worker thread waits for its next message before it looks whether to stop
#: (Dramatiq's default is the poll above: each of the threads would wake a hundred times a second).
IDLE_WAIT = 0.1


class WorkerProcess:
    """Dramatiq's worker, started, running this process's downloads until :meth:`stop`.

    Args:
        config: the cluster.
        dest_dir: where downloads whose record names no folder land.
        threads: downloads run at once (>= 1).
        registry: the loaded sources (:func:`~headwater._sources.load_sources`).
        poll: seconds between checks of the running downloads' records.
        schedule: also contend for the scheduler's lease (a
            :class:`~headwater._cluster._dispatch.Dispatcher`): one process of
            the cluster schedules, and another takes over if it dies.
        gate: the gate the runner and the scheduler write state changes
            through (:class:`~headwater._cluster._gate.SourceGate`; a
            freeze holds them); default: one of its own.

    Raises StoreError when the records cannot be opened, ``redis.RedisError``
    when the broker cannot be reached.
    """

    def __init__(
        self,
        config: ClusterConfig,
        dest_dir: str | os.PathLike[str],
        *,
        threads: int = 8,
        registry: SourceRegistry,
        poll: float = 1.0,
        schedule: bool = True,
        gate: SourceGate | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"a worker needs at least one thread, got {threads!r}")
        gate = SourceGate() if gate is None else gate
        client = redis_client(config.broker)
        client.ping()
        store = PostgresStore(config.postgres, schema=config.schema)
        try:
            self.runner = ClusterWorker(
                dest_dir,
                store=store,
                client=client,
                registry=registry,
                prefix=config.limits_prefix,
                channel=config.cancel_channel,
                poll=poll,
                gate=gate,
            )
        except BaseException:
            store.close()
            raise
        self.broker = broker(config.broker, namespace=config.prefix)
        declare(
            self.broker, functools.partial(self.runner.run, wait=False)
        )  # a thread is free once its slot is
        self._worker = dramatiq.Worker(
            self.broker, queues={QUEUE}, worker_threads=threads, worker_timeout=POLL_MS
        )
        self._worker.queue_prefetch = threads  # no message held back from another worker's free thread
        self._worker.start()
        for thread in self._worker.workers:  # a message wakes its thread at once; this bounds the stop
            thread.timeout = IDLE_WAIT
        self.dispatcher: Dispatcher | None = None
        if schedule:
            self.dispatcher = Dispatcher(config, registry, gate=gate)
            self.dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running downloads (back to QUEUED), stop Dramatiq's worker, close everything."""
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.runner.interrupt()
        self._worker.stop(timeout=int(timeout * 1000))
        self.runner.close()
        self.broker.close()
