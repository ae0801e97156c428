"""The leader lease: which one process of a cluster runs the scheduler.

One key holds the leader's name and expires with its lease, timed by the
Redis server's clock. A process claims it when no one holds it, renews it
well within its ``ttl`` while it leads, and releases it when it stops; if it
dies, another process's claim succeeds within ``ttl`` of its last renewal.
Each new leadership gets a *term*, a number above every earlier term (even
after Redis lost its keys), which the scheduler logs. No write carries it:
what keeps a replaced leader that has not yet learnt it harmless is that
every slot is taken by a script in Redis and every state change is a
conditional write (docs/cluster.md, *The leader lease*).
"""

from __future__ import annotations

import math

import redis

from headwater._cluster._scripts import load, text

#: The key prefix of leases, unless the caller names another.
PREFIX = "headwater:leader:"


class LeaderLease:
    """One process's claim on leading ``name``.

    Args:
        client: a redis-py client (with a ``socket_timeout``).
        holder: this process's name, unique in the cluster (host, pid, a random part).
        name: what is led (``"scheduler"``).
        ttl: seconds the lease lasts from its last claim or renewal (> 0);
            renew it every third of that or so.
        prefix: the start of both keys (``<prefix>{<name>}`` and ``...:term``).

    Thread-safe. Each method makes one round trip and raises
    ``redis.RedisError`` when Redis cannot be reached: a leader that cannot
    renew must act as if it lost the lease once ``ttl`` has passed since its
    last renewal.
    """

    def __init__(
        self,
        client: redis.Redis,
        holder: str,
        name: str = "scheduler",
        *,
        ttl: float = 10.0,
        prefix: str = PREFIX,
    ) -> None:
        if not holder:
            raise ValueError("a LeaderLease holder must be a non-empty name")
        if not 0 < ttl < math.inf:
            raise ValueError(f"LeaderLease ttl must be a finite number of seconds > 0, got {ttl!r}")
        self.holder = holder
        self.ttl = ttl
        self._ttl_ms = math.ceil(ttl * 1000)
        self._client = client
        self._key = f"{prefix}{{{name}}}"
        self._term_key = self._key + ":term"
        self._claim = load(client, "leader_claim")
        self._renew = load(client, "leader_renew")
        self._release = load(client, "leader_release")

    def keys(self) -> list[str]:
        """The keys of this lease."""
        return [self._key, self._term_key]

    def claim(self) -> int | None:
        """Lead if no one does (or go on leading); the term this holder leads in, or None if another leads."""
        term = int(self._claim(keys=[self._key, self._term_key], args=[self.holder, self._ttl_ms]))
        return term or None

    def renew(self) -> bool:
        """Extend the lease by ``ttl`` from now if this holder still leads; False if it does not."""
        return bool(self._renew(keys=[self._key], args=[self.holder, self._ttl_ms]))

    def release(self) -> bool:
        """Stop leading now, if this holder leads (another may claim at once); whether it led."""
        return bool(self._release(keys=[self._key], args=[self.holder]))

    def leader(self) -> str | None:
        """Who leads now, or None."""
        value = self._client.get(self._key)
        return None if value is None else text(value)
