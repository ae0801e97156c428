"""Timeouts: when a running download expires, and ending the ones that have.

:func:`expire` is what the watchdog (:mod:`headwater._watchdog`) checks:
every watched download past its ``timeout`` or ``stall_timeout`` gets its
expiry (:meth:`~headwater._download.Download.expire`, which a cancel or
the attempt's own end may win) and is FAILED at once, or left for a move
down its chain.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from headwater._attempt import deadline, with_progress
from headwater._download import Phase
from headwater._outcomes import fail
from headwater._records import State
from headwater._shard import Shard


@attrs.frozen
class Expired:
    """A download :func:`expire` ended.

    Attributes:
        shard: the shard it ran on.
        download_id: its id.
        why: "timed out after ..." or "stalled: ...".
        fall_back: whether it is left RUNNING for a move down its chain
            (else it is FAILED already).
    """

    shard: Shard
    download_id: str
    why: str
    fall_back: bool


def expire(shards: Iterable[Shard], now: float) -> tuple[float | None, list[Expired]]:
    """End every watched download of ``shards`` past its deadline at clock time ``now``.

    Takes each shard's lock in turn. An expired download's ``ctx.cancelled``
    is set; its ``download_impl`` is not waited for and keeps its place in
    the concurrency limit until it returns. Returns the next deadline (None
    if nothing is watched) and what expired.
    """
    next_due: float | None = None
    ended: list[Expired] = []
    for shard in shards:
        policy = shard.source.policy
        if not policy.watched or not shard.running:
            continue
        with shard.lock:
            for download_id, ctx in list(shard.running.items()):
                download = shard.downloads.get(download_id)
                if download is None or download.ctx is not ctx or download.phase is not Phase.RUNNING:
                    continue  # cancelled, or expired before: its download_impl has not returned
                due, why = deadline(policy, ctx)
                if due > now:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                download.expire(ctx)
                record = shard.record(download_id)
                if record is None or record.state is not State.RUNNING:
                    continue
                if not record.fallbacks:
                    fail(shard, with_progress(record, ctx), why, ())
                ended.append(Expired(shard, download_id, why, bool(record.fallbacks)))
    return next_due, ended
