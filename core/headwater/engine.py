"""The engine: the one object a user holds.

Records are sharded by source: each source has one re-entrant lock that
guards its records and its worker's queue, so a source whose lock is held
never delays another. Every state change goes through :meth:`_Shard.move`,
which enforces :data:`headwater.records.TRANSITIONS`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType

import attrs

from headwater.context import DownloadContext
from headwater.discovery import Candidate, discover, one_line
from headwater.errors import (
    EngineClosedError,
    FieldConflictError,
    PluginError,
    UnknownDownloadError,
)
from headwater.files import discard_landed, landed_file
from headwater.policy import RatePolicy
from headwater.records import CORE_FIELDS, Job, Record, State, may_transition
from headwater.sources import Source, SourceInfo, SourceRegistry
from headwater.worker import SourceWorker

log = logging.getLogger("headwater")

_PLAIN = (str, int, float, bool, type(None))


class _Shard:
    """One source's lock, records, running contexts and worker."""

    def __init__(self, engine: Engine, source: Source, idle_timeout: float) -> None:
        self.source = source
        self.lock = threading.RLock()
        self.records: dict[str, Record] = {}
        self.contexts: dict[str, DownloadContext] = {}
        self.logger = logging.getLogger(f"headwater.source.{source.name}")
        self.worker: SourceWorker[DownloadContext] = SourceWorker(
            source.name, self.lock, source.policy, engine._begin, engine._run, idle_timeout
        )

    def move(self, record: Record, state: State, **changes: object) -> Record | None:
        """Write ``record`` in ``state`` if the transition is legal; the lock must be held.

        ``record`` must be the current record. Returns the new record, or None
        (and writes nothing) when the transition is illegal.
        """
        if not may_transition(record.state, state):
            log.debug("refused %s -> %s for %s", record.state.name, state.name, record.id)
            return None
        new = attrs.evolve(record, state=state, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        self.records[record.id] = new
        return new

    def snapshot(self, record: Record) -> Record:
        """``record`` with the live progress of its download, if it is running."""
        if record.state is not State.RUNNING:
            return record
        ctx = self.contexts.get(record.id)
        if ctx is None:
            return record
        return _with_progress(record, ctx)


def _with_progress(record: Record, ctx: DownloadContext) -> Record:
    """``record`` carrying the latest progress ``ctx`` has seen."""
    transferred, total, at = ctx.last_progress
    elapsed = at - ctx.started
    speed = transferred / elapsed if elapsed > 0 else 0.0
    progress, remaining = record.progress, None
    if total:
        progress = min(100.0, transferred * 100.0 / total)
        remaining = max(0, total - transferred) / speed if speed > 0 else None
    return attrs.evolve(
        record, transferred=transferred, size=total, speed=speed, progress=progress, time_remaining=remaining
    )


class Engine:
    """Runs downloads from every loaded source on a shared worker.

    Args:
        dest_dir: the folder downloads land in; created if missing.
        plugins: a mapping of source name to plugin object. When given, only
            these are used and installed sources are not discovered.
        policies: source name or alias -> :class:`RatePolicy`, overriding the
            policy each plugin declares.
        idle_timeout: seconds a worker thread with nothing to do waits before
            it ends.

    Raises :class:`~headwater.errors.UnknownSourceError` for a policy naming a
    source that does not exist. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        dest_dir: str | os.PathLike[str],
        plugins: Mapping[str, object] | None = None,
        policies: Mapping[str, RatePolicy] | None = None,
        *,
        idle_timeout: float = 2.0,
    ) -> None:
        self.dest_dir = Path(dest_dir).expanduser()
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self.dest_dir = self.dest_dir.resolve()
        candidates = discover() if plugins is None else [Candidate(n, p) for n, p in plugins.items()]
        self._registry = SourceRegistry(candidates, policies)
        self._idle_timeout = idle_timeout
        self._shards: dict[str, _Shard] = {}
        self._meta = threading.Lock()
        self._closed = False
        self._watch: dict[str, threading.Event] = {}  # download id -> set when it ends

    # -- sources ---------------------------------------------------------

    def sources(self, include_broken: bool = False) -> list[SourceInfo]:
        """The loaded sources by name, and with ``include_broken`` those left out."""
        return self._registry.infos(include_broken)

    def _shard(self, name: str) -> _Shard:
        shard = self._shards.get(name)
        if shard is None:
            with self._meta:
                shard = self._shards.get(name)
                if shard is None:
                    shard = _Shard(self, self._registry.resolve(name), self._idle_timeout)
                    self._shards[name] = shard
        return shard

    def _find(self, download_id: str, source_hint: str | None = None) -> _Shard:
        if source_hint is not None:
            shard = self._shards.get(self._registry.resolve(source_hint).name)
            if shard is not None and download_id in shard.records:
                return shard
        for shard in list(self._shards.values()):
            if download_id in shard.records:
                return shard
        raise UnknownDownloadError(download_id)

    # -- submitting --------------------------------------------------------

    def submit(self, source: str, target: str, *, display_name: str | None = None) -> str:
        """Queue a download of ``target`` from ``source`` (a name or alias); return its id.

        Returns at once: no thread is started per job. Raises
        UnknownSourceError, ValueError for an empty target, FieldConflictError
        or PluginError when the source's ``record_fields`` misbehaves, and
        EngineClosedError after :meth:`close`.
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        src = self._registry.resolve(source)
        if not isinstance(target, str) or not target:
            raise ValueError(f"target must be a non-empty string, got {target!r}")
        job = Job(os.urandom(16).hex(), src.name, target, display_name)
        username, extra = self._fields(src, job)
        now = time.time()
        record = Record(job.id, src.name, target, display_name, username, State.QUEUED, now, now, extra=extra)
        shard = self._shard(src.name)
        with shard.lock:
            shard.records[job.id] = record
            shard.worker.put(job)
        return job.id

    def _fields(self, src: Source, job: Job) -> tuple[str, Mapping[str, object]]:
        """The record's username label and extra fields from ``record_fields``."""
        if src.record_fields is None:
            return src.name, MappingProxyType({})
        try:
            results = src.record_fields(job=job)
        except Exception as exc:
            raise PluginError(f"record_fields of source {src.label()} raised {one_line(exc)}") from exc
        username = src.name
        extra: dict[str, object] = {}
        for result in results:
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginError(
                    f"record_fields of source {src.label()} returned {type(result).__name__}, not a mapping"
                )
            for key, value in result.items():
                if not isinstance(value, _PLAIN):
                    raise PluginError(
                        f"record_fields of source {src.label()} returned "
                        f"{key!r}={value!r}; values must be str, int, float, bool or None"
                    )
                if key == "username":
                    if not isinstance(value, str) or not value:
                        raise PluginError(
                            f"record_fields of source {src.label()} returned "
                            f"username={value!r}; it must be a non-empty string"
                        )
                    username = value
                elif key in CORE_FIELDS:
                    raise FieldConflictError(
                        f"record_fields of source {src.label()} returned {key!r}, a core record "
                        "field; only 'username' may be set"
                    )
                else:
                    extra[key] = value
        return username, MappingProxyType(extra)

    # -- running (called by the worker) ----------------------------------------

    def _begin(self, job: Job) -> DownloadContext | None:
        """QUEUED -> RUNNING in one step under the source lock; None if no longer queued."""
        shard = self._shards[job.source]
        record = shard.records.get(job.id)
        if record is None or record.state is not State.QUEUED:
            return None
        ctx = DownloadContext(self.dest_dir, shard.logger)
        shard.move(record, State.RUNNING, attempts=record.attempts + 1, started_at=time.time())
        shard.contexts[job.id] = ctx
        return ctx

    def _run(self, job: Job, ctx: DownloadContext) -> None:
        """Call the source's ``download_impl`` and write the outcome, unless cancelled."""
        shard = self._shards[job.source]
        returned: str | os.PathLike[str] | None = None
        path: Path | None = None
        size = 0
        error: str | None = None
        try:
            returned = shard.source.download(job=job, ctx=ctx)
            if returned is None:
                error = "declined: download_impl returned None"
            else:
                path, size = landed_file(self.dest_dir, returned)
        except BaseException as exc:  # the boundary: nothing a plugin raises escapes
            error = one_line(exc)
            shard.logger.debug("download %s failed", job.id, exc_info=True)
        with shard.lock:
            shard.worker.finish()
            shard.contexts.pop(job.id, None)
            record = shard.records.get(job.id)
            wrote = None
            if record is not None and record.state is State.RUNNING:
                finished = time.time()
                if path is not None:
                    wrote = shard.move(
                        record,
                        State.COMPLETED,
                        file_path=str(path),
                        finished_at=finished,
                        progress=100.0,
                        size=size,
                        transferred=size,
                        speed=0.0,
                        time_remaining=None,
                    )
                else:
                    wrote = shard.move(
                        _with_progress(record, ctx),
                        State.FAILED,
                        error=error,
                        finished_at=finished,
                        speed=0.0,
                        time_remaining=None,
                    )
        if wrote is None and returned is not None:
            discard_landed(self.dest_dir, returned)  # cancelled or removed meanwhile
        elif wrote is not None and wrote.state is State.FAILED:
            shard.logger.info("download %s of %r failed: %s", job.id, job.target, error)
        self._notify_ended(job.id)

    def _notify_ended(self, download_id: str) -> None:
        """Wake whoever waits for ``download_id`` (its record just ended or went away)."""
        ended = self._watch.pop(download_id, None)
        if ended is not None:
            ended.set()

    # -- controlling -------------------------------------------------------

    def cancel(self, download_id: str, source_hint: str | None = None) -> bool:
        """Cancel a download; True if this call cancelled it, False if it had already ended.

        A queued download never starts; a running one is CANCELLED at once and
        its ``ctx.cancelled`` is set. ``source_hint`` (a name or alias) says
        where to look first. Raises UnknownDownloadError for an unknown id.
        """
        shard = self._find(download_id, source_hint)
        with shard.lock:
            record = shard.records.get(download_id)
            if record is None:
                raise UnknownDownloadError(download_id)
            cancelled = self._cancel_locked(shard, record)
        if cancelled:
            self._notify_ended(download_id)
        return cancelled

    def _cancel_locked(self, shard: _Shard, record: Record) -> bool:
        moved = shard.move(
            shard.snapshot(record), State.CANCELLED, finished_at=time.time(), speed=0.0, time_remaining=None
        )
        ctx = shard.contexts.get(record.id)
        if moved is not None and ctx is not None:
            ctx.cancelled.set()
        return moved is not None

    def remove(self, download_id: str) -> Record:
        """Forget a download, cancelling it first if it has not ended; return its last record.

        Files of completed downloads stay where they are.
        """
        shard = self._find(download_id)
        with shard.lock:
            record = shard.records.get(download_id)
            if record is None:
                raise UnknownDownloadError(download_id)
            self._cancel_locked(shard, record)
            final = shard.records.pop(download_id)
        self._notify_ended(download_id)
        return final

    # -- reading -----------------------------------------------------------

    def get(self, download_id: str) -> Record:
        """A snapshot of one download's record. Raises UnknownDownloadError."""
        shard = self._find(download_id)
        record = shard.records.get(download_id)
        if record is None:
            raise UnknownDownloadError(download_id)
        return shard.snapshot(record)

    def records(self, source: str | None = None) -> list[Record]:
        """Snapshots of all records (of one source, a name or alias), oldest first."""
        if source is not None:
            shards: Iterable[_Shard] = [self._shard(self._registry.resolve(source).name)]
        else:
            shards = list(self._shards.values())
        found = [s.snapshot(r) for s in shards for r in list(s.records.values())]
        if source is None:
            found.sort(key=lambda r: r.created_at)
        return found

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> list[Record]:
        """Block until every download in ``ids`` has ended; return their records in order.

        Raises TimeoutError if ``timeout`` seconds pass first,
        UnknownDownloadError for an unknown id (or one removed meanwhile), and
        EngineClosedError if the engine closes with one of them still queued.
        """
        order = list(ids)
        shards = [self._find(i) for i in order]
        deadline = None if timeout is None else time.monotonic() + timeout
        for shard, download_id in zip(shards, order, strict=True):
            while not self._ended_or_raise(shard, download_id):
                # Watch this one id: the terminal write sets the event. Check again
                # after registering, in case it ended in between.
                ended = self._watch.setdefault(download_id, threading.Event())
                if self._ended_or_raise(shard, download_id):
                    break
                if self._closed:
                    raise EngineClosedError(f"the engine closed before download {download_id} ended")
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not ended.wait(left):
                    done = sum(
                        1
                        for s, i in zip(shards, order, strict=True)
                        if i in s.records and s.records[i].state.terminal
                    )
                    raise TimeoutError(
                        f"{len(order) - done} of {len(order)} downloads had not ended after {timeout} s"
                    )
        return [s.snapshot(s.records[i]) for s, i in zip(shards, order, strict=True)]

    @staticmethod
    def _ended_or_raise(shard: _Shard, download_id: str) -> bool:
        record = shard.records.get(download_id)
        if record is None:
            raise UnknownDownloadError(download_id)
        return record.state.terminal

    # -- closing -----------------------------------------------------------

    def close(self, timeout: float = 5.0) -> list[Record]:
        """Stop: cancel running downloads, leave queued ones QUEUED, end the threads.

        Returns within about ``timeout`` seconds even if a plugin hangs, with
        the records of downloads whose ``download_impl`` had not returned by
        then (also logged). Closing twice is harmless.
        """
        self._closed = True
        deadline = time.monotonic() + timeout
        threads: list[threading.Thread] = []
        for shard in list(self._shards.values()):
            with shard.lock:
                shard.worker.close()
                for download_id in list(shard.contexts):
                    record = shard.records.get(download_id)
                    if record is not None:
                        self._cancel_locked(shard, record)
                threads += shard.worker.thread_objects()
        for ended in list(self._watch.values()):
            ended.set()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [
            shard.records[i]
            for shard in self._shards.values()
            for i in list(shard.contexts)
            if i in shard.records
        ]
        for record in stuck:
            log.warning(
                "closed while download %s of %r from %r was still running",
                record.id,
                record.target,
                record.source,
            )
        return stuck

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- introspection, for tests and benchmarks ------------------------------

    def worker_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per source name: (threads, running, queue entries) right now."""
        return {
            n: (s.worker.threads, s.worker.running, s.worker.queued) for n, s in list(self._shards.items())
        }
