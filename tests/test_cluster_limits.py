"""Each source's limits in Redis (headwater._cluster): leases, the server's clock, many processes.

Against the real Redis on 127.0.0.1:6379 (skipped, saying so, when it is not
reachable), each test under a key prefix of its own; racing holders are real
processes behind a barrier, and they count themselves.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from cluster_child import (
    expect,
    free_port,
    limits,
    paced,
    private_redis,
    race,
    start,
    take_all,
    try_once,
    wait_for,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from headwater import RatePolicy
from headwater._cluster._keeper import LeaseKeeper
from headwater._cluster._limits import RedisLimits, ended_channel

#: The fixtures redis_client and key_prefix.
pytest_plugins = ["cluster_fixtures"]

SPAWN = multiprocessing.get_context("spawn")


def run_processes(target: Callable[..., None], argsets: list[tuple[object, ...]]) -> None:
    """Start one spawned process per argument tuple and wait for all; each must exit 0."""
    processes = [SPAWN.Process(target=target, args=args) for args in argsets]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0, f"a racer ended with exit code {process.exitcode}"


# -- one process: what each script answers ----------------------------------------------


def test_a_slot_is_granted_up_to_the_concurrency_then_at_the_earliest_expiry(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(concurrency=2), lease=5.0, settle=0, prefix=key_prefix)
    assert found.acquire("a:1", 100.0).granted
    assert found.acquire("b:1", 100.0).granted
    full = found.acquire("c:1", 100.0)
    assert (full.granted, full.reason) == (False, "concurrency")
    assert 100.0 < full.at <= 105.0  # a's lease runs out by then, even if no one releases it
    assert found.running() == 2
    assert found.release("a:1", 100.0) is True
    assert found.acquire("c:1", 100.0).granted


def test_acquire_each_grants_in_turn_and_asks_no_further_once_one_is_refused(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(concurrency=3), lease=5.0, settle=0, prefix=key_prefix)
    assert found.acquire("a:1", 0.0).granted
    verdicts = found.acquire_each(["a:1", "b:1", "c:1", "d:1", "e:1"], 100.0)
    assert [(v.granted, v.reason) for v in verdicts] == [
        (True, "held"),
        (True, "granted"),
        (True, "granted"),
        (False, "concurrency"),
    ]
    assert 100.0 < verdicts[-1].at <= 105.0
    assert found.held(["a:1", "b:1", "c:1", "d:1", "e:1"]) == [True, True, True, False, False]
    assert found.acquire_each([], 0.0) == []


def test_asking_again_while_holding_renews_the_same_lease_and_takes_no_second_slot(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(concurrency=2), lease=5.0, settle=0, prefix=key_prefix)
    assert found.acquire("a:1", 0.0).reason == "granted"
    again = found.acquire("a:1", 0.0)  # a retried call whose first reply was lost
    assert (again.granted, again.reason) == (True, "held")
    assert found.running() == 1
    assert found.acquire("b:1", 0.0).granted


def test_an_expired_lease_cannot_be_renewed_even_if_no_one_took_its_slot(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(), lease=0.2, settle=0, prefix=key_prefix)
    assert found.acquire("a:1", 0.0).granted
    assert found.renew("a:1", 0.0) is True
    time.sleep(0.3)
    assert found.renew("a:1", 0.0) is False
    assert found.release("a:1", 0.0) is False  # its late release says it had lost the lease
    assert found.renew("never:1", 0.0) is False


def test_held_tells_which_holders_hold_an_unexpired_lease_and_changes_nothing(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(concurrency=3), lease=0.3, settle=0, prefix=key_prefix)
    assert found.acquire("a:1", 0.0).granted
    assert found.acquire("b:1", 0.0).granted
    assert found.release("b:1", 0.0)
    assert found.held(["a:1", "b:1", "never:1"]) == [True, False, False]
    time.sleep(0.4)
    assert found.held(["a:1"]) == [False]  # expired, though no one took the slot
    assert found.held([]) == []
    assert redis_client.zscore(f"{key_prefix}{{s}}:holders", "a:1") is not None  # a read: left as it was


def test_the_delay_counts_from_a_lease_that_ran_out_as_from_a_release(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(), lease=0.2, settle=0, prefix=key_prefix)
    assert found.acquire("dead:1", 0.0).granted
    found.set_policy(RatePolicy(delay=30.0))
    time.sleep(0.3)  # its holder never renews nor releases
    verdict = found.acquire("next:1", 0.0)
    assert (verdict.granted, verdict.reason) == (False, "delay")
    assert 29.0 < verdict.at <= 30.0  # the delay runs from the expiry, 0.1 s or more ago


def test_a_new_state_counts_as_an_end_so_the_delay_holds_after_redis_lost_the_last_one(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(delay=30.0), lease=5.0, settle=0, prefix=key_prefix)
    verdict = found.acquire("a:1", 0.0)
    assert (verdict.granted, verdict.reason) == (False, "delay")
    assert 29.0 < verdict.at <= 30.0


def test_a_grant_given_back_unused_is_no_start_of_the_window(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """A download cancelled between its grant and its start leaves the per-minute window as it was."""
    found = RedisLimits(redis_client, "s", RatePolicy(per_minute=1), lease=5.0, settle=0, prefix=key_prefix)
    assert found.acquire("cancelled:1", 0.0).granted
    assert found.release("cancelled:1", 0.0, started=False) is True
    assert found.acquire("next:1", 0.0).granted
    assert found.release("next:1", 0.0) is True
    verdict = found.acquire("third:1", 0.0)
    assert (verdict.granted, verdict.reason) == (False, "per_minute")  # a start that began does count


def test_a_grant_given_back_unused_is_no_end_for_the_delay(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(), lease=5.0, settle=0, prefix=key_prefix)
    assert found.acquire("cancelled:1", time.monotonic()).granted
    found.set_policy(RatePolicy(delay=30.0))
    before = found.acquire("probe:1", time.monotonic())  # the delay runs from the state's beginning
    time.sleep(0.3)
    found.release("cancelled:1", time.monotonic(), started=False)
    after = found.acquire("probe:1", time.monotonic())
    assert before.reason == after.reason == "delay"
    assert abs(after.at - before.at) < 0.1  # still from the beginning, not from the give-back


def test_a_release_announces_its_holder_once_the_slot_is_free_and_only_when_asked(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(concurrency=1), lease=5.0, settle=0, prefix=key_prefix)
    channel = ended_channel(key_prefix)
    heard: list[object] = []

    def announced(message: dict[str, object]) -> None:  # the slot is free by the time it is heard
        heard.append((message["data"], found.acquire("probe:1", 0.0).granted))
        found.release("probe:1", 0.0, started=False)

    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(**{channel: announced})
    try:
        while pubsub.get_message(timeout=0.1) is not None or not pubsub.subscribed:
            pass
        assert found.acquire("a:1", 0.0).granted
        assert found.release("a:1", 0.0, started=False) is True  # not asked to announce
        assert found.acquire("b:1", 0.0).granted
        assert found.release("b:1", 0.0, announce=channel) is True
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            pubsub.get_message(timeout=0.1)
    finally:
        pubsub.close()
    assert heard == [(b"b:1", True)]


def test_a_new_policy_judges_the_next_acquire(redis_client: redis.Redis, key_prefix: str) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(concurrency=1), lease=5.0, settle=0, prefix=key_prefix)
    assert found.acquire("a:1", 0.0).granted
    assert not found.acquire("b:1", 0.0).granted
    found.set_policy(RatePolicy(concurrency=2))
    assert found.acquire("b:1", 0.0).granted


def test_a_later_pause_wins_and_an_earlier_one_changes_nothing(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    found = RedisLimits(redis_client, "s", RatePolicy(), lease=5.0, settle=0, prefix=key_prefix)
    found.pause_until(50.0, 0.0)
    found.pause_until(10.0, 0.0)
    verdict = found.acquire("a:1", 0.0)
    assert (verdict.granted, verdict.reason) == (False, "paused")
    assert 49.0 < verdict.at <= 50.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease": 0.0}, "lease must be a finite number of seconds > 0, got 0.0"),
        ({"lease": math.inf}, "lease must be a finite number of seconds > 0, got inf"),
        ({"settle": -1.0}, "settle must be a finite number of seconds >= 0, got -1.0"),
        ({"source": "a{b}"}, "non-empty, without braces: 'a{b}'"),
    ],
)
def test_bad_arguments_are_refused_saying_which(
    redis_client: redis.Redis, key_prefix: str, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"source": "s", "lease": 5.0, "settle": None, **kwargs}
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        RedisLimits(redis_client, args.pop("source"), RatePolicy(), prefix=key_prefix, **args)  # type: ignore[arg-type]


# -- many processes ------------------------------------------------------------------------


def test_concurrency_is_never_exceeded_by_threads_of_several_processes(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    policy = RatePolicy(concurrency=2)
    barrier = SPAWN.Barrier(3)
    run_processes(race, [(6379, key_prefix, policy, barrier, f"p{n}", 4, 25, 0.002) for n in range(3)])
    seen = [int(value) for value in redis_client.lrange(key_prefix + "seen", 0, -1)]
    assert len(seen) == 3 * 4 * 25
    assert max(seen) == 2  # the limit was reached, and never passed


def test_a_per_minute_cap_holds_across_processes(redis_client: redis.Redis, key_prefix: str) -> None:
    policy = RatePolicy(concurrency=100, per_minute=5)
    barrier = SPAWN.Barrier(3)
    run_processes(take_all, [(6379, key_prefix, policy, barrier, f"p{n}", 6) for n in range(3)])
    reasons = [value.decode().split()[1] for value in redis_client.lrange(key_prefix + "verdicts", 0, -1)]
    assert sorted(set(reasons)) == ["granted", "per_minute"]
    assert reasons.count("granted") == 5


def test_the_delay_holds_across_processes(redis_client: redis.Redis, key_prefix: str) -> None:
    policy = RatePolicy(concurrency=1, delay=0.1)
    barrier = SPAWN.Barrier(3)
    run_processes(paced, [(6379, key_prefix, policy, barrier, f"p{n}", 4) for n in range(3)])
    spans = sorted(
        tuple(map(float, value.split())) for value in redis_client.lrange(key_prefix + "spans", 0, -1)
    )
    assert len(spans) == 12
    for (_, ended), (began, _) in zip(spans, spans[1:], strict=False):
        assert began >= ended + 0.1, f"a start {began - ended:.4f} s after the last end"


def test_a_retry_after_pause_is_seen_by_every_process(redis_client: redis.Redis, key_prefix: str) -> None:
    found = RedisLimits(
        redis_client, "paused", RatePolicy(concurrency=5), lease=5.0, settle=0, prefix=key_prefix
    )
    found.pause_until(time.monotonic() + 30.0, time.monotonic())
    barrier = SPAWN.Barrier(3)
    run_processes(try_once, [(6379, key_prefix, barrier, f"p{n}") for n in range(3)])
    answers = [value.decode().split() for value in redis_client.lrange(key_prefix + "answers", 0, -1)]
    assert [reason for reason, _ in answers] == ["paused"] * 3
    assert all(0 < float(wait) <= 30.0 for _, wait in answers)


# -- holders that die, freeze, or lose Redis ----------------------------------------------------


def test_a_killed_holder_frees_its_slot_within_the_lease_under_steady_traffic(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Dramatiq's counter keeps a dead holder's slot while others come and go; a lease does not."""
    lease = 1.0
    holder = start("hold", "6379", key_prefix, "s", "doomed:1", str(lease))
    expect(holder, "HELD")
    found = limits(6379, key_prefix, "s", RatePolicy(concurrency=2), lease)
    holder.kill()
    holder.wait()
    killed = time.monotonic()
    # Steady traffic on the other slot while the dead holder's lease runs out: "second" takes
    # and gives back the free slot, and "third" asks while second holds it.
    verdicts = []
    deadline = killed + 10  # a hang guard, far past the lease
    while time.monotonic() < deadline:
        assert found.acquire(f"second:{len(verdicts)}", time.monotonic()).granted
        verdicts.append(found.acquire("third:1", time.monotonic()))
        found.release(f"second:{len(verdicts) - 1}", time.monotonic())
        if verdicts[-1].granted:
            break
        time.sleep(0.01)
    assert verdicts[-1].granted, "the dead holder's slot never came free"
    assert len(verdicts) > 1, "the dead holder's lease had run out before the traffic began"
    assert verdicts[0].reason == "concurrency"
    assert verdicts[0].at - killed <= lease  # the server said the slot is free by then
    assert found.running() == 1  # third holds the slot the dead holder held


