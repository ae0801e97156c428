"""Which attempt of which download landed a file: how a later attempt knows the file as its own.

A process killed after its plugin landed a file, before the attempt's end
was committed, leaves the record RUNNING, and the download runs again. So
that the next attempt completes with the file the killed one landed, and
never with another, :func:`~headwater._files.land` marks the ``.part``
with the download's id and attempt number (:func:`attempt_of`, set around
``download_impl``) before the file takes a final name: an extended
attribute, :data:`ATTRIBUTE`, which the landed file keeps. A name taken by
a file marked by an earlier attempt of the same download is that
download's own (:func:`is_own`); the attempt that takes it marks it as
its own (:func:`mark`), so that the earlier attempt, if it is alive after
all and its end is refused, does not delete it (:func:`taken_over`). Every
other taken name, marked or not, belongs to someone else.

Where extended attributes are not kept (FAT, some network filesystems,
systems without :func:`os.setxattr` such as macOS and Windows), nothing is
marked, no taken name is ever one's own, and a download killed between
its landing and its end lands a second copy (``name (1).ext``) when it
runs again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

log = logging.getLogger("headwater")

#: The extended attribute a landed file carries: ``<download id> <attempt>``, ASCII.
ATTRIBUTE = "user.headwater.download"

#: (download id, attempt) of the attempt running on this thread, if any.
_running: ContextVar[tuple[str, int] | None] = ContextVar("headwater_landing", default=None)
_KEPT = hasattr(os, "setxattr")


@contextlib.contextmanager
def attempt_of(download_id: str, attempt: int) -> Iterator[None]:
    """Within the block, files landed on this thread are marked as attempt ``attempt`` of ``download_id``."""
    token = _running.set((download_id, attempt))
    try:
        yield
    finally:
        _running.reset(token)


def mark(path: Path) -> None:
    """Mark ``path`` as landed by the attempt running on this thread.

    Outside :func:`attempt_of` (a plugin's own thread, a test calling the
    helpers), any mark ``path`` already carries (a ``.part`` another
    download left) is removed, so the file is no download's. Never follows
    a symbolic link. Never raises: a filesystem that keeps no mark leaves
    the file unmarked (logged at debug).
    """
    if not _KEPT:
        return
    running = _running.get()
    try:
        if running is None:
            os.removexattr(path, ATTRIBUTE, follow_symlinks=False)
        else:
            os.setxattr(path, ATTRIBUTE, f"{running[0]} {running[1]}".encode(), follow_symlinks=False)
    except OSError as exc:  # no such mark to remove, or no marks kept here
        if running is not None:
            log.debug("cannot mark %s with its download's id: %s", path, exc)


def is_own(path: Path) -> bool:
    """Whether ``path`` is marked by an earlier attempt of the download whose attempt runs on this thread.

    False outside :func:`attempt_of`, for a symbolic link (not followed),
    for a file this same attempt landed, and when nothing or no mark is
    there. Never raises.
    """
    running, marked = _running.get(), _marked(path)
    return running is not None and marked is not None and marked[0] == running[0] and marked[1] < running[1]


def taken_over(path: Path, download_id: str, attempt: int) -> bool:
    """Whether ``path`` is marked by an attempt of ``download_id`` later than ``attempt``. Never raises."""
    marked = _marked(path)
    return marked is not None and marked[0] == download_id and marked[1] > attempt


def _marked(path: Path) -> tuple[str, int] | None:
    """The (download id, attempt) ``path`` is marked with; None if none, or not readable as one."""
    if not _KEPT:
        return None
    try:
        download_id, _, attempt = os.getxattr(path, ATTRIBUTE, follow_symlinks=False).decode().partition(" ")
        return download_id, int(attempt)
    except (OSError, ValueError):
        return None
