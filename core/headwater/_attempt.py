"""One attempt of a download, as every runner makes it: the plugin's call, its file, and what comes next.

The single-process engine and the cluster's worker both run an attempt
with :func:`run_attempt` (``download_impl``, then the check of the file it
returned), and both judge a failed attempt with :func:`try_again` (a retry
after the policy's backoff, a Retry-After pause, or the end); each then
writes the outcome where it keeps its records. :func:`with_progress` is
the record of a running download as its context last saw it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

from headwater._context import DownloadContext
from headwater._contract import returned_file
from headwater._discovery import one_line
from headwater._errors import ExistingFileKept, RetryAfter, is_transient
from headwater._landmark import attempt_of
from headwater._policy import RatePolicy
from headwater._records import Job, Record, Tried, changed, slot_init
from headwater._redact import redact
from headwater._sources import Source

if TYPE_CHECKING:
    from headwater._chains import Taker


@slot_init
@attrs.frozen
class Attempt:
    """What one call of ``download_impl`` came to.

    Attributes:
        returned: what ``download_impl`` returned (None when it declined or raised).
        path: the landed file, checked to lie inside ``ctx.dest_dir``; None
            when there is none (then ``error`` says why).
        size: the file's size in bytes (0 without a file).
        error: one line: why the attempt did not deliver ("" when it did).
        failure: what ``download_impl`` (or the file's check) raised, or None.
        skipped: a file already at the final name was kept
            (``existing="skip"``): it is not the attempt's to delete.
        attempt: the number of the job's attempt that came to this, what
            its landings were marked with (see :mod:`headwater._landmark`);
            0 when ``download_impl`` declined (returned None) or was not
            called: no file is then the attempt's.
    """

    returned: str | os.PathLike[str] | None
    path: Path | None
    size: int
    error: str
    failure: BaseException | None
    skipped: bool
    attempt: int = 0


def run_attempt(source: Source, job: Job, ctx: DownloadContext) -> Attempt:
    """Call ``source``'s ``download_impl`` for ``job`` in ``ctx`` and check what it returned.

    Runs on the calling thread, as long as the plugin takes; files landed on
    it meanwhile are marked as attempt ``job.attempt`` of ``job.id``
    (:func:`~headwater._landmark.attempt_of`), so a later attempt knows them
    as its own. Never raises:
    whatever the plugin raises (BaseException included) or returns wrongly
    is in the answer's ``error`` and ``failure``.
    """
    returned: str | os.PathLike[str] | None = None
    skipped = False
    try:
        try:
            with attempt_of(job.id, job.attempt):
                returned = source.download(job=job, ctx=ctx)
        except ExistingFileKept as kept:
            returned, skipped = kept.path, True
        if returned is None:
            return Attempt(None, None, 0, "declined: download_impl returned None", None, False)
        path, size = returned_file(ctx.dest_dir, returned)
        return Attempt(returned, path, size, "", None, skipped, job.attempt)
    except BaseException as exc:  # the boundary: nothing a plugin raises escapes
        ctx.logger.debug("download %s failed", job.id, exc_info=True)
        return Attempt(returned, None, 0, one_line(exc), exc, skipped, job.attempt)


@attrs.frozen
class Again:
    """A failed attempt that is tried again (:func:`try_again`).

    Attributes:
        job: the next attempt's job (its ``attempt`` one more; a Retry-After
            counted in its rounds and seconds).
        pause: seconds the whole source waits before its next start (a
            Retry-After; the job goes to the front of the queue and uses no
            retry), or None for a retry.
        retries: the retries used on the source with this one (the record's
            ``retries``); the retry waits ``policy.retry_wait(retries, ...)``.
    """

    job: Job
    pause: float | None
    retries: int


def try_again(
    policy: RatePolicy, job: Job, record: Record, error: str, failure: BaseException | None
) -> Again | str:
    """Whether the failed attempt ``job`` (its record ``record``, RUNNING) is tried again, under ``policy``.

    A RetryAfter pauses the source for its seconds and tries the job again
    without using a retry, within the policy's bounds: one longer than
    ``max_retry_after``, or one past ``max_retry_after_rounds`` pauses or
    ``max_retry_after_total`` seconds of pauses of this job, is not waited
    out. Another transient error is retried while retries are left. Returns
    :class:`Again`, or the error to end the attempt with: ``error``,
    followed by how often and how long the job was asked to wait when a
    RetryAfter bound made it give up. Pure: changes nothing.
    """
    if failure is None or not is_transient(failure):
        return error
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
            return Again(again, wait, record.retries)
        asked = rounds + 1
        return (
            f"{error}; asked to retry later {asked} time{'s' if asked > 1 else ''} "
            f"over {waited:g} s; giving up ({bound})"
        )
    if record.retries >= policy.retries:
        return error
    return Again(again, None, record.retries + 1)


def completion(tried: Attempt) -> dict[str, object]:
    """The fields of the COMPLETED record of the attempt ``tried``, which landed a file."""
    return {
        "file_path": str(tried.path),
        "finished_at": time.time(),
        "progress": 100.0,
        "size": tried.size,
        "transferred": 0 if tried.skipped else tried.size,
        "speed": 0.0,
        "time_remaining": None,
        "error": None,
        "skipped": tried.skipped,
    }


def failing(record: Record, error: str, skipped: tuple[Tried, ...] = ()) -> dict[str, object]:
    """The fields of ``record`` FAILED with ``error``; its ``tried`` gains ``skipped`` and its source."""
    return {
        "error": error,
        "tried": (*record.tried, *skipped, Tried(record.source, error)),
        "fallbacks": (),
        "finished_at": time.time(),
        "speed": 0.0,
        "time_remaining": None,
    }


def moved_down(record: Record, error: str, taker: Taker, declined: tuple[Tried, ...]) -> dict[str, object]:
    """The fields of ``record`` QUEUED again on ``taker``'s source after it failed with ``error``.

    ``taker`` and ``declined`` are :func:`~headwater._chains.find_taker`'s
    answer for the record's ``fallbacks``; its ``tried`` gains this source's
    failure and ``declined``, and the attempt's progress is reset.
    """
    return {
        "source": taker.source.name,  # the name now, should the chain say an alias
        "tried": (*record.tried, Tried(record.source, error), *declined),
        "fallbacks": record.fallbacks[taker.index + 1 :],
        "error": error,
        "retries": 0,
        "progress": 0.0,
        "size": None,
        "transferred": 0,
        "speed": 0.0,
        "time_remaining": None,
    }


def redacted(fields: Mapping[str, object]) -> dict[str, object]:
    """``fields`` with secret setting values taken out of its strings (see :mod:`headwater._redact`)."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}


