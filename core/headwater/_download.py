"""One download's run state, settled on the download itself.

A :class:`Download` is made when a download is queued and lives until its
``download_impl`` has returned for the last time. Whether it starts, is
cancelled, or ends is a check-and-set on it, as
:meth:`concurrent.futures.Future.set_running_or_notify_cancel` is for a
future: of a start and a cancel racing, exactly one wins, whichever thread
and whatever other lock each holds; of an end and a cancel (or the
watchdog's expiry), exactly one wins too, so a cancel is never overwritten.

The record a user reads is written after the check-and-set, by whoever won
it (see :mod:`headwater._shard`); this object says who won, and holds the
record as committed, so that a queued download costs its source one map
entry and one small object besides its record.
"""

from __future__ import annotations

import enum
import threading

from headwater._context import DownloadContext
from headwater._records import Job, Record

#: The locks the check-and-sets are made under, one chosen by each download's
#: id, so a queued download costs no lock of its own. Each is held for a
#: few instructions and never while another lock is taken.
_STRIPES = tuple(threading.Lock() for _ in range(64))


class Phase(enum.Enum):
    """Where a :class:`Download` is; the moves are its methods'."""

    QUEUED = "queued"  #: waiting to start (:meth:`Download.start`)
    RUNNING = "running"  #: its ``download_impl`` runs with :attr:`Download.ctx`
    ENDED = "ended"  #: its attempt ended (:meth:`Download.end`, :meth:`Download.expire`); may go again
    CANCELLED = "cancelled"  #: cancelled; final


class Download:
    """One unfinished download: its record as committed, its phase and its current attempt.

    Args:
        record: its record as committed (QUEUED).
        job: the job of its first (or next) attempt; None for the record's
            own first job (:func:`first_job`), made when it starts, so a
            queued download holds no job of its own.

    Every method may be called from any thread, with or without other locks
    held; each check-and-set is atomic. :attr:`record` is replaced whole by
    its source's shard, under the shard's lock, and read without it.
    """

    __slots__ = ("record", "_attempt", "_phase")

    def __init__(self, record: Record, job: Job | None = None) -> None:
        #: The record as committed: what readers see.
        self.record = record
        # While QUEUED, the next attempt's job (None: the record's first job); from a start
        # on, the job and context of the attempt that started last. One slot for both
        # keeps a queued download small.
        self._attempt: Job | tuple[Job, DownloadContext] | None = job
        self._phase = Phase.QUEUED

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def job(self) -> Job:
        """The job of the attempt that started last (of the next one while QUEUED)."""
        attempt = self._attempt
        if attempt is None:
            return first_job(self.record)
        return attempt[0] if isinstance(attempt, tuple) else attempt

    @property
    def ctx(self) -> DownloadContext | None:
        """The context of the attempt that started last; None before a start, and queued again."""
        attempt = self._attempt
        return attempt[1] if isinstance(attempt, tuple) else None

    @property
    def _lock(self) -> threading.Lock:
        """The lock of this download's check-and-sets: its id's stripe (a str caches its hash)."""
        return _STRIPES[hash(self.record.id) % len(_STRIPES)]

    @property
    def phase(self) -> Phase:
        """The phase right now (it may change as soon as it is read)."""
        return self._phase

    def start(self, ctx: DownloadContext) -> bool:
        """QUEUED -> RUNNING with ``ctx``; False (and nothing changes) if it is not QUEUED (cancelled)."""
        with self._lock:
            if self._phase is not Phase.QUEUED:
                return False
            # The job is made now, so it stays the same whatever the record becomes.
            self._phase, self._attempt = Phase.RUNNING, (self.job, ctx)
            return True

    def cancel(self) -> bool:
        """Any phase but CANCELLED -> CANCELLED; True if this call cancelled it.

        A running attempt's ``ctx.cancelled`` is set. An ENDED download is
        one whose outcome is still being settled (a move down a chain): a
        cancel wins over that too, and :meth:`again` then refuses.
        """
        with self._lock:
            phase = self._phase
            if phase is Phase.CANCELLED:
                return False
            self._phase = Phase.CANCELLED
        ctx = self.ctx
        if phase is Phase.RUNNING and ctx is not None:
            ctx.cancelled.set()
        return True

    def end(self, ctx: DownloadContext) -> bool:
        """RUNNING -> ENDED for the attempt of ``ctx``; True if its outcome is the caller's to write.

        False when that attempt was cancelled or expired meanwhile (or a
        later attempt runs): the caller writes nothing and discards what it landed.
        """
        with self._lock:
            if self._phase is not Phase.RUNNING or self.ctx is not ctx:
                return False
            self._phase = Phase.ENDED
            return True

    def expire(self, ctx: DownloadContext) -> bool:
        """As :meth:`end`, for the watchdog: the attempt of ``ctx`` ends now; its ``ctx.cancelled`` is set."""
        if not self.end(ctx):
            return False
        ctx.cancelled.set()
        return True

    def again(self, job: Job) -> bool:
        """ENDED -> QUEUED with ``job``, the next attempt's (a retry, a pause, a move down a chain).

        Only the caller that ended the attempt calls it. False (and nothing
        changes) if a cancel came first.
        """
        with self._lock:
            if self._phase is not Phase.ENDED:
                return False
            self._phase, self._attempt = Phase.QUEUED, job
            return True


def first_job(record: Record) -> Job:
    """The job of a download's first attempt on its record's source, when its target needs no translation."""
    return Job(record.id, record.source, record.target, record.display_name)
