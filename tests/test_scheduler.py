"""The scheduling rules, on the clock's values alone: no threads, no engine.

The unit tests pin each rule; the property test drives a :class:`Scheduler`
through any sequence of events and checks every decision against the rules
(and against a plain model of the queue's order), then that everything
queued still starts once the events stop.
"""

from __future__ import annotations

import copy
from collections import deque

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import ManualClock, RatePolicy
from headwater._scheduler import WINDOW, Decision, Scheduler


def decide(scheduler: Scheduler[str], now: float, most: int | None = None) -> Decision[str]:
    return scheduler.decide(now, most)


# -- each rule ------------------------------------------------------------------


def test_first_in_first_out_up_to_the_concurrency() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=2))
    for item in "abcd":
        s.put(item)
    assert decide(s, 0.0) == Decision(("a", "b"), None)  # full: only an end can start more
    assert (s.running, s.queued) == (2, 2)
    s.ended(1.0)
    assert decide(s, 1.0) == Decision(("c",), None)
    s.ended(2.0)
    s.ended(2.0)
    assert decide(s, 2.0) == Decision(("d",), None)
    assert decide(s, 3.0) == Decision((), None)


def test_most_limits_one_answer_and_asks_to_come_back_at_once() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=3))
    for item in "abc":
        s.put(item)
    assert decide(s, 5.0, most=1) == Decision(("a",), 5.0)
    assert decide(s, 5.0) == Decision(("b", "c"), None)


def test_the_delay_runs_from_the_last_end_on_the_manual_clock() -> None:
    clock = ManualClock(start=100.0)
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=1, delay=5.0))
    s.put("a")
    s.put("b")
    assert decide(s, clock.now()).start == ("a",)
    clock.advance(2)
    s.ended(clock.now())  # 102
    assert decide(s, clock.now()) == Decision((), 107.0)
    clock.advance(4.5)
    assert decide(s, clock.now()) == Decision((), 107.0)
    clock.advance(0.5)
    assert decide(s, clock.now()) == Decision(("b",), None)


def test_per_minute_counts_starts_in_any_window() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=5, per_minute=2))
    for item in "abcd":
        s.put(item)
    assert decide(s, 0.0) == Decision(("a", "b"), WINDOW)
    s.ended(1.0)
    s.ended(1.0)
    assert decide(s, 59.9) == Decision((), WINDOW)
    assert decide(s, WINDOW) == Decision(("c", "d"), None)


def test_a_dropped_start_frees_its_slot_and_its_place_in_the_window() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=1, per_minute=1, delay=3.0))
    s.put("cancelled")
    s.put("b")
    assert decide(s, 0.0).start == ("cancelled",)
    s.dropped(0.0)
    assert (s.running, decide(s, 0.0).start) == (0, ("b",))  # no end happened: no delay either


def test_retry_after_pauses_and_the_later_pause_wins() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=2))
    s.put("a")
    s.retry_after(30.0)
    s.retry_after(10.0)
    assert decide(s, 0.0) == Decision((), 30.0)
    assert decide(s, 30.0).start == ("a",)


def test_a_retry_waits_its_backoff_apart_then_goes_to_the_front() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=1))
    s.put_later("retry-late", 20.0)
    s.put_later("retry", 10.0)
    assert decide(s, 0.0) == Decision((), 10.0)  # only retries wait: ask at the first one's due time
    s.put("new")
    assert decide(s, 0.0).start == ("new",)  # the queue does not wait for retries in backoff
    s.ended(1.0)
    s.put("newer")
    assert decide(s, 25.0).start == ("retry",)  # both due: earliest first, before the queue
    s.ended(25.0)
    assert decide(s, 25.0).start == ("retry-late",)
    s.ended(25.0)
    assert decide(s, 25.0).start == ("newer",)


def test_put_front_keeps_its_place() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy())
    s.put("b")
    s.put_front("a")
    assert decide(s, 0.0).start == ("a",)


def test_pause_starts_nothing_until_resume() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=2))
    s.pause()
    s.put("a")
    assert (decide(s, 0.0), s.paused, s.queued) == (Decision((), None), True, 1)
    s.resume()
    assert decide(s, 0.0).start == ("a",)