def described_changes(
    record: Record, display_name: str | None, username: str | None, fields: Mapping[str, object]
) -> dict[str, object]:
    """The changes ``ctx.describe`` makes to the RUNNING ``record`` (its arguments already checked)."""
    changes: dict[str, object] = {"extra": MappingProxyType({**record.extra, **redacted(fields)})}
    if display_name is not None:
        changes["display_name"] = redact(display_name)
    if username is not None:
        changes["username"] = redact(username)
    return changes


def deadline(policy: RatePolicy, ctx: DownloadContext) -> tuple[float, str]:
    """When a download running under ``policy`` with ``ctx`` expires (its clock), and what to call it then."""
    due, why = float("inf"), ""
    if policy.timeout is not None:
        due, why = ctx.started + policy.timeout, f"timed out after {policy.timeout:g} s"
    if policy.stall_timeout is not None:
        stalled = ctx.last_progress[2] + policy.stall_timeout
        if stalled < due:
            due, why = stalled, f"stalled: no progress for {policy.stall_timeout:g} s"
    return due, why


def with_progress(record: Record, ctx: DownloadContext) -> Record:
    """``record`` carrying the latest progress ``ctx`` has seen."""
    transferred, total, at = ctx.last_progress
    elapsed = at - ctx.started
    speed = transferred / elapsed if elapsed > 0 else 0.0
    progress, remaining = record.progress, None
    if total:
        progress = min(100.0, transferred * 100.0 / total)
        remaining = max(0, total - transferred) / speed if speed > 0 else None
    return changed(
        record, transferred=transferred, size=total, speed=speed, progress=progress, time_remaining=remaining
    )
