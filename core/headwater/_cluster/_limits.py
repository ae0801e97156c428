"""Each source's limits on starting, held in Redis: one view for every process and host of a cluster.

A download holds a slot of its source as a *lease*: granted to a named
holder (the download's id and attempt, e.g. ``"a1b2c3:2"``) for
:attr:`RedisLimits.lease` seconds, renewed by the holder while it runs
(:mod:`headwater._cluster._keeper` does that), given back when it ends. A
holder that stops renewing (killed, frozen, cut off) loses its slot when its
lease runs out; a holder that lost its lease learns it from its next
renewal and stops itself.

Every check and change is one Lua script (``lua/*.lua``), so it is atomic:
two schedulers asking at once never both take the last slot. Every time is
read inside the script with ``TIME``: one clock, the Redis server's, for all
hosts. What this module returns to a caller is in the caller's own clock,
as ``now`` plus a wait the server measured.

Keys, per source (``P`` the prefix, ``S`` the source; the braces keep them
in one Redis Cluster slot): ``P{S}:holders`` (sorted set, holder -> lease
expiry), ``P{S}:starts`` (sorted set of the starts of the last minute, with a
per-minute cap), ``P{S}:ended`` (the latest end), ``P{S}:pause`` (no start
before, a Retry-After), ``P{S}:born`` (when this state began; absent after
Redis lost it).

Every script is safe to run twice (a client that retries after a lost
reply): an acquire by a holder that holds a lease renews it, a release or a
pause repeated changes nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, cast

import attrs
import redis

from headwater._cluster._scripts import load, text
from headwater._policy import RatePolicy

#: The window ``RatePolicy.per_minute`` counts starts in, in seconds.
WINDOW = 60.0

#: The key prefix of the limits, unless the caller names another.
PREFIX = "headwater:limits:"


def ended_channel(prefix: str = PREFIX) -> str:
    """The channel a worker announces each slot its download gave back on, for the limits of ``prefix``.

    The scheduler listens to it to start the next download without waiting
    for the end's write and the change feed; announcements may be lost
    (pub/sub), the change feed still brings every end.
    """
    return f"{prefix}ended"


#: Why :meth:`RedisLimits.acquire` answered as it did. Granted: ``granted``
#: (a new lease), ``held`` (the holder held one already; it was renewed).
#: Not granted, what the wait is for: ``settling`` (the state is new or was
#: lost: see :class:`RedisLimits`), ``paused`` (a Retry-After), ``delay`` (the
#: delay from the last end), ``per_minute`` (the window is full),
#: ``concurrency`` (every slot is held).
Reason = Literal["granted", "held", "settling", "paused", "delay", "per_minute", "concurrency"]

_REASONS: dict[str, Reason] = {
    reason: reason
    for reason in ("granted", "held", "settling", "paused", "delay", "per_minute", "concurrency")
}


@attrs.frozen
class Verdict:
    """What an acquire answered.

    Attributes:
        granted: whether the holder now holds a slot (a lease to renew).
        at: when granted, the ``now`` asked at; else the time on the
            caller's clock to ask again (``math.inf``: not before a release).
        reason: why (see :data:`Reason`).
    """

    granted: bool
    at: float
    reason: Reason


class LeasedLimits(Protocol):
    """One source's limits, with each slot held by a named holder as a lease (the proposed ``Limits``).

    Times are seconds on the caller's clock; ``now`` is its current time.
    An implementation shared by several processes keeps every method one
    atomic step where it keeps the limits.
    """

    #: Seconds a slot stays held without a renewal (``math.inf``: held until released).
    lease: float

    def acquire(self, holder: str, now: float) -> Verdict:
        """Take a slot for ``holder`` if a start is allowed at ``now``; check and take are one step."""
        ...

    def renew(self, holder: str, now: float) -> bool:
        """Extend ``holder``'s lease; False if it holds none (expired, released, or lost)."""
        ...

    def release(self, holder: str, now: float, *, started: bool = True) -> bool:
        """``holder``'s download ended at ``now``: its slot is free; whether it still held its lease.

        ``started=False`` gives an unused grant back (its download was
        cancelled before it began): it counts as neither an end nor a start.
        """
        ...

    def pause_until(self, when: float, now: float) -> None:
        """Allow no start before ``when`` (a Retry-After); a later pause wins over an earlier one."""
        ...

    def set_policy(self, policy: RatePolicy) -> None:
        """Judge every later acquire by ``policy``."""
        ...

    def running(self) -> int:
        """Slots held now."""
        ...


