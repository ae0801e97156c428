"""The end of an attempt: what its outcome writes, as plain functions over a shard.

Each function runs with the shard's lock held and writes through
:meth:`~headwater._shard.Shard.move`: :func:`settle` (an outcome from
:func:`~headwater._executor.execute`: COMPLETED, a retry, a Retry-After
pause, FAILED, or a fall back down the chain), :func:`try_again` (the retry
and Retry-After rules), :func:`fail` and :func:`end_broken` (the last
resort). None of them calls the worker: what the scheduler must do is the
returned :class:`~headwater._worker.Verdict`'s.
"""

from __future__ import annotations

import math
import random
import time

import attrs

from headwater._context import DownloadContext
from headwater._discovery import one_line
from headwater._download import Download
from headwater._errors import RetryAfter, is_transient
from headwater._executor import Outcome
from headwater._files import discard_landed
from headwater._records import Record, State, Tried
from headwater._shard import Shard, with_progress
from headwater._worker import Verdict


@attrs.frozen
class Settled:
    """What :func:`settle` wrote, and what is left to do once the lock is released.

    Attributes:
        verdict: for the worker: queue the download again, pause the source.
        fall_back: the error to move the download down its chain with, or
            None (it is still RUNNING on its shard then: see
            :func:`headwater._chains.fall_back`).
        failed: the error it FAILED with, or None.
    """

    verdict: Verdict
    fall_back: str | None = None
    failed: str | None = None


_DONE = Settled(Verdict())


def settle(shard: Shard, download: Download, ctx: DownloadContext, outcome: Outcome, now: float) -> Settled:
    """Write the end of ``download``'s attempt of ``ctx`` from ``outcome``; lock held; never raises.

    Only if :meth:`Download.end` says the end is this attempt's (no cancel
    and no expiry came first): a file -> COMPLETED; an interrupted attempt
    (see ``Engine.close``) without one -> QUEUED, for a later engine; a
    transient error -> queued again (:func:`try_again`); else FAILED, or
    a fall back when the download has sources left. Otherwise, a file the
    plugin landed is deleted (only inside ``dest_dir``; never one a
    ``skip`` kept). ``now`` is the clock's time. Whatever breaks here ends
    the download FAILED (:func:`end_broken`).
    """
    download_id = download.id
    try:
        if shard.running.get(download_id) is ctx:
            del shard.running[download_id]
        ours = download.end(ctx)  # not if cancelled, or the watchdog ended it
        record = shard.records.get(download_id)
        settled: Settled | None = None
        if ours and record is not None and record.state is State.RUNNING:
            settled = _write_end(shard, download, ctx, outcome, record, now)
        if settled is None and outcome.returned is not None and not outcome.skipped:
            # Cancelled or removed meanwhile: the file goes before the job counts as ended.
            discard_landed(ctx.dest_dir, outcome.returned)
        return _DONE if settled is None else settled
    except BaseException as exc:  # the last resort: whatever broke here, the job ends
        end_broken(shard, download_id, exc)
        return _DONE


def _write_end(
    shard: Shard, download: Download, ctx: DownloadContext, outcome: Outcome, record: Record, now: float
) -> Settled | None:
    """The write of :func:`settle` for a RUNNING ``record`` whose end is this attempt's; None if none."""
    if outcome.path is not None:
        shard.move(
            record,
            State.COMPLETED,
            file_path=str(outcome.path),
            finished_at=time.time(),
            progress=100.0,
            size=outcome.size,
            transferred=0 if outcome.skipped else outcome.size,
            speed=0.0,
            time_remaining=None,
            error=None,
            skipped=outcome.skipped,
        )
        return _DONE
    if ctx.interrupted.is_set():  # stopped, not ended: unfinished, for a later engine
        if shard.move(with_progress(record, ctx), State.QUEUED, speed=0.0, time_remaining=None) is None:
            return None
        return _DONE
    latest = with_progress(record, ctx)
    verdict = try_again(shard, download, latest, outcome.error, outcome.failure, now)
    if isinstance(verdict, Verdict):
        return Settled(verdict)
    if record.fallbacks:
        return Settled(Verdict(), fall_back=verdict)
    fail(shard, latest, verdict, ())
    return Settled(Verdict(), failed=verdict)


