"""The context a source's ``download_impl`` works in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from headwater._contract import described
from headwater._files import Existing


class Flag(threading.Event):
    """A :class:`threading.Event` whose lock and condition are made on first use, not at creation.

    Every download's context has two (``cancelled``, ``interrupted``) that
    most downloads only ever read with :meth:`is_set`, which reads a plain
    attribute; :meth:`set`, :meth:`clear` and :meth:`wait` make the
    condition, once (two threads making it at once agree on one). Each
    public method of Event is its own here, on attributes of its own: none
    reads or writes Event's private ones, which ``Event.__init__`` (not
    called) would make.
    """

    def __init__(self) -> None:  # no super().__init__(): that makes a condition now
        self._up = False

    def _condition(self) -> threading.Condition:
        made: dict[str, threading.Condition] = self.__dict__
        cond = made.get("_made_cond")
        if cond is None:
            cond = made.setdefault("_made_cond", threading.Condition(threading.Lock()))  # atomic
        return cond

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._up

    def set(self) -> None:
        """Set the flag and wake every thread waiting for it."""
        cond = self._condition()
        with cond:
            self._up = True
            cond.notify_all()

    def clear(self) -> None:
        """Unset the flag: a later :meth:`wait` blocks until it is set again."""
        with self._condition():
            self._up = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds pass; whether it was set (as Event's)."""
        if self._up:
            return True
        cond = self._condition()
        with cond:
            return self._up or cond.wait(timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x}: {'set' if self._up else 'unset'}>"


#: What the engine does with a described download: ``(ctx, display_name, username, fields)``;
#: None for what stays as it was.
Describe = Callable[["DownloadContext", str | None, str | None, Mapping[str, object]], None]


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
        logger: a logger named ``headwater.source.<name>``; secret setting
            values are taken out of what is logged on it.
        started: when the download started, on the engine's clock (``now``).
        settings: the source's settings instance (see ``settings_schema``),
            or None when it declares none.
        existing: what to do when a file already has the final name:
            ``"rename"``, ``"skip"`` or ``"overwrite"`` (the download's own
            choice, else its source's ``RatePolicy.existing``). Hand it to
            :class:`~headwater.PartFile` or :func:`~headwater.land`, which
            carry it out.
    """

    __slots__ = (
        "dest_dir",
        "cancelled",
        "interrupted",
        "logger",
        "started",
        "existing",
        "settings",
        "_last",
        "_now",
        "_describe",
    )

    def __init__(
        self,
        dest_dir: Path,
        logger: logging.Logger,
        now: Callable[[], float] = time.monotonic,
        started: float | None = None,
        existing: Existing = "rename",
        settings: object = None,
        describe: Describe | None = None,
    ) -> None:
        self.dest_dir = dest_dir
        self.existing: Existing = existing
        self.cancelled: threading.Event = Flag()
        self.interrupted: threading.Event = Flag()
        self.logger = logger
        self.settings = settings
        self._now = now
        self.started = now() if started is None else started
        self._last: tuple[int, int | None, float] = (0, None, self.started)
        self._describe = describe

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

    def describe(self, display_name: str | None = None, **fields: object) -> None:
        """Set the record's display name and extra fields now that the source knows them.

        ``display_name`` (a non-empty str; None leaves it as it is) replaces
        the record's; ``fields`` are merged into ``record.extra`` under the
        rules of ``record_fields`` (no core field; ``username`` sets the
        record's label; values str, int, float, bool or None). The record is changed and journaled
        at once (``status``, the progress bars and ``--json`` show it, and a
        restart keeps it); a call after the download has ended, or was
        cancelled, changes nothing. Takes the source's lock briefly: call it
        when something is learned, not per chunk. Raises FieldConflictError
        for a core field and PluginError for anything else that breaks the
        rules (a display name that is not a non-empty str among it), with
        ``rule`` ``"described-fields"``.
        """
        display_name, username, extra = described(display_name, fields)
        if self._describe is not None:
            self._describe(self, display_name, username, extra)

    @property
    def last_progress(self) -> tuple[int, int | None, float]:
        """The latest report: (transferred, total, engine-clock time of the report).

        Before the first report: (0, None, the start time).
        """
        return self._last
