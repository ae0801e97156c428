"""An engine whose downloads run on a cluster: :class:`ClusterEngine`, made by ``Engine(..., cluster=...)``.

A submit writes the QUEUED record to PostgreSQL (built by the same rule
as a local engine's submit, :func:`~headwater._submission.submission`:
``translate_target`` and ``record_fields`` run here); the scheduler hears
of it from the change feed and starts it when its source's limits allow.
A cancel is a conditional write of the record read (read and written
again when another process changed it meanwhile: it always wins over an
unfinished download), then announced on the cancel channel so that a
worker running it stops within a round trip. Reads go to PostgreSQL, changes come from
its change feed, pauses are written there for the scheduler to follow.

``ClusterEngine`` subclasses :class:`~headwater.Engine` and overrides every
public method (tests/test_cluster_engine.py holds it to that), so none runs
the local engine's code; what it inherits is ``__enter__`` and ``__exit__``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import redis

from headwater._chains import Chain
from headwater._changes import DEFAULT_MAXSIZE, Change, ChangeFeed, ChangeKind, Subscription
from headwater._clock import Clock
from headwater._cluster._cancels import announce
from headwater._cluster._gate import SourceGate
from headwater._cluster._pgfeed import RecordListener
from headwater._cluster._pgstore import PostgresStore
from headwater._cluster._setup import redis_client
from headwater._cluster._work import WorkerProcess
from headwater._config import ClusterConfig
from headwater._engine import Engine, _made
from headwater._errors import ConfigError, EngineClosedError, StoreError, UnknownDownloadError
from headwater._files import Existing
from headwater._policy import RatePolicy
from headwater._records import Record, State
from headwater._redact import register
from headwater._settings import SettingsLayers
from headwater._sources import PolicyOverride, SourceInfo, load_sources
from headwater._store import RecordStore, Swap
from headwater._submission import submission

#: Seconds between reads of the records while :meth:`ClusterEngine.wait` waits and the change feed
#: cannot be heard.
POLL = 0.02

#: Seconds between reads of the records while :meth:`ClusterEngine.wait` hears the change feed (the
#: ends it brings end the wait at once; the reads catch what it could not bring).
POLL_HEARING = 0.25


def cancel(store: PostgresStore, client: redis.Redis, channel: str, download_id: str) -> bool:
    """Cancel ``download_id`` in ``store``, then announce it on ``channel``; whether this call cancelled it.

    The record read, CANCELLED, written by one conditional write from the
    state and attempt read (:meth:`~headwater._store.Swap.over`): a record
    whose state or attempt another process changed in between (a worker
    started it, ended its attempt, moved it down its chain) is read again
    and cancelled as that process left it, not written back as it was read.
    So the cancel wins over any unfinished state, and returns False only for
    a download that ended. The announcement makes the worker running it stop within a round
    trip; if Redis cannot be reached, the workers' polling of the records
    finds the cancel within a second. Raises UnknownDownloadError for an id
    ``store`` does not hold.
    """
    while True:
        record = store.fetch([download_id]).get(download_id)
        if record is None:
            raise UnknownDownloadError(download_id)
        if record.state.terminal:
            return False
        now = time.time()
        gone = attrs.evolve(
            record, state=State.CANCELLED, updated_at=now, finished_at=now, speed=0.0, time_remaining=None
        )
        if store.commit_if([Swap.over(record, gone)])[0]:
            break  # else it changed meanwhile: read it again
    with contextlib.suppress(redis.RedisError):
        announce(client, download_id, channel)
    return True


class ClusterEngine(Engine):
    """An :class:`~headwater.Engine` whose downloads run on a cluster: ``Engine(dest_dir, cluster=config)``.

    Takes :class:`~headwater.Engine`'s arguments; what they mean here, and its own:

    Args:
        cluster: the cluster (``[cluster]`` of headwater.toml, or a
            :class:`~headwater.ClusterConfig`).
        dest_dir: where downloads land unless a submit names a folder; it
            must be the same path on every worker host (a shared folder).
        plugins, policies, load, block, settings, settings_layers: the
            sources this process loads, as an engine's (a submit runs their
            ``translate_target`` and ``record_fields``; the policies are
            those of the in-process workers' scheduler, if it leads).
        workers: worker threads run in this process (a
            :class:`~headwater._cluster._work.WorkerProcess`, contending for
            the scheduler's lease too); 0 (the default) runs none: the
            cluster's ``headwater worker`` processes run the downloads.
        poll: seconds between the in-process workers' checks of their
            downloads' records (the cancel's fallback).

    ``idle_timeout``, ``clock``, ``store`` and ``hold`` mean nothing on a
    cluster and raise ConfigError when given: there are no per-source
    threads to end, the limits are timed by the Redis server's clock, the
    records are the cluster's PostgreSQL, and the cluster's scheduler (not
    an engine) takes over what is unfinished.

    What differs from an engine: the records are the cluster's, changed by
    other processes (every read goes to PostgreSQL); :meth:`pause` and
    :meth:`resume` are written to the records, and the scheduler follows
    them within a third of the lease time; a policy is each scheduling
    process's own (:meth:`set_policy` raises ConfigError); :meth:`freeze`
    holds still only the workers of this process.

    Attributes:
        config: the cluster.
        store: its records (a :class:`~headwater._cluster._pgstore.PostgresStore`).

    Thread-safe. Raises UnknownSourceError and ConfigError as an engine
    does, StoreError when the records cannot be opened,
    ``redis.RedisError`` when in-process workers cannot reach the broker.
    """

    def __init__(
        self,
        dest_dir: str | os.PathLike[str],
        plugins: Mapping[str, object] | None = None,
        policies: Mapping[str, RatePolicy | PolicyOverride] | None = None,
        *,
        cluster: ClusterConfig,
        idle_timeout: float | None = None,
        clock: Clock | None = None,
        store: RecordStore | None = None,
        hold: bool = False,
        load: Collection[str] | None = None,
        block: Collection[str] = (),
        settings: Mapping[str, Mapping[str, object]] | None = None,
        settings_layers: SettingsLayers | None = None,
        workers: int = 0,
        poll: float = 1.0,
    ) -> None:
        refused = {
            "idle_timeout": (idle_timeout, "it starts no thread per source"),
            "clock": (clock, "the limits are timed by the Redis server's clock"),
            "store": (store, "the records are the cluster's, in PostgreSQL"),
            "hold": (hold or None, "the cluster's scheduler, not an engine, takes over what is unfinished"),
        }
        for name, (given, why) in refused.items():
            if given is not None:
                raise ConfigError(f"an engine on a cluster takes no {name}=: {why}")
        # Engine.__init__ is not called: none of the local engine's state is made, nor used.
        self.config = cluster
        self.dest_dir = Path(dest_dir).expanduser().resolve()
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self._registry = load_sources(
            plugins=plugins,
            policies=policies,
            load=load,
            block=block,
            settings=settings,
            settings_layers=settings_layers,
        )
        self.store = PostgresStore(cluster.postgres, schema=cluster.schema)
        self._secrets = register(self._registry.secret_values())
        self._redis: redis.Redis = redis_client(cluster.broker)
        self._feed = ChangeFeed()
        self._listener: RecordListener | None = None
        self._lock = threading.Lock()
        self._ending = threading.Condition()  # the feed heard an end of a download waited for
        self._waiting: Counter[str] = Counter()  # ids wait() calls wait for
        self._ends: dict[str, Change] = {}  # the change that ended each of them, as heard
        self._closed = False
        self._gate = SourceGate()
        self._workers: WorkerProcess | None = None
        if workers:
            try:
                self._workers = WorkerProcess(
                    cluster,
                    self.dest_dir,
                    threads=workers,
                    registry=self._registry,
                    poll=poll,
                    gate=self._gate,
                )
            except BaseException:
                self.close()
                raise

    def sources(self, include_broken: bool = False) -> list[SourceInfo]:
        """The loaded sources by name, and with ``include_broken`` those left out (as the engine's)."""
        return self._registry.infos(include_broken)

    def submit(
        self,
        source: str | Sequence[str] | Chain,
        target: str,
        *,
        display_name: str | None = None,
        existing: Existing | None = None,
        dest_dir: str | os.PathLike[str] | None = None,
    ) -> str:
        """Queue a download on the cluster; its id. Raises as :meth:`headwater.Engine.submit` does.

        The record is buffered and written within the store's
        ``flush_interval`` (:meth:`flush` writes it now).
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        made = submission(
            self._registry,
            source,
            target,
            self.dest_dir,
            display_name=display_name,
            existing=existing,
            dest_dir=dest_dir,
        )
        self.store.add(made.record)
        return made.record.id

    def flush(self) -> None:
        """Write every record submitted so far."""
        self.store.flush()

    def get(self, download_id: str) -> Record:
        """The record as PostgreSQL holds it now, after this engine's submits; UnknownDownloadError."""
        self.flush()
        found = self.store.fetch([download_id]).get(download_id)
        if found is None:
            raise UnknownDownloadError(download_id)
        return found

    def cancel(self, download_id: str, source_hint: str | None = None) -> bool:
        """Cancel a download wherever it runs; True if this call cancelled it, False if it had ended.

        ``source_hint`` is taken for :meth:`headwater.Engine.cancel`'s sake
        and not needed: the records are found by id. Raises
        UnknownDownloadError for an id the records do not hold.
        """
        self.flush()
        return cancel(self.store, self._redis, self.config.cancel_channel, download_id)

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> list[Record]:
        """Block until every download of ``ids`` has ended; their records in order.

        Ends come from the change feed as they are committed (the first
        call starts listening, as :meth:`subscribe`); the records are also
        read every :data:`POLL_HEARING` seconds (:data:`POLL` while the feed
        cannot be heard). Raises TimeoutError after ``timeout`` seconds,
        UnknownDownloadError for an id the records do not hold.
        """
        order = list(ids)
        self.flush()
        try:
            hearing = self._listen()
        except StoreError:  # the records are read more often instead
            hearing = False
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: dict[str, Record] = {}
        left = list(dict.fromkeys(order))
        waited = list(left)
        with self._ending:
            self._waiting.update(waited)
        try:
            while True:
                states = self.store.states(left)  # only those not seen ended yet; no record decoded
                done = [i for i in left if i not in states or states[i].terminal]
                found = self.store.fetch(done) if done else {}
                missing = [i for i in done if i not in found]
                if missing:
                    raise UnknownDownloadError(missing[0])
                ended.update((i, r) for i, r in found.items() if r.state.terminal)
                left = [i for i in left if i not in ended]
                read_at = time.monotonic() + (POLL_HEARING if hearing else POLL)
                with self._ending:
                    while left:
                        heard = {i: self._ends[i] for i in left if i in self._ends}
                        removed = [i for i, c in heard.items() if c.kind is ChangeKind.REMOVED]
                        if removed:  # read again: gone, or submitted again since
                            for i in removed:
                                del self._ends[i]
                            break
                        ended.update((i, c.record) for i, c in heard.items())
                        left = [i for i in left if i not in ended]
                        now = time.monotonic()
                        if not left or now >= read_at:
                            break
                        if deadline is not None and now > deadline:
                            break
                        until = read_at if deadline is None else min(read_at, deadline)
                        self._ending.wait(until - now)
                if not left:
                    return [ended[i] for i in order]
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{len(left)} of {len(order)} downloads had not ended after {timeout} s"
                    )
        finally:
            with self._ending:
                self._waiting.subtract(waited)
                for i in waited:
                    if self._waiting[i] <= 0:
                        del self._waiting[i]
                        self._ends.pop(i, None)

    def remove(self, download_id: str) -> Record:
        """Forget a download, cancelling it first if it has not ended; its last record.

        The row is deleted from the records: a worker still running it is
        told to stop, and its end, finding no row, is not written. Raises
        UnknownDownloadError for an id the records do not hold.
        """
        self.flush()
        self.cancel(download_id)
        final = self.get(download_id)
        self.store.delete(download_id)
        return final

    def match(self, key: str, limit: int = 2) -> list[Record]:
        """The downloads ``key`` names, as :meth:`headwater.Engine.match` (one query, or two)."""
        self.flush()
        return self.store.named(key, limit)

    def records(self, source: str | None = None) -> list[Record]:
        """Every record of the cluster (of one source, a name or alias), oldest first."""
        names = None
        if source is not None:
            found = self._registry.resolve(source)
            names = [found.name, *found.aliases]
        self.flush()
        return sorted(self.store.records(sources=names), key=_made)

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        after: tuple[float, str] | None = None,
        oldest_first: bool = False,
        limit: int = 100,
    ) -> list[Record]:
        """Up to ``limit`` records past ``after``, as :meth:`headwater.Engine.page` (one query)."""
        self.flush()
        return self.store.page_at(
            after, oldest_first=oldest_first, states=states, sources=sources, limit=limit, ended_only=False
        )

    def subscribe(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A subscription to the records' changes, from the cluster's change feed (LISTEN/NOTIFY).

        The contract of :meth:`headwater.Engine.subscribe`; the first call
        starts listening (a few changes committed just before may come too:
        records are whole values, a repeat is harmless).
        """
        subscription = self._feed.subscribe(maxsize)
        self._listen()
        return subscription

    def _listen(self) -> bool:
        """Follow the change feed from now on, if not yet; whether it is followed (not once closed).

        Raises StoreError if the feed cannot be reached.
        """
        with self._lock:
            if self._listener is None and not self._closed:
                listener = RecordListener(self.config.postgres, self._heard, schema=self.config.schema)
                listener.start()
                self._listener = listener
            return self._listener is not None

    def _heard(self, changes: list[Change]) -> None:
        for change in changes:
            self._feed.publish(change.kind, (change.record,))
        with self._ending:
            ends = [
                c
                for c in changes
                if c.record.id in self._waiting and (c.kind is ChangeKind.REMOVED or c.record.state.terminal)
            ]
            if ends:
                self._ends.update((c.record.id, c) for c in ends)
                self._ending.notify_all()

    def pause(self, source: str | None = None) -> None:
        """Start no more downloads of ``source`` (or of every source) anywhere in the cluster.

        Written to the records; the scheduler follows it within a third of
        the lease time. Raises UnknownSourceError.
        """
        for name in self._names(source):
            self.store.set_paused(name, True)

    def resume(self, source: str | None = None) -> None:
        """Undo :meth:`pause` for ``source`` (or every source)."""
        for name in self._names(source):
            self.store.set_paused(name, False)

    def paused(self) -> list[str]:
        """The names of the paused sources, sorted."""
        return sorted(self.store.paused())

    def _names(self, source: str | None) -> list[str]:
        if source is not None:
            return [self._registry.resolve(source).name]
        return [info.name for info in self._registry.infos()]

    def set_policy(self, source: str, policy: RatePolicy) -> None:
        """Refused: a cluster's policies are those of its processes' configuration; raises ConfigError."""
        name = self._registry.resolve(source).name
        raise ConfigError(
            f"the policy of {name!r} is set in the configuration of the cluster's processes "
            "([sources] of their headwater.toml), not from one engine"
        )

    def start_held(self) -> list[str]:
        """Nothing to take over here: the cluster's scheduler runs what is unfinished; an empty list."""
        return []

    @contextmanager
    def freeze(self, source: str) -> Iterator[None]:
        """Hold ``source`` still in this process's workers and scheduler, as :meth:`headwater.Engine.freeze`.

        Meanwhile they write no change of its downloads' state (none starts,
        ends or moves down its chain) but what the calling thread does. Other
        processes of the cluster are not held. Raises UnknownSourceError.
        """
        with self._gate.frozen(self._registry.resolve(source).name):
            yield

    def worker_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per source: (threads, running, 0) of this process's workers (empty without them)."""
        return {} if self._workers is None else self._workers.runner.stats()

    def close(self, timeout: float = 5.0, *, interrupt: bool = False) -> list[Record]:
        """Stop this process's workers, write what is buffered, close everything; an empty list.

        The workers' running downloads go back to QUEUED for the cluster
        (whatever ``interrupt``): they are the cluster's, not this engine's
        to cancel. Closing twice is harmless.
        """
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            listener, self._listener = self._listener, None
        if self._workers is not None:
            self._workers.stop(timeout)
        if listener is not None:
            listener.close()
        self._feed.close()
        self.store.close()
        self._redis.close()
        self._secrets.release()
        return []
