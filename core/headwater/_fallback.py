"""A move down a fallback chain: a download that failed on one source queued on the next that takes it.

:func:`fall_back` asks the chain's remaining sources in turn
(:func:`~headwater._chains.find_taker`, without locks) and :func:`move_down`
makes the move, holding both sources' locks in name order, so a cancel
either lands first (and nothing moves) or finds the download on its new
source (see ``docs/resilience.md``).
"""

from __future__ import annotations

from headwater._attempt import moved_down
from headwater._chains import Taker, find_taker
from headwater._outcomes import end_broken, fail
from headwater._records import Job, Record, State, Tried
from headwater._shard import Shard, Shards


def fall_back(shards: Shards, shard: Shard, download_id: str, error: str) -> None:
    """Move a chain download that failed on ``shard`` with ``error`` to the next source that takes it.

    Call it without locks, while the record is still RUNNING on ``shard``
    (its attempt ended by :meth:`Download.end` or :meth:`Download.expire`).
    The fallbacks' ``translate_target`` hooks run without locks; the move
    itself is :func:`move_down`. Fails the download when no source is left,
    unless it was cancelled or removed meanwhile. Never raises: if a step
    fails (a fallback's ``translate_target`` raising what its boundary lets
    through, such as KeyboardInterrupt), the download FAILS instead.
    """
    try:
        record = shard.record(download_id)
        if record is None:
            return
        fallbacks = (shards.registry.resolve(name) for name in record.fallbacks)
        taker, declined = find_taker(fallbacks, record.target)
        if taker is not None:
            move_down(shards, shard, record, error, taker, declined)
            return
        with shard.lock:
            current = shard.record(download_id)
            if current is not None and current.state is State.RUNNING:
                fail(shard, current, error, declined)
                shard.logger.info("download %s failed on every source of its chain", download_id)
    except BaseException as exc:  # the last resort: this runs on a worker or the watchdog thread
        with shard.lock:
            end_broken(shard, download_id, exc)


def move_down(
    shards: Shards, shard: Shard, record: Record, error: str, taker: Taker, declined: tuple[Tried, ...]
) -> None:
    """Requeue ``record``'s download, which failed with ``error`` on ``shard``, on ``taker``'s source.

    ``record`` is as read without a lock while it was RUNNING on
    ``shard``; ``taker`` and ``declined`` are :func:`find_taker`'s answer
    for its ``fallbacks``. Its ``tried`` gains this source's failure and
    ``declined``. Call it with no lock held: it takes both sources' locks
    in name order, so a cancel either lands first (and nothing moves) or
    finds the record on its new source. The QUEUED record is committed
    through :meth:`Shard.move`, entered in ``shards.home`` before it leaves
    ``shard`` (see :meth:`Shards.raise_unless_moved`), then the download
    (its next job set) is put on the new source's worker.
    """
    download_id, name = record.id, taker.source.name  # the name now, should the chain say an alias
    dest = shards.of(name)
    first, second = sorted((shard, dest), key=lambda s: s.source.name)
    with first.lock, second.lock:
        current = shard.record(download_id)
        download = shard.downloads.get(download_id)
        if current is None or current.state is not State.RUNNING or download is None:
            return  # cancelled or removed meanwhile
        moved = shard.move(current, State.QUEUED, **moved_down(current, error, taker, declined))
        assert moved is not None, "RUNNING -> QUEUED is always legal"
        dest.downloads[download_id] = download  # its record is ``moved`` already
        shards.home[download_id] = dest
        del shard.downloads[download_id]
        download.again(Job(download_id, name, taker.target, moved.display_name))
        dest.worker.put(download)
    shard.logger.info("download %s failed on %s (%s); trying %s", download_id, record.source, error, name)
