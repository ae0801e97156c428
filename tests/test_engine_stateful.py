"""Stateful property test: concurrent submits, cancels and removes across sources.

A Hypothesis state machine drives a real :class:`Engine` whose three
instrumented sources run on real worker threads with different policies
(``solo``: concurrency 1 and a delay; ``duo``: 2; ``quad``: 4). Jobs that
block stay running until a rule releases them, so a rule that cancels "while
queued" or "while running" does so on purpose: it freezes the source
(:func:`headwater.testing.frozen`), reads the record's state, and cancels in
the same breath, so the engine's threads cannot move the job in between. The
invariants below are checked after every step and again when the engine has
drained (in :meth:`teardown` and the ``drain`` rule).
``docs/regression-suite.md`` lists them and the bugs they catch.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from instrumented import InstrumentedSource

from headwater import Engine, RatePolicy, State, UnknownDownloadError
from headwater.testing import frozen

DELAY = 0.02  # seconds between the end of one ``solo`` download and the next start
POLICIES = {
    "solo": RatePolicy(concurrency=1, delay=DELAY),
    "duo": RatePolicy(concurrency=2),
    "quad": RatePolicy(concurrency=4),
}
ALIASES = {"solo": ("solo_dl",), "duo": ("duo_dl",), "quad": ("quad_dl", "four")}
CANONICAL = {name: src for src, names in ALIASES.items() for name in (src, *names)}
NAMES = sorted(POLICIES)
TOTAL_CONCURRENCY = sum(p.concurrency for p in POLICIES.values())
THREAD_SLACK = 3  # threads that have left their worker but not yet ended
WAIT = 10.0  # seconds any wait may take before the example fails (a hang, not a timing claim)
PROBE_WAIT = 5.0  # seconds a write on one source may take while another source is frozen
BEHAVIOURS = {
    "ok": "ok:{key}",
    "none": "none",
    "raise": "raise",
    "block": "block:{key}",
    "ignore": "ignore-cancel:{key}",
}
HELD = ("block", "ignore")  # behaviours that run until released


log = logging.getLogger("headwater.tests.stateful")
F = TypeVar("F", bound=Callable[..., None])


def logged(step: F) -> F:
    """Log a failed check before raising it.

    A race may fail on one run and not on Hypothesis's replay, which then
    reports a Flaky error; the log (pytest shows it under "Captured log")
    keeps what the first run saw.
    """

    @functools.wraps(step)
    def run(*args: object, **kwargs: object) -> None:
        try:
            step(*args, **kwargs)
        except (AssertionError, TimeoutError) as exc:
            log.error("%s failed: %s", step.__name__, exc)
            raise

    return run  # type: ignore[return-value]


@attrs.define
class Submitted:
    """What the test knows of one submitted job."""

    id: str
    source: str
    behaviour: str
    key: str
    released: bool = False
    terminal: State | None = None  # the first terminal state seen
    cancelled: bool = False  # a cancel or remove of ours moved it to CANCELLED
    never_start: bool = False  # cancelled or removed while QUEUED
    removed: bool = False


class EngineMachine(RuleBasedStateMachine):
    """Random programs of submits, releases, cancels, removes and freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="headwater-stateful-"))
        self.plugins = {n: InstrumentedSource(n, POLICIES[n], ALIASES[n]) for n in NAMES}
        self.engine = Engine(self.tmp / "dest", plugins=self.plugins, idle_timeout=0.05)
        self.jobs: dict[str, Submitted] = {}
        self.counter = 0

    # -- helpers -----------------------------------------------------------------

    def live(self, source: str | None = None) -> list[Submitted]:
        return [j for j in self.jobs.values() if not j.removed and source in (None, j.source)]

    def started_ids(self, source: str) -> set[str]:
        return {e.job_id for e in self.plugins[source].snapshot() if e.kind == "start"}

    def submit_one(self, source: str, behaviour: str) -> Submitted:
        self.counter += 1
        key = f"k{self.counter}"
        rid = self.engine.submit(source, BEHAVIOURS[behaviour].format(key=key))
        job = Submitted(rid, CANONICAL[source], behaviour, key)
        self.jobs[rid] = job
        assert self.engine.get(rid).source == job.source, f"{source!r} did not resolve to {job.source!r}"
        return job

    def cancel_frozen(self, job: Submitted) -> State:
        """Cancel ``job`` with its source frozen, check the answer, return the state it was in."""
        with frozen(self.engine, job.source) as view:
            before = view.state(job.id)
            answer = self.engine.cancel(job.id, source_hint=job.source)
            after = view.state(job.id)
        if before.terminal:
            assert answer is False, f"cancel of a {before.name} job said it cancelled it"
            assert after is before, f"cancel moved a {before.name} record to {after.name}"
        else:
            assert answer is True, f"cancel of a {before.name} job said it had already ended"
            assert after is State.CANCELLED, f"a cancelled {before.name} job is {after.name}"
            job.cancelled = True
            job.never_start = job.never_start or before is State.QUEUED
        return before

    def jobs_in(self, source: str, states: set[State]) -> list[Submitted]:
        """Live jobs of ``source`` in one of ``states``; call with the source frozen."""
        return [j for j in self.live(source) if self.engine.get(j.id).state in states]

    # -- rules -------------------------------------------------------------------

    @rule(source=st.sampled_from(sorted(CANONICAL)), behaviour=st.sampled_from(sorted(BEHAVIOURS)))
    @logged
    def submit(self, source: str, behaviour: str) -> None:
        self.submit_one(source, behaviour)

    @rule(source=st.sampled_from(["duo", "quad_dl"]), count=st.integers(5, 30))
    @logged
    def flood(self, source: str, count: int) -> None:
        """Queue many blocking jobs: threads must stay bounded by the concurrency."""
        for _ in range(count):
            self.submit_one(source, "block")

    @rule(source=st.sampled_from(NAMES), count=st.integers(2, 20))
    @logged
    def cancel_racing_the_worker(self, source: str, count: int) -> None:
        """Submit quick jobs and cancel each one still QUEUED while the worker is starting them."""
        jobs = [self.submit_one(source, "ok") for _ in range(count)]
        for job in jobs:
            with frozen(self.engine, source) as view:
                if view.state(job.id) is State.QUEUED:
                    self.cancel_frozen(job)

    @precondition(lambda self: any(j.behaviour in HELD and not j.released for j in self.live()))
    @rule(data=st.data())
    @logged
    def release(self, data: st.DataObject) -> None:
        held = [j for j in self.live() if j.behaviour in HELD and not j.released]
        job = data.draw(st.sampled_from(held), label="release")
        self.plugins[job.source].release(job.key)
        job.released = True

    def cancel_in(self, data: st.DataObject, states: set[State]) -> None:
        source = data.draw(st.sampled_from([n for n in NAMES if self.live(n)]), label="source")
        # Which jobs are in `states` depends on the threads, so the draw must not:
        # draw an index whatever the candidates are, then pick among them.
        index = data.draw(st.integers(0, 63), label="index")
        with frozen(self.engine, source):
            candidates = self.jobs_in(source, states)
            if candidates:
                before = self.cancel_frozen(candidates[index % len(candidates)])
                event(f"cancel while {before.name}")

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    @logged
    def cancel_before_start(self, data: st.DataObject) -> None:
        self.cancel_in(data, {State.QUEUED})

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    @logged
    def cancel_while_running(self, data: st.DataObject) -> None:
        self.cancel_in(data, {State.RUNNING})

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    @logged
    def cancel_after_end(self, data: st.DataObject) -> None:
        self.cancel_in(data, {State.COMPLETED, State.FAILED, State.CANCELLED})

    @precondition(lambda self: any(j.behaviour == "ignore" and not j.released for j in self.live()))
    @rule(data=st.data())
    @logged
    def cancel_then_land(self, data: st.DataObject) -> None:
        """Cancel a running job that ignores the cancel, then let it land its file."""
        held = [j for j in self.live() if j.behaviour == "ignore" and not j.released]
        job = data.draw(st.sampled_from(held), label="cancel_then_land")
        with frozen(self.engine, job.source) as view:
            running = view.state(job.id) is State.RUNNING
            if running:
                self.cancel_frozen(job)
        event(f"cancel_then_land while {'RUNNING' if running else 'not RUNNING'}")
        self.plugins[job.source].release(job.key)
        job.released = True

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    @logged
    def remove(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.live()), label="remove")
        with frozen(self.engine, job.source) as view:
            before = view.state(job.id)
            final = self.engine.remove(job.id)
        job.removed = True
        event(f"remove while {before.name}")
        if before.terminal:
            assert final.state is before, f"remove of a {before.name} job returned {final.state.name}"
        else:
            assert final.state is State.CANCELLED, f"remove of a {before.name} job left it {final.state.name}"
            job.cancelled = True
            job.never_start = before is State.QUEUED
        with pytest.raises(UnknownDownloadError):
            self.engine.get(job.id)

    @rule(pair=st.permutations(NAMES).map(lambda names: names[:2]))
    @logged
    def another_source_frozen(self, pair: list[str]) -> None:
        """With one source frozen by another thread, the other source still takes writes."""
        held, other = pair
        taken, done = threading.Event(), threading.Event()

        def hold() -> None:
            with frozen(self.engine, held):
                taken.set()
                done.wait(WAIT)

        holder = threading.Thread(target=hold, name="test-freezer")
        holder.start()
        assert taken.wait(WAIT)
        threads, running, queued = self.engine.worker_stats().get(other, (0, 0, 0))
        idle = running < POLICIES[other].concurrency and queued == 0
        outcome: list[Submitted] = []

        def probe() -> None:
            job = self.submit_one(other, "ok")
            self.engine.records(other)
            if idle:  # nothing of `other` is ahead of it: it runs, and its terminal write lands
                self.engine.wait([job.id], timeout=PROBE_WAIT)
            else:  # it may stay queued: cancelling it is the write
                self.cancel_frozen(job)
            outcome.append(job)

        prober = threading.Thread(target=probe, name="test-probe")
        prober.start()
        prober.join(PROBE_WAIT + 1.0)
        finished_while_held = bool(outcome)
        done.set()
        holder.join(WAIT)
        prober.join(WAIT)
        assert finished_while_held, f"with {held!r} frozen, a write on {other!r} did not finish"

    @rule()
    @logged
    def drain(self) -> None:
        self.drain_and_check()

    # -- invariants, after every step -----------------------------------------------

    @invariant()
    @logged
    def records_are_conserved(self) -> None:
        for name in NAMES:
            ids = [r.id for r in self.engine.records(name)]
            assert len(ids) == len(set(ids)), f"{name}: a record is listed twice"
            expected = {j.id for j in self.live(name)}
            assert set(ids) == expected, (
                f"{name}: {len(expected - set(ids))} records lost, {len(set(ids) - expected)} unexpected"
            )

    @invariant()
    @logged
    def states_are_consistent(self) -> None:
        for job in self.live():
            record = self.engine.get(job.id)
            state = record.state
            if job.terminal is not None:
                assert state is job.terminal, f"a {job.terminal.name} record became {state.name}"
            if job.cancelled:
                assert state is State.CANCELLED, f"a cancelled {job.behaviour} job became {state.name}"
            if state.terminal and job.terminal is None:
                job.terminal = state
            if state is State.COMPLETED:
                assert job.behaviour not in ("none", "raise"), f"a {job.behaviour} job COMPLETED"
                assert record.file_path is not None and Path(record.file_path).is_file(), (
                    f"a COMPLETED record's file {record.file_path!r} does not exist"
                )
            if state is State.FAILED:
                assert record.error, "a FAILED record has no error"

    @invariant()
    @logged
    def cancelled_while_queued_never_started(self) -> None:
        for name in NAMES:
            started = self.started_ids(name)
            for job in self.jobs.values():
                if job.source == name and job.never_start:
                    assert job.id not in started, (
                        f"{name}: a job cancelled while QUEUED reached download_impl"
                    )

    @invariant()
    @logged
    def concurrency_is_respected(self) -> None:
        stats = self.engine.worker_stats()
        for name in NAMES:
            limit = POLICIES[name].concurrency
            assert self.plugins[name].peak <= limit, (
                f"{name}: {self.plugins[name].peak} downloads ran at once; the limit is {limit}"
            )
            threads, running, _ = stats.get(name, (0, 0, 0))
            assert threads <= limit and running <= limit, f"{name}: {threads} threads, {running} running"

    @invariant()
    @logged
    def threads_are_bounded(self) -> None:
        alive = [t for t in threading.enumerate() if t.name.startswith("headwater-")]
        queued = sum(q for _, _, q in self.engine.worker_stats().values())
        assert len(alive) <= TOTAL_CONCURRENCY + THREAD_SLACK, (
            f"{len(alive)} worker threads for {queued} queued jobs; the total concurrency is "
            f"{TOTAL_CONCURRENCY}"
        )

    @invariant()
    @logged
    def delay_is_kept(self) -> None:
        last_end: float | None = None
        for seen in self.plugins["solo"].snapshot():
            if seen.kind == "start" and last_end is not None:
                gap = seen.at - last_end
                assert gap >= DELAY, f"solo: a download started {gap * 1000:.1f} ms after the previous end"
            elif seen.kind == "end":
                last_end = seen.at

    # -- draining ------------------------------------------------------------------

    def release_all(self) -> None:
        for job in self.jobs.values():
            if job.behaviour in HELD:
                self.plugins[job.source].release(job.key)  # opens the gate even before the job starts
                job.released = True

    def drain_and_check(self) -> None:
        """Let every job end, then check what only holds at rest."""
        self.release_all()
        live = self.live()
        self.engine.wait([j.id for j in live], timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while any(running or queued for _, running, queued in self.engine.worker_stats().values()):
            assert time.monotonic() < deadline, (
                f"workers still busy after {WAIT} s: {self.engine.worker_stats()}"
            )
            time.sleep(0.002)
        for name, plugin in self.plugins.items():
            events = plugin.snapshot()
            starts = sorted(e.job_id for e in events if e.kind == "start")
            ends = sorted(e.job_id for e in events if e.kind == "end")
            assert starts == ends, f"{name}: a download started and never ended"
            assert len(starts) == len(set(starts)), f"{name}: a job reached download_impl twice"
        for job in self.jobs.values():
            landed = self.plugins[job.source].landed_path(self.engine.dest_dir, job.id)
            if job.removed:
                if job.cancelled:
                    assert not landed.exists(), "a file landed after its download was removed still exists"
                continue
            state = self.engine.get(job.id).state
            assert state.terminal, f"a {job.behaviour} job is still {state.name} after the drain"
            if state is State.CANCELLED:
                if job.behaviour == "ignore" and job.id in self.started_ids(job.source):
                    event("a file landed after its cancel")
                assert not landed.exists(), "a file landed after a cancel still exists"
        self.states_are_consistent()

    @logged
    def teardown(self) -> None:
        try:
            self.drain_and_check()
        finally:
            self.release_all()
            stuck = self.engine.close(timeout=WAIT)
            for thread in threading.enumerate():
                if thread.name.startswith("headwater-"):
                    thread.join(WAIT)
            shutil.rmtree(self.tmp, ignore_errors=True)
        assert not stuck, f"close() left {len(stuck)} downloads running"


# A bound for a hang, not a timing claim: about a second an example, never under ten minutes
# (read when the module is imported, after --hypothesis-profile has been applied).
TestEngineMachine = pytest.mark.timeout(max(600, settings.default.max_examples))(EngineMachine.TestCase)