def try_again(
    shard: Shard, download: Download, record: Record, error: str, failure: BaseException | None, now: float
) -> Verdict | str:
    """Queue ``download`` again on its source if ``failure`` allows; the lock must be held.

    A RetryAfter pauses the whole source for its seconds and puts the job
    back at the front without using a retry, within the policy's bounds:
    one longer than ``max_retry_after``, or one past
    ``max_retry_after_rounds`` pauses or ``max_retry_after_total`` seconds
    of pauses of this job, is not waited out. Another transient error
    queues a retry after the policy's backoff while retries are left.
    Returns the :class:`Verdict` for the worker when the job was queued
    again (the record is then QUEUED, the download's next job set), else the
    error to end the attempt with: ``error``, followed by how often and how
    long the job was asked to wait when a RetryAfter bound made it give up.
    """
    if failure is None or not is_transient(failure):
        return error
    policy = shard.source.policy
    job = download.job
    again = attrs.evolve(job, attempt=job.attempt + 1)
    if isinstance(failure, RetryAfter):
        cap = policy.max_retry_after
        if not math.isfinite(failure.seconds) or (cap is not None and failure.seconds > cap):
            return error
        wait, rounds, waited = max(0.0, failure.seconds), job.retry_after_rounds, job.retry_after_total
        if rounds >= policy.max_retry_after_rounds:
            bound = f"max_retry_after_rounds is {policy.max_retry_after_rounds}"
        elif waited + wait > policy.max_retry_after_total:
            total = policy.max_retry_after_total
            bound = f"{wait:g} s more would pass max_retry_after_total, {total:g} s"
        else:
            again = attrs.evolve(again, retry_after_rounds=rounds + 1, retry_after_total=waited + wait)
            shard.move(record, State.QUEUED, error=error, speed=0.0, time_remaining=None)
            download.again(again)
            shard.logger.info("source %s paused for %g s: %s", job.source, failure.seconds, error)
            return Verdict(front=True, pause_until=now + wait)
        asked = rounds + 1
        return (
            f"{error}; asked to retry later {asked} time{'s' if asked > 1 else ''} "
            f"over {waited:g} s; giving up ({bound})"
        )
    if record.retries >= policy.retries:
        return error
    retry = record.retries + 1
    shard.move(record, State.QUEUED, error=error, retries=retry, speed=0.0, time_remaining=None)
    download.again(again)
    return Verdict(again_at=now + policy.retry_wait(retry, random.random()))


def fail(shard: Shard, record: Record, error: str, skipped: tuple[Tried, ...]) -> Record:
    """RUNNING -> FAILED with ``error``; ``tried`` gains ``skipped`` and this source. Lock held."""
    wrote = shard.move(
        record,
        State.FAILED,
        error=error,
        tried=(*record.tried, *skipped, Tried(record.source, error)),
        fallbacks=(),
        finished_at=time.time(),
        speed=0.0,
        time_remaining=None,
    )
    assert wrote is not None, "RUNNING -> FAILED is always legal"
    return wrote


def end_broken(shard: Shard, download_id: str, exc: BaseException) -> None:
    """End ``download_id`` on ``shard`` after the engine's own step ending it raised ``exc``; lock held.

    The last resort of the steps after ``download_impl``, which a plugin's
    odd return value or exception could break: logs the traceback, takes
    the attempt's context away and, if the record is still RUNNING on
    ``shard``, writes it FAILED with ``exc`` as its error, so the download
    ends and whoever waits for it can be woken.
    """
    shard.logger.error("ending download %s failed: %s", download_id, one_line(exc), exc_info=exc)
    shard.running.pop(download_id, None)
    record = shard.current(download_id)
    if record is not None and record.state is State.RUNNING:
        fail(shard, record, f"could not end the download: {one_line(exc)}", ())