def test_a_lowered_concurrency_starts_nothing_until_fewer_run() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=3))
    for item in "abcd":
        s.put(item)
    assert len(decide(s, 0.0).start) == 3
    s.set_policy(RatePolicy(concurrency=1))
    s.ended(1.0)
    assert decide(s, 1.0).start == ()
    s.ended(1.0)
    assert decide(s, 1.0).start == ()
    s.ended(1.0)
    assert decide(s, 1.0).start == ("d",)


def test_a_cap_set_later_counts_from_then_on() -> None:
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=9))
    for item in "abcd":
        s.put(item)
    assert decide(s, 0.0, most=2).start == ("a", "b")
    s.set_policy(RatePolicy(concurrency=9, per_minute=1))
    assert decide(s, 0.0) == Decision(("c",), WINDOW)


# -- any sequence of events ---------------------------------------------------------

POLICIES = st.builds(
    RatePolicy,
    concurrency=st.integers(1, 3),
    delay=st.sampled_from([0.0, 0.5, 2.0]),
    per_minute=st.sampled_from([None, 1, 2, 5]),
)

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("put")),
        st.tuples(st.just("front")),
        st.tuples(st.just("later"), st.sampled_from([0.0, 1.0, 7.5, 90.0])),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 1.0, 3.0, 30.0, 61.0])),
        st.tuples(st.just("decide"), st.sampled_from([None, 1, 2])),
        st.tuples(st.just("drop_first")),
        st.tuples(st.just("end"), st.integers(0, 7)),
        st.tuples(st.just("pause")),
        st.tuples(st.just("resume")),
        st.tuples(st.just("retry_after"), st.sampled_from([0.0, 2.0, 45.0])),
        st.tuples(st.just("policy"), POLICIES),
    ),
    max_size=60,
)


