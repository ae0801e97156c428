"""The context a source's ``download_impl`` works in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from headwater._files import Existing


class DownloadContext:
    """What the engine hands to ``download_impl`` beside the job.

    Attributes:
        dest_dir: the download's own folder (existing, resolved); it must
            land inside it.
        cancelled: set when the download must stop: it was cancelled, it
            timed out, or it was interrupted.
            Check it between chunks and stop promptly; what lands after a
            cancel is deleted.
        interrupted: set, before ``cancelled``, when the download is
            stopped without being cancelled (the engine closes with
            ``interrupt=True``: Ctrl-C or SIGTERM in the command line). The
            record stays unfinished and a later engine resumes it: keep
            what a resume continues from (a ``.part``), where on a cancel
            you would remove it.
        logger: a logger named ``headwater.source.<name>``.
        started: when the download started, on the engine's clock (``now``).
        existing: what to do when a file already has the final name:
            ``"rename"``, ``"skip"`` or ``"overwrite"`` (the download's own
            choice, else its source's ``RatePolicy.existing``). Hand it to
            :class:`~headwater.PartFile` or :func:`~headwater.land`, which
            carry it out.
    """

    __slots__ = ("dest_dir", "cancelled", "interrupted", "logger", "started", "existing", "_last", "_now")

    def __init__(
        self,
        dest_dir: Path,
        logger: logging.Logger,
        now: Callable[[], float] = time.monotonic,
        started: float | None = None,
        existing: Existing = "rename",
    ) -> None:
        self.dest_dir = dest_dir
        self.existing: Existing = existing
        self.cancelled = threading.Event()
        self.interrupted = threading.Event()
        self.logger = logger
        self._now = now
        self.started = now() if started is None else started
        self._last: tuple[int, int | None, float] = (0, None, self.started)

    def progress(self, transferred: int, total: int | None = None) -> None:
        """Report that ``transferred`` bytes of ``total`` (None: unknown) are done.

        Cheap enough to call on every chunk: it takes no lock. Reports after
        the download has ended are ignored. Raises ValueError for a negative
        or non-integer count.
        """
        if type(transferred) is not int or transferred < 0:  # noqa: E721 (bool is not a count)
            raise ValueError(f"progress: transferred must be an int >= 0, got {transferred!r}")
        if total is not None and (type(total) is not int or total < 0):  # noqa: E721
            raise ValueError(f"progress: total must be None or an int >= 0, got {total!r}")
        self._last = (transferred, total, self._now())

    @property
    def last_progress(self) -> tuple[int, int | None, float]:
        """The latest report: (transferred, total, engine-clock time of the report).

        Before the first report: (0, None, the start time).
        """
        return self._last