def _micros(seconds: float) -> int:
    """``seconds`` as whole microseconds, rounded up (a wait is never shortened)."""
    return math.ceil(seconds * 1_000_000)


class RedisLimits:
    """:class:`LeasedLimits` of one source, held in Redis and timed by its server's clock.

    Holder names are unique per attempt: a name used again within a minute
    counts as one start of the per-minute window.

    Args:
        client: a redis-py client (``decode_responses`` either way). Give it
            a ``socket_timeout``: a call never waits longer than that.
        source: the source's canonical name (no braces).
        policy: the policy in force: its ``concurrency``, ``delay`` and
            ``per_minute`` are sent with every acquire, so the process that
            acquires (the scheduler) decides; nothing of it is kept in Redis.
        lease: seconds a slot stays held without a renewal (> 0); a killed
            holder's slot is free again within this time. Holders renew
            well within it (the keeper every third of it).
        settle: seconds no slot is granted once the source's state in Redis
            is new: on the first acquire ever, and after Redis lost its data
            (a restart without persistence, a flush). By then every holder
            from before has failed a renewal and stopped, or its lease ran
            out. Defaults to ``lease``; 0 trusts that nothing held a slot.
            A new state also counts as an end, so the policy's delay runs
            from its beginning (no end is known, so the latest may have
            been just now).
        prefix: the start of every key.

    Thread-safe (redis-py's client is). Every method makes one round trip;
    each raises ``redis.RedisError`` when Redis cannot be reached or
    answers with an error: the outcome is then unknown (an acquire that
    took a slot holds it at most ``lease`` seconds, unrenewed).
    """

    def __init__(
        self,
        client: redis.Redis,
        source: str,
        policy: RatePolicy,
        *,
        lease: float = 10.0,
        settle: float | None = None,
        prefix: str = PREFIX,
    ) -> None:
        if not source or "{" in source or "}" in source:
            raise ValueError(f"a source name for RedisLimits must be non-empty, without braces: {source!r}")
        if not 0 < lease < math.inf:
            raise ValueError(f"RedisLimits lease must be a finite number of seconds > 0, got {lease!r}")
        settle = lease if settle is None else settle
        if not 0 <= settle < math.inf:
            raise ValueError(f"RedisLimits settle must be a finite number of seconds >= 0, got {settle!r}")
        self.source = source
        self.lease = lease
        self.policy = policy
        self._lease_us = _micros(lease)
        self._settle_us = _micros(settle)
        self._client = client
        base = self._base = f"{prefix}{{{source}}}:"
        self._holders, self._ended = base + "holders", base + "ended"
        self._starts = base + "starts"
        self._keys = [self._holders, self._starts, self._ended, base + "pause", base + "born"]
        self._pause_key = base + "pause"
        self._acquire = load(client, "acquire")
        self._renew = load(client, "renew")
        self._release = load(client, "release")
        self._pause = load(client, "pause")
        self._count = load(client, "count")
        self._held = load(client, "held")

    def keys(self) -> list[str]:
        """Every key this source's limits may use."""
        return list(self._keys)

    def acquire(self, holder: str, now: float) -> Verdict:
        """Take a slot for ``holder`` if the source's limits allow a start now, in one atomic step.

        Expired leases are dropped first (the latest expiry counts as an
        end, for the delay). Granted: ``holder`` holds a lease of
        :attr:`lease` seconds and must renew it; asked again while holding
        it, the lease is renewed and the answer is ``held``. Not granted:
        when to ask again (a free slot is never later than the earliest
        lease's expiry, but a release may come first).
        """
        return self.acquire_each([holder], now)[0]

    def acquire_each(self, holders: Sequence[str], now: float) -> list[Verdict]:
        """:meth:`acquire` for each of ``holders`` in turn, stopping at the first refused; one round trip.

        Returns the verdicts of the holders asked, in order: all granted
        but perhaps the last (the rest of ``holders`` were not asked, and
        hold nothing). Each holder's check and take is one atomic step, as
        :meth:`acquire`'s.
        """
        if not holders:
            return []
        policy = self.policy
        reply = self._acquire(
            keys=self._keys,
            args=[
                self._lease_us,
                policy.concurrency,
                _micros(policy.delay),
                policy.per_minute or 0,
                _micros(WINDOW),
                self._settle_us,
                *holders,
            ],
        )
        verdicts = []
        for granted, wait, reason in cast(list[list[object]], reply):
            at = now if granted else now + cast(int, wait) / 1_000_000
            verdicts.append(Verdict(bool(granted), at, _REASONS[text(reason)]))
        return verdicts

    def renew(self, holder: str, now: float) -> bool:
        """Extend ``holder``'s lease by :attr:`lease` seconds from the server's now.

        False if it holds no lease: it expired (even if no one took the slot
        yet), it was released, or Redis lost it. The holder must then stop:
        its slot may be someone else's.
        """
        return bool(self._renew(keys=[self._holders, self._ended], args=[holder, self._lease_us]))

    def release(self, holder: str, now: float, *, started: bool = True, announce: str | None = None) -> bool:
        """``holder``'s download ended: free its slot; the delay counts from the server's now.

        Returns whether it still held its lease; the end counts either way.
        ``started=False`` gives an unused grant back (the download was
        cancelled before it began): no end, and its start leaves the
        per-minute window. ``announce``: a channel (:func:`ended_channel`)
        on which ``holder`` is published, in the same atomic step, once the
        slot is free.
        """
        keys = [self._holders, self._ended, self._starts]
        args = [holder, 1 if started else 0, *([] if announce is None else [announce])]
        return bool(self._release(keys=keys, args=args))

    def pause_until(self, when: float, now: float) -> None:
        """Allow no start before ``when`` (``when - now`` seconds from the server's now); a later one wins."""
        if when > now:
            self._pause(keys=[self._pause_key], args=[_micros(when - now)])

    def set_policy(self, policy: RatePolicy) -> None:
        """Judge every later acquire by ``policy``; held leases keep their slots."""
        self.policy = policy

    def waited(self, download_id: str) -> tuple[int, float]:
        """The Retry-After pauses ``download_id`` waited out on this source so far: (how many, seconds)."""
        rounds, total = self._client.hmget(self._waited_key(download_id), ["rounds", "total"])
        return int(rounds or 0), float(total or 0.0)

    def wait_more(self, download_id: str, rounds: int, total: float) -> None:
        """Keep what :meth:`waited` answers for ``download_id`` (for a day: its counts, not a limit)."""
        key = self._waited_key(download_id)
        pipe = self._client.pipeline()
        pipe.hset(key, mapping={"rounds": rounds, "total": total})
        pipe.expire(key, 86400)
        pipe.execute()

    def _waited_key(self, download_id: str) -> str:
        return f"{self._base}waited:{download_id}"

    def running(self) -> int:
        """Holders with an unexpired lease now."""
        return int(self._count(keys=[self._holders]))

    def held(self, holders: list[str]) -> list[bool]:
        """Whether each of ``holders`` holds an unexpired lease now (a read: nothing changes)."""
        if not holders:
            return []
        return [bool(answer) for answer in cast(list[int], self._held(keys=[self._holders], args=holders))]
