"""One download's run state, settled on the download itself.

A :class:`Download` is made when a download is queued and lives until its
``download_impl`` has returned for the last time. Whether it starts, is
cancelled, or ends is a check-and-set on it, as
:meth:`concurrent.futures.Future.set_running_or_notify_cancel` is for a
future: of a start and a cancel racing, exactly one wins, whichever thread
and whatever other lock each holds; of an end and a cancel (or the
watchdog's expiry), exactly one wins too, so a cancel is never overwritten.

The record a user reads is written after the check-and-set, by whoever won
it (see :mod:`headwater._engine`); this object only says who won.
"""

from __future__ import annotations

import enum
import threading

from headwater._context import DownloadContext
from headwater._records import Job

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
    """One download's phase and the context of its current attempt.

    Args:
        job: the job of its first (or next) attempt.

    Every method may be called from any thread, with or without other locks
    held; each check-and-set is atomic.
    """

    __slots__ = ("job", "ctx", "_phase")

    def __init__(self, job: Job) -> None:
        self.job = job
        #: The context of the attempt that started last (None before the first start).
        self.ctx: DownloadContext | None = None
        self._phase = Phase.QUEUED

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def _lock(self) -> threading.Lock:
        """The lock of this download's check-and-sets: its id's stripe (a str caches its hash)."""
        return _STRIPES[hash(self.job.id) % len(_STRIPES)]

    @property
    def phase(self) -> Phase:
        """The phase right now (it may change as soon as it is read)."""
        return self._phase

    def start(self, ctx: DownloadContext) -> bool:
        """QUEUED -> RUNNING with ``ctx``; False (and nothing changes) if it is not QUEUED (cancelled)."""
        with self._lock:
            if self._phase is not Phase.QUEUED:
                return False
            self._phase, self.ctx = Phase.RUNNING, ctx
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
        if phase is Phase.RUNNING and self.ctx is not None:
            self.ctx.cancelled.set()
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
            self._phase, self.job = Phase.QUEUED, job
            return True
