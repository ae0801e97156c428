"""The leader lease (headwater._cluster._leader): one scheduler in a cluster, and a takeover when it dies.

Against the real Redis on 127.0.0.1:6379 (skipped, saying so, when it is not
reachable), each test under a key prefix of its own; the would-be leaders are
real processes behind a barrier.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis
from cluster_child import claim, expect, start

from headwater._cluster._leader import LeaderLease

#: The fixtures redis_client and key_prefix.
pytest_plugins = ["cluster_fixtures"]

SPAWN = multiprocessing.get_context("spawn")


def test_of_would_be_leaders_claiming_at_once_exactly_one_wins(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    barrier = SPAWN.Barrier(4)
    processes = [
        SPAWN.Process(target=claim, args=(6379, key_prefix, barrier, f"p{n}", 30.0)) for n in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    claims = dict(value.decode().split() for value in redis_client.lrange(key_prefix + "claims", 0, -1))
    winners = [name for name, term in claims.items() if term != "0"]
    assert len(claims) == 4 and len(winners) == 1
    assert LeaderLease(redis_client, "anyone", prefix=key_prefix).leader() == winners[0]


def test_when_the_leader_is_killed_another_takes_over_within_the_lease(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    ttl = 1.0
    first = start("lead", "6379", key_prefix, "first", str(ttl))
    try:
        first_term = int(expect(first, "LEADING").split()[1])
        second = LeaderLease(redis_client, "second", ttl=ttl, prefix=key_prefix)
        assert second.claim() is None  # the first renews: no takeover while it lives
        first.kill()
        first.wait()
        killed = time.monotonic()
        remaining = redis_client.pttl(second.keys()[0]) / 1000
        assert 0 < remaining <= ttl  # the server ends the dead leader's lease by then
        term = None
        while term is None and time.monotonic() < killed + 10:  # a hang guard
            time.sleep(ttl / 20)
            term = second.claim()
        assert term is not None and term > first_term
        assert second.leader() == "second"
    finally:
        first.kill()
        first.wait()


def test_only_the_leader_renews_or_releases_and_claiming_again_keeps_the_term(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    one = LeaderLease(redis_client, "one", ttl=30.0, prefix=key_prefix)
    two = LeaderLease(redis_client, "two", ttl=30.0, prefix=key_prefix)
    term = one.claim()
    assert term is not None
    assert one.claim() == term  # still leading: same term
    assert two.renew() is False and two.release() is False
    assert one.leader() == "one"
    assert one.renew() is True
    assert one.release() is True and one.leader() is None
    later = two.claim()
    assert later is not None and later > term


def test_a_lapsed_leader_cannot_renew_and_a_new_term_follows_even_after_the_keys_are_lost(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    one = LeaderLease(redis_client, "one", ttl=0.2, prefix=key_prefix)
    term = one.claim()
    assert term is not None
    time.sleep(0.3)
    assert one.renew() is False
    redis_client.delete(*one.keys())  # what a restart of a Redis without persistence does
    two = LeaderLease(redis_client, "two", ttl=0.2, prefix=key_prefix)
    later = two.claim()
    assert later is not None and later > term  # a write fenced by the old term is still refused


@pytest.mark.parametrize(
    ("holder", "ttl", "message"),
    [("", 1.0, "holder must be a non-empty name"), ("a", 0.0, "ttl must be a finite number of seconds > 0")],
)
def test_bad_arguments_are_refused_saying_which(
    redis_client: redis.Redis, holder: str, ttl: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LeaderLease(redis_client, holder, ttl=ttl)
