"""The end of an attempt in this process: what its outcome writes, as plain functions over a shard.

Each function runs with the shard's lock held and writes through
:meth:`~headwater._shard.Shard.move`: :func:`settle` (an
:class:`~headwater._attempt.Attempt`: COMPLETED, a retry, a Retry-After
pause, FAILED, or a fall back down the chain), :func:`fail` and
:func:`end_broken` (the last resort). Whether a failure is tried again is
:func:`headwater._attempt.try_again`'s rule, the one the cluster's worker
uses too. None of them calls the worker: what the scheduler must do is the
returned :class:`~headwater._worker.Verdict`'s.
"""

from __future__ import annotations

import attrs

from headwater._attempt import Attempt, completion, failing, try_again, with_progress
from headwater._chance import rng
from headwater._context import DownloadContext
from headwater._discovery import one_line
from headwater._download import Download
from headwater._files import discard_landed
from headwater._records import Record, State, Tried, slot_init
from headwater._shard import Shard
from headwater._worker import Verdict


@slot_init
@attrs.frozen
class Settled:
    """What :func:`settle` wrote, and what is left to do once the lock is released.

    Attributes:
        verdict: for the worker: queue the download again, pause the source.
        fall_back: the error to move the download down its chain with, or
            None (it is still RUNNING on its shard then: see
            :func:`headwater._fallback.fall_back`).
        failed: the error it FAILED with, or None.
    """

    verdict: Verdict
    fall_back: str | None = None
    failed: str | None = None


_DONE = Settled(Verdict())


def settle(shard: Shard, download: Download, ctx: DownloadContext, tried: Attempt, now: float) -> Settled:
    """Write the end of ``download``'s attempt of ``ctx``, which came to ``tried``; lock held; never raises.

    Only if :meth:`Download.end` says the end is this attempt's (no cancel
    and no expiry came first): a file -> COMPLETED; an interrupted attempt
    (see ``Engine.close``) without one -> QUEUED, for a later engine; a
    failure :func:`~headwater._attempt.try_again` allows -> QUEUED again
    (the verdict says when); else FAILED, or a fall back when the download
    has sources left. Otherwise, a file the plugin landed is deleted (only
    inside ``dest_dir``; never one a ``skip`` kept). ``now`` is the clock's
    time. Whatever breaks here ends the download FAILED (:func:`end_broken`).
    """
    download_id = download.id
    try:
        running = shard.running
        if running.get(download_id) is ctx:
            del running[download_id]
        ours = download.end(ctx)  # not if cancelled, or the watchdog ended it
        record = shard.record(download_id)
        settled: Settled | None = None
        if ours and record is not None and record.state is State.RUNNING:
            settled = _write_end(shard, download, ctx, tried, record, now)
        if settled is None and tried.returned is not None and not tried.skipped:
            # Cancelled or removed meanwhile: the file goes before the job counts as ended.
            discard_landed(ctx.dest_dir, tried.returned, (download_id, tried.attempt))
        return _DONE if settled is None else settled
    except BaseException as exc:  # the last resort: whatever broke here, the job ends
        end_broken(shard, download_id, exc)
        return _DONE


def _write_end(
    shard: Shard, download: Download, ctx: DownloadContext, tried: Attempt, record: Record, now: float
) -> Settled:
    """The write of :func:`settle` for a RUNNING ``record`` whose end is this attempt's."""
    if tried.path is not None:
        shard.move(record, State.COMPLETED, **completion(tried))
        return _DONE
    if ctx.interrupted.is_set():  # stopped, not ended: unfinished, for a later engine
        shard.move(with_progress(record, ctx), State.QUEUED, speed=0.0, time_remaining=None)
        return _DONE
    latest = with_progress(record, ctx)
    policy = shard.source.policy
    again = try_again(policy, download.job, latest, tried.error, tried.failure)
    if isinstance(again, str):
        if record.fallbacks:
            return Settled(Verdict(), fall_back=again)
        fail(shard, latest, again, ())
        return Settled(Verdict(), failed=again)
    download.again(again.job)
    if again.pause is not None:
        shard.move(latest, State.QUEUED, error=tried.error, speed=0.0, time_remaining=None)
        shard.logger.info("source %s paused for %g s: %s", download.job.source, again.pause, tried.error)
        return Settled(Verdict(front=True, pause_until=now + again.pause))
    retry = again.retries
    shard.move(latest, State.QUEUED, error=tried.error, retries=retry, speed=0.0, time_remaining=None)
    return Settled(Verdict(again_at=now + policy.retry_wait(retry, rng.random())))


def fail(shard: Shard, record: Record, error: str, skipped: tuple[Tried, ...]) -> Record:
    """RUNNING -> FAILED with ``error``; ``tried`` gains ``skipped`` and this source. Lock held."""
    wrote = shard.move(record, State.FAILED, **failing(record, error, skipped))
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
