"""Submitting, cancelling and reading a cluster's downloads: :class:`ClusterClient`.

A submit writes the QUEUED record to PostgreSQL (built by the same rule
as a local engine's submit, :func:`~headwater._submission.submission`:
``translate_target`` and ``record_fields`` run here); the scheduler hears
of it from the change feed and starts it when its source's limits allow.
A cancel is one conditional write (it always wins over an unfinished
download), then announced on the cancel channel so that a worker running
it stops within a round trip.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import redis

from headwater._chains import Chain
from headwater._cluster._cancels import announce
from headwater._cluster._pgstore import PostgresStore
from headwater._cluster._setup import redis_client
from headwater._config import ClusterConfig
from headwater._errors import UnknownDownloadError
from headwater._files import Existing
from headwater._records import Record, State
from headwater._redact import register
from headwater._sources import SourceRegistry
from headwater._store import Swap
from headwater._submission import submission

#: Seconds between reads of the records while :meth:`ClusterClient.wait` waits.
POLL = 0.02


def cancel(store: PostgresStore, client: redis.Redis, channel: str, download_id: str) -> bool:
    """Cancel ``download_id`` in ``store``, then announce it on ``channel``; whether this call cancelled it.

    One conditional write, which wins over any unfinished state (one that
    ended meanwhile is read again: False). The announcement makes the worker
    running it stop within a round trip; if Redis cannot be reached, the
    workers' polling of the records finds the cancel within a second.
    Raises UnknownDownloadError for an id ``store`` does not hold.
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
        if store.commit_if([Swap.cancel(gone)])[0]:
            break  # else it ended meanwhile: read it again
    with contextlib.suppress(redis.RedisError):
        announce(client, download_id, channel)
    return True


class ClusterClient:
    """One process's handle on a cluster: submit, cancel, read, wait.

    Args:
        config: the cluster.
        dest_dir: where downloads land unless a submit names a folder; it
            must be the same path on every worker host (a shared folder).
        registry: the loaded sources (:func:`~headwater._cluster._setup.sources`;
            a submit runs their ``translate_target`` and ``record_fields``).

    Thread-safe. Raises StoreError when the records cannot be opened.
    """

    def __init__(
        self,
        config: ClusterConfig,
        dest_dir: str | os.PathLike[str],
        *,
        registry: SourceRegistry,
    ) -> None:
        self.config = config
        self.dest_dir = Path(dest_dir).expanduser().resolve()
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self._registry = registry
        self._secrets = register(self._registry.secret_values())
        self._redis: redis.Redis = redis_client(config.broker)
        self.store = PostgresStore(config.postgres, schema=config.schema)

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
        """The record as PostgreSQL holds it now, after this client's submits; UnknownDownloadError."""
        self.flush()
        found = self.store.fetch([download_id]).get(download_id)
        if found is None:
            raise UnknownDownloadError(download_id)
        return found

    def cancel(self, download_id: str) -> bool:
        """Cancel a download wherever it runs; True if this call cancelled it, False if it had ended.

        Raises UnknownDownloadError for an id the records do not hold.
        """
        self.flush()
        return cancel(self.store, self._redis, self.config.cancel_channel, download_id)

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> list[Record]:
        """Block until every download of ``ids`` has ended; their records in order.

        Raises TimeoutError after ``timeout`` seconds, UnknownDownloadError
        for an id the records do not hold.
        """
        order = list(ids)
        self.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: dict[str, Record] = {}
        left = list(dict.fromkeys(order))
        while True:
            states = self.store.states(left)  # only those not seen ended yet; no record decoded
            done = [i for i in left if i not in states or states[i].terminal]
            found = self.store.fetch(done) if done else {}
            missing = [i for i in done if i not in found]
            if missing:
                raise UnknownDownloadError(missing[0])
            ended.update((i, r) for i, r in found.items() if r.state.terminal)
            left = [i for i in left if i not in ended]
            if not left:
                return [ended[i] for i in order]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(left)} of {len(order)} downloads had not ended after {timeout} s")
            time.sleep(POLL)

    def close(self) -> None:
        """Write what is buffered and close the records."""
        self.store.close()
        self._redis.close()
        self._secrets.release()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
