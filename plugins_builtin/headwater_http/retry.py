"""Waiting out a short Retry-After inside the source, until the core's retries do it.

Remove this module (and its one call in ``headwater_http``) once the engine
retries a download that raised :class:`~headwater.RetryAfter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from headwater import DownloadCancelled, DownloadContext, RetryAfter

T = TypeVar("T")

#: The longest Retry-After the source waits out itself; a longer one fails the download.
MAX_WAIT = 60.0
#: How many times one download waits and asks again before it fails.
MAX_WAITS = 3


def retrying_after(attempt: Callable[[], T], ctx: DownloadContext, max_wait: float = MAX_WAIT) -> T:
    """Call ``attempt``; while it raises RetryAfter of at most ``max_wait`` s, wait and call again.

    Runs on the download's worker thread. The wait ends early on a cancel
    (raising :class:`DownloadCancelled`). After :data:`MAX_WAITS` waits, or for
    a longer Retry-After, the RetryAfter propagates so the download fails with
    the time to retry in its error.
    """
    waits = 0
    while True:
        try:
            return attempt()
        except RetryAfter as exc:
            if exc.seconds > max_wait or waits >= MAX_WAITS:
                raise
            waits += 1
            ctx.logger.info("%s; waiting (%d of %d)", exc, waits, MAX_WAITS)
            if ctx.cancelled.wait(exc.seconds):
                raise DownloadCancelled("cancelled while waiting out Retry-After") from exc
