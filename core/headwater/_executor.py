"""Running one attempt: calling ``download_impl`` and checking what it hands back.

:func:`execute` is the plugin boundary of the run path: whatever the plugin
returns or raises becomes an :class:`Outcome`, a value; nothing escapes.
It takes no lock and touches no record, so it runs wherever the attempt
runs: on a :class:`~headwater._worker.SourceWorker` thread in this
process, or on a worker of another process that reports the outcome back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from headwater._context import DownloadContext
from headwater._contract import returned_file
from headwater._discovery import one_line
from headwater._errors import ExistingFileKept
from headwater._records import Job

#: A source's ``download_impl``, called with keyword arguments.
DownloadImpl = Callable[..., Any]


@attrs.frozen
class Outcome:
    """What one attempt's ``download_impl`` did.

    Attributes:
        returned: what it returned (or the path an ExistingFileKept named), None if nothing.
        path: ``returned`` checked to lie inside the destination, None if it
            returned nothing usable or raised.
        size: the file's size in bytes (0 without ``path``).
        error: one line on why there is no file ("" when there is one).
        failure: the exception it raised (or the check of its path raised), or None.
        skipped: a file already at the name was kept (``existing="skip"``):
            it is not the plugin's, and never deleted.
    """

    returned: str | os.PathLike[str] | None
    path: Path | None
    size: int
    error: str
    failure: BaseException | None
    skipped: bool


def execute(download: DownloadImpl, job: Job, ctx: DownloadContext, logger: logging.Logger) -> Outcome:
    """Call ``download(job=job, ctx=ctx)`` and check the path it returns; never raises.

    Anything raised (a plugin's error, a path outside ``ctx.dest_dir``,
    even KeyboardInterrupt on this thread) becomes the outcome's ``failure``,
    logged on ``logger`` at debug level with its traceback.
    """
    returned: str | os.PathLike[str] | None = None
    path: Path | None = None
    size = 0
    error = ""
    failure: BaseException | None = None
    skipped = False
    try:
        try:
            returned = download(job=job, ctx=ctx)
        except ExistingFileKept as kept:
            returned, skipped = kept.path, True
        if returned is None:
            error = "declined: download_impl returned None"
        else:
            path, size = returned_file(ctx.dest_dir, returned)
    except BaseException as exc:  # the boundary: nothing a plugin raises escapes
        error, failure = one_line(exc), exc
        logger.debug("download %s failed", job.id, exc_info=True)
    return Outcome(returned, path, size, error, failure, skipped)