def test_a_frozen_holder_fails_its_renewal_after_another_took_its_slot(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    lease = 0.6
    frozen = start("hold", "6379", key_prefix, "s", "frozen:1", str(lease))
    try:
        expect(frozen, "HELD")
        frozen.send_signal(signal.SIGSTOP)
        found = limits(6379, key_prefix, "s", RatePolicy(concurrency=1), lease)
        wait_for(found, "second:1")  # granted once the frozen holder's lease ran out
        frozen.send_signal(signal.SIGCONT)
        expect(frozen, "LOST")
        expect(frozen, "RELEASED False")  # its late release is told it no longer held
        assert found.renew("second:1", time.monotonic()) is True
        assert found.running() == 1
    finally:
        frozen.kill()
        frozen.wait()


def test_state_lost_mid_run_grants_nothing_until_every_old_holder_has_stopped(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Redis here keeps nothing on disk: a restart is a flush of every key, as done here."""
    lease = 0.6
    found = RedisLimits(
        redis_client, "s", RatePolicy(concurrency=1), lease=lease, settle=lease, prefix=key_prefix
    )
    first = found.acquire("old:1", 0.0)
    assert (first.granted, first.reason) == (False, "settling")  # a state never seen before settles too
    wait_for(found, "old:1")
    lost_at: list[float] = []
    keeper = LeaseKeeper(lease / 4)
    keeper.keep("old:1", lambda: found.renew("old:1", 0.0), lease, lambda: lost_at.append(time.monotonic()))
    try:
        redis_client.delete(*found.keys())  # what a restart of a Redis without persistence does to them
        settling = found.acquire("new:1", 0.0)
        assert (settling.granted, settling.reason) == (False, "settling")
        wait_for(found, "new:1")
        granted_at = time.monotonic()
    finally:
        keeper.close()
    assert lost_at and lost_at[0] < granted_at  # the old holder had stopped before the new one began


def test_a_restarted_redis_loses_the_slots_and_the_scripts_yet_holders_learn_it(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: this test restarts a Redis of its own")
    port = free_port()
    lease = 0.6
    lost = threading.Event()
    with private_redis(tmp_path, port):
        found = limits(port, "hwtest:", "s", RatePolicy(concurrency=1), lease, settle=lease)
        wait_for(found, "old:1")
        keeper = LeaseKeeper(lease / 4)
        keeper.keep("old:1", lambda: found.renew("old:1", 0.0), lease, lost.set)
    try:
        with private_redis(tmp_path, port):  # the same port, a new server: no keys, no scripts
            assert lost.wait(10)
            verdict = found.acquire("new:1", 0.0)  # the script is sent again after NOSCRIPT
            assert (verdict.granted, verdict.reason) == (False, "settling")
            assert wait_for(found, "new:1").granted
    finally:
        keeper.close()


def test_a_lease_counts_as_lost_once_redis_has_been_unreachable_for_its_length(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    nowhere = redis.Redis("127.0.0.1", free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    unreachable = RedisLimits(nowhere, "s", RatePolicy(), lease=0.5, prefix=key_prefix)
    lost = threading.Event()
    keeper = LeaseKeeper(0.05)
    kept_at = time.monotonic()
    keeper.keep("h:1", lambda: unreachable.renew("h:1", 0.0), 0.5, lost.set)
    try:
        assert lost.wait(10)
        assert time.monotonic() - kept_at >= 0.5  # not before the lease could have run out
        assert keeper.kept() == 0
    finally:
        keeper.close()


def test_a_lease_counts_as_lost_at_its_length_while_its_renewals_hang() -> None:
    """A renewal that never answers delays no loss: a lease is lost once it ran its length unrenewed.

    A Redis that accepts and does not answer (hung, or a network dropping
    packets) holds each renewal for the client's timeout (5 s), one lease
    after the other. Three leases here, every renewal blocked until the test
    ends. Before, a loss was judged only once a renewal returned: with 10 s
    leases and 5 s timeouts a worker stopped its downloads 1.3 to 5.2 lease
    times after its last renewal (1 to 8 leases); here, never.
    """
    hung = threading.Event()
    gone = threading.Semaphore(0)
    lease = 0.6
    kept_at: dict[int, float] = {}
    lost_at: dict[int, float] = {}

    def renew() -> bool:
        hung.wait(30)
        raise redis.TimeoutError("Timeout reading from socket")

    def lost(i: int) -> None:
        lost_at[i] = time.monotonic()
        gone.release()

    keeper = LeaseKeeper(lease / 3)
    try:
        for i in range(3):
            kept_at[i] = time.monotonic()
            keeper.keep(i, renew, lease, functools.partial(lost, i))
        assert all(gone.acquire(timeout=10) for _ in range(3)), f"lost: {sorted(lost_at)}"
    finally:
        hung.set()
        keeper.close(10)
    late = {i: round(lost_at[i] - kept_at[i], 3) for i in kept_at}
    assert all(lease <= took < lease + 0.5 for took in late.values()), late
    assert keeper.kept() == 0
