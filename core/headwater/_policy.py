"""Rate policies: how many downloads of one source run at once, how fast, how often retried."""

from __future__ import annotations

import attrs

from headwater._errors import InvalidPolicyError
from headwater._files import Existing, existing_choice


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidPolicyError(
            f"RatePolicy.{attribute.name} must be a whole number of at least 1, got {value!r}"
        )


def _at_least_one_or_none(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidPolicyError(
            f"RatePolicy.{attribute.name} must be None or a whole number of at least 1, got {value!r}"
        )


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidPolicyError(f"RatePolicy.{attribute.name} must be a whole number >= 0, got {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidPolicyError(
            f"RatePolicy.{attribute.name} must be a finite number of seconds >= 0, got {value!r}"
        )


def _positive_or_none(_: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf")
    ):
        raise InvalidPolicyError(
            f"RatePolicy.{attribute.name} must be None or a finite number of seconds > 0, got {value!r}"
        )


def _existing_choice(_: object, attribute: attrs.Attribute[Existing], value: Existing) -> None:
    try:
        existing_choice(value, f"RatePolicy.{attribute.name}")
    except ValueError as exc:
        raise InvalidPolicyError(str(exc)) from None


@attrs.frozen
class RatePolicy:
    """How the shared worker schedules one source, and what its downloads do with a name already taken.

    All times are seconds on the engine's monotonic clock.

    Attributes:
        concurrency: the most downloads of this source that run at once (>= 1).
        delay: the least time from the end of one download of this source
            (success or failure) to the start of the next one (>= 0).
        per_minute: at most this many starts of this source in any 60 second
            window, or None for no cap.
        retries: how many more attempts a download gets on this source after a
            transient error (see :func:`headwater.is_transient`); 0 for none.
        backoff: the base of the wait before a retry: retry ``n`` (from 1)
            waits a random time in ``[0, min(backoff_max, backoff * 2 ** (n - 1))]``
            ("full jitter"), during which other downloads of the source run.
        backoff_max: the cap of that wait (>= 0).
        timeout: a download running longer than this is cancelled and FAILED
            "timed out", or None for no limit.
        stall_timeout: a download that reports no progress for this long (from
            its start or its last ``ctx.progress``) is cancelled and FAILED
            "stalled", or None for no watchdog.
        max_retry_after: the longest ``RetryAfter`` the source is paused for;
            a download asked to wait longer FAILS at once with the
            ``RetryAfter`` as its error (in a chain the next source gets it).
            None (the default) honours any wait up to ``max_retry_after_total``.
        max_retry_after_rounds: the most ``RetryAfter`` pauses one download
            waits out on this source (>= 0); asked once more, it gives up:
            FAILED (in a chain the next source gets it) with an error saying
            how often and for how long it was asked to wait.
        max_retry_after_total: the most seconds of ``RetryAfter`` pauses one
            download waits out on this source in all (>= 0); a ``RetryAfter``
            that would take it past this gives up the same way.
        existing: what a download of this source does when a file already
            has its final name (``ctx.existing``, unless the download was
            submitted with its own choice): ``"rename"`` (the default) lands
            it as ``name (1).ext``, ``"skip"`` keeps the file there and
            fetches nothing, ``"overwrite"`` replaces it. See
            :func:`headwater.land`.

    Invalid values raise :class:`~headwater.InvalidPolicyError` when the
    policy is built, so a bad policy is refused at load, never a deadlock.
    """

    concurrency: int = attrs.field(default=1, validator=_at_least_one)
    delay: float = attrs.field(default=0.0, validator=_not_negative)
    per_minute: int | None = attrs.field(default=None, validator=_at_least_one_or_none)
    retries: int = attrs.field(default=0, validator=_count)
    backoff: float = attrs.field(default=1.0, validator=_not_negative)
    backoff_max: float = attrs.field(default=60.0, validator=_not_negative)
    timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    stall_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_retry_after: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_retry_after_rounds: int = attrs.field(default=10, validator=_count)
    max_retry_after_total: float = attrs.field(default=600.0, validator=_not_negative)
    existing: Existing = attrs.field(default="rename", validator=_existing_choice)

    @property
    def watched(self) -> bool:
        """Whether downloads under this policy need the watchdog (a timeout or stall timeout)."""
        return self.timeout is not None or self.stall_timeout is not None

    def retry_wait(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), given ``draw`` in [0, 1).

        Full jitter: ``draw`` times the capped exponential
        ``min(backoff_max, backoff * 2 ** (retry - 1))``. The engine passes a
        draw of its own random numbers (not :mod:`random`'s shared instance).
        """
        return draw * min(self.backoff_max, self.backoff * 2.0 ** min(retry - 1, 64))
