"""Rate policies: how many downloads of one source run at once, and how fast."""

from __future__ import annotations

import attrs

from headwater.errors import InvalidPolicyError


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidPolicyError(
            f"RatePolicy.{attribute.name} must be a whole number of at least 1, got {value!r}"
        )


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidPolicyError(
            f"RatePolicy.{attribute.name} must be a number of seconds >= 0, got {value!r}"
        )


@attrs.frozen
class RatePolicy:
    """How the shared worker schedules one source.

    Attributes:
        concurrency: the most downloads of this source that run at once (>= 1).
        delay: the least time in seconds, on the monotonic clock, from the end
            of one download of this source (success or failure) to the start
            of the next one (>= 0).

    Invalid values raise :class:`~headwater.errors.InvalidPolicyError` when the
    policy is built, so a bad policy is refused at load, never a deadlock.
    """

    concurrency: int = attrs.field(default=1, validator=_at_least_one)
    delay: float = attrs.field(default=0.0, validator=_not_negative)