@attrs.define
class Checked:
    """The scheduler under test and what its decisions must respect."""

    scheduler: Scheduler[str]
    policy: RatePolicy
    now: float = 0.0
    made: int = 0
    queue: deque[str] = attrs.field(factory=deque)  # the order the rules say items start in
    later: list[tuple[float, int, str]] = attrs.field(factory=list)
    running: list[str] = attrs.field(factory=list)
    started: dict[str, float] = attrs.field(factory=dict)
    dropped: set[str] = attrs.field(factory=set)
    last_end: float | None = None
    resume_at: float = float("-inf")
    paused: bool = False
    starts_under_policy: list[float] = attrs.field(factory=list)  # since the policy last changed
    last: Decision[str] | None = None

    def item(self) -> str:
        self.made += 1
        return f"i{self.made}"

    def apply(self, event: tuple[object, ...]) -> None:
        kind, s = event[0], self.scheduler
        last, self.last = self.last, None  # a drop follows the decide that gave the item out
        if kind == "put":
            item = self.item()
            s.put(item)
            self.queue.append(item)
        elif kind == "front":
            item = self.item()
            s.put_front(item)
            self.queue.appendleft(item)
        elif kind == "later":
            assert isinstance(event[1], float)
            item = self.item()
            s.put_later(item, self.now + event[1])
            self.later.append((self.now + event[1], self.made, item))
        elif kind == "advance":
            assert isinstance(event[1], float)
            self.now += event[1]
        elif kind == "decide":
            assert event[1] is None or isinstance(event[1], int)
            self.decide(event[1])
        elif kind == "drop_first":
            if last is not None and last.start:
                item = last.start[0]
                s.dropped(self.started.pop(item))
                self.running.remove(item)
                self.dropped.add(item)
                if self.policy.per_minute is not None:
                    self.starts_under_policy.remove(self.now)
        elif kind == "end":
            assert isinstance(event[1], int)
            if self.running:
                self.running.pop(event[1] % len(self.running))
                s.ended(self.now)
                self.last_end = self.now
        elif kind == "pause":
            s.pause()
            self.paused = True
        elif kind == "resume":
            s.resume()
            self.paused = False
        elif kind == "retry_after":
            assert isinstance(event[1], float)
            s.retry_after(self.now + event[1])
            self.resume_at = max(self.resume_at, self.now + event[1])
        elif kind == "policy":
            assert isinstance(event[1], RatePolicy)
            s.set_policy(event[1])
            self.policy = event[1]
            self.starts_under_policy = []

    def decide(self, most: int | None) -> Decision[str]:
        probe = copy.deepcopy(self.scheduler)
        decision = self.scheduler.decide(self.now, most)
        self.last = decision
        self.check(decision, most, probe)
        return decision

    def check(self, decision: Decision[str], most: int | None, probe: Scheduler[str]) -> None:
        """Every rule, for one decision; ``probe`` is the scheduler as it was before it."""
        now, policy = self.now, self.policy
        self.later.sort()
        while self.later and self.later[0][0] <= now:  # due retries go to the front, earliest first
            due = [self.later.pop(0)[2]]
            while self.later and self.later[0][0] <= now:
                due.append(self.later.pop(0)[2])
            self.queue.extendleft(reversed(due))
        expected = [self.queue[i] for i in range(len(decision.start))]
        assert list(decision.start) == expected, "not in the order the rules say"
        for item in decision.start:
            self.queue.popleft()
            self.started[item] = now
            self.running.append(item)
        if decision.start:
            assert not self.paused, "started while paused"
            assert now >= self.resume_at, "started during a Retry-After pause"
            assert len(self.running) <= policy.concurrency, "more running than the concurrency"
            assert most is None or len(decision.start) <= most
            if self.last_end is not None:
                assert now >= self.last_end + policy.delay, "started within the delay of the last end"
            if policy.per_minute is not None:
                self.starts_under_policy += [now] * len(decision.start)
                in_window = [t for t in self.starts_under_policy if t > now - WINDOW]
                assert len(in_window) <= policy.per_minute, "more starts in a window than per_minute"
        assert (self.scheduler.running, self.scheduler.queued) == (
            len(self.running),
            len(self.queue) + len(self.later),
        )
        if decision.start or not (self.queue or self.later):
            return
        if decision.wake_at is None:  # only an event can help: no time passing does
            assert probe.decide(now + 10 * WINDOW + 1000, most).start == ()
            return
        assert decision.wake_at > now
        midway = copy.deepcopy(probe)
        assert midway.decide((now + decision.wake_at) / 2, most).start == (), "could start before wake_at"
        assert probe.decide(decision.wake_at, most).start != (), "nothing starts at wake_at"


@given(policy=POLICIES, events=EVENTS)
def test_the_rules_hold_for_any_sequence_of_events(
    policy: RatePolicy, events: list[tuple[object, ...]]
) -> None:
    checked = Checked(Scheduler(policy), policy)
    for event in events:
        checked.apply(event)
    # The events stop: resume, let everything end, and follow wake_at. All that is queued starts, once.
    checked.apply(("resume",))
    for _ in range(4 * checked.made + 10):
        while checked.running:
            checked.apply(("end", 0))
        decision = checked.decide(None)
        if not decision.start:
            if decision.wake_at is None:
                break
            checked.now = decision.wake_at
    assert checked.scheduler.queued == 0 and not checked.queue and not checked.later
    assert set(checked.started) | checked.dropped == {f"i{n}" for n in range(1, checked.made + 1)}


def test_decide_does_not_let_the_clock_run_backwards_in_the_window() -> None:
    """A start at exactly the window's end is allowed (the arithmetic adds, never subtracts)."""
    s: Scheduler[str] = Scheduler(RatePolicy(concurrency=2, per_minute=1))
    s.put("a")
    s.put("b")
    first = 0.1
    assert decide(s, first).start == ("a",)
    s.ended(first)
    wake = decide(s, first).wake_at
    assert wake == first + WINDOW
    assert decide(s, wake).start == ("b",)


@pytest.mark.parametrize("most", [None, 1])
def test_an_empty_scheduler_waits_for_an_event(most: int | None) -> None:
    assert Scheduler[str](RatePolicy()).decide(0.0, most) == Decision((), None)
