"""Stateful property test: concurrent submits, cancels and removes across sources.

A Hypothesis state machine drives a real :class:`Engine` whose three
instrumented sources run on real worker threads with different policies
(``solo``: concurrency 1 and a delay; ``duo``: 2 and two retries; ``quad``: 4
and one retry), on a :class:`~headwater.ManualClock` that only the rules move,
with a SQLite journal the engine is restarted from and whose disk may fill
up (every state commit refused from then on). Jobs that block stay
running until a rule releases them, so a rule that cancels "while queued" or
"while running" does so on purpose: it freezes the source
(:func:`headwater.testing.frozen`), reads the record's state, and cancels in
the same breath, so the engine's threads cannot move the job in between.
Jobs also fail and retry, ask for Retry-After pauses, and run down fallback
chains. The invariants below are checked after every step and again when
the engine has drained (in :meth:`teardown` and the ``drain`` rule).
``docs/regression-suite.md`` lists them and the bugs they catch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from instrumented import Event, InstrumentedSource

from headwater import (
    Engine,
    ManualClock,
    RatePolicy,
    Record,
    SQLiteStore,
    State,
    StoreError,
    UnknownDownloadError,
)
from headwater.testing import frozen

DELAY = 20.0  # seconds of the engine's clock between the end of one ``solo`` download and the next start
PAUSE = 45.0  # the seconds a Retry-After asks for
POLICIES = {
    "solo": RatePolicy(concurrency=1, delay=DELAY),
    "duo": RatePolicy(concurrency=2, retries=2, backoff=10.0),
    "quad": RatePolicy(concurrency=4, retries=1, backoff=5.0),
}
ALIASES = {"solo": ("solo_dl",), "duo": ("duo_dl",), "quad": ("quad_dl", "four")}
CANONICAL = {name: src for src, names in ALIASES.items() for name in (src, *names)}
NAMES = sorted(POLICIES)
TOTAL_CONCURRENCY = sum(p.concurrency for p in POLICIES.values())
THREAD_SLACK = 3  # threads that have left their worker but not yet ended
WAIT = 10.0  # seconds any wait may take before the example fails (a hang, not a timing claim)
PROBE_WAIT = 5.0  # seconds a write on one source may take while another source is frozen
STEP = 10.0  # seconds the clock moves at a time while draining: less than the delay or a pause
PAST = 100.0  # seconds past any delay, backoff or pause
BEHAVIOURS = {
    "ok": "ok:{key}",
    "none": "none",
    "raise": "raise",
    "block": "block:{key}",
    "ignore": "ignore-cancel:{key}",
    "flaky1": "flaky:1:{key}",  # one dropped connection: completes where a retry is allowed
    "flaky3": "flaky:3:{key}",  # three: more than any source's retries
    "retry": f"retry-after:{PAUSE:g}:{{key}}",
    "outside": "outside:{key}",  # returns a file beside the destination: FAILED, and never deleted
}
COMPLETES = {"ok", "block", "ignore", "retry"}  # without cancel or restart; flaky ones by the retries
DROPS = {"flaky1": 1, "flaky3": 3}
HELD = ("block", "ignore", "outside")  # behaviours that run until released
CHAINS = st.permutations(NAMES).flatmap(lambda p: st.sampled_from([tuple(p[:2]), tuple(p)]))


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


class Journal(SQLiteStore):
    """The suite's journal, whose disk can fill up: from then on every state commit fails.

    The engine goes on in memory, and a record whose terminal write the
    store refused stays on its shard as the only copy: then only the
    transition table and each download's own check-and-sets keep a cancel
    standing, which the journal otherwise hides (an ended record leaves its
    shard once committed).
    """

    full = False

    def commit(self, records: Sequence[Record]) -> None:
        if self.full:
            raise StoreError(f"cannot write journal {self.path}: database or disk is full")
        super().commit(records)


@attrs.define
class Submitted:
    """What the test knows of one submitted job."""

    id: str
    source: str  # the first source it was submitted to (canonical name)
    behaviour: str
    key: str
    chain: tuple[str, ...] = ()  # a fallback chain's sources, in order
    failing: frozenset[str] = frozenset()  # the chain's sources whose attempts drop the connection
    released: bool = False
    terminal: State | None = None  # the first terminal state seen
    cancelled: bool = False  # a cancel or remove of ours moved it to CANCELLED
    starts_at_cancel: int | None = None  # cancelled or removed while QUEUED: its starts by then
    removed: bool = False
    interrupted: bool = False  # not ended when the engine restarted: its outcome is not predicted

    def sources(self) -> tuple[str, ...]:
        return self.chain or (self.source,)

    def expected(self) -> tuple[State, str]:
        """The terminal state and source it ends on, if nothing cancels or interrupts it."""
        if self.chain:
            takers = [name for name in self.chain if name not in self.failing]
            return (State.COMPLETED, takers[0]) if takers else (State.FAILED, self.chain[-1])
        drops = DROPS.get(self.behaviour)
        if drops is not None:
            return (State.COMPLETED if drops <= POLICIES[self.source].retries else State.FAILED), self.source
        return (State.COMPLETED if self.behaviour in COMPLETES else State.FAILED), self.source

    def max_starts(self) -> int:
        """How many times it may reach download_impl, if no restart interrupts it."""
        if self.chain:
            return sum(1 + POLICIES[name].retries for name in self.chain)
        if self.behaviour in DROPS:
            return 1 + POLICIES[self.source].retries
        return 2 if self.behaviour == "retry" else 1


class EngineMachine(RuleBasedStateMachine):
    """Random programs of submits, chains, releases, cancels, removes, freezes, clock moves and restarts.

    The seams another runner's profile replaces (tests/test_cluster_stateful.py):
    :meth:`open_engine`, :meth:`make_clock`, :attr:`source` (the plugins' class)
    and :attr:`drain_within`.
    """

    source = InstrumentedSource
    drain_within = WAIT  # seconds a drain may take (a hang, not a timing claim)

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="headwater-stateful-"))
        self.clock = self.make_clock()
        self.plugins = {n: self.source(n, POLICIES[n], ALIASES[n], clock=self.clock) for n in NAMES}
        self.marks = dict.fromkeys(NAMES, 0)  # per source: its events before the last restart
        self.journal: Journal
        self.engine = self.open_engine()
        self.jobs: dict[str, Submitted] = {}
        self.counter = 0

    def make_clock(self) -> ManualClock:
        """The engine's clock, and the plugins' (their events' times)."""
        return ManualClock(start=1e6)  # far from time.monotonic, so a mix-up shows

    def open_engine(self) -> Engine:
        self.journal = Journal(self.tmp / "journal.sqlite3", flush_interval=0.05)
        return Engine(
            self.tmp / "dest", plugins=self.plugins, idle_timeout=0.05, clock=self.clock, store=self.journal
        )

    # -- helpers -----------------------------------------------------------------

    def live(self) -> list[Submitted]:
        return [j for j in self.jobs.values() if not j.removed]

    def starts(self, job_id: str) -> int:
        """How often ``job_id`` has reached download_impl, on any source."""
        return sum(
            1 for p in self.plugins.values() for e in p.snapshot() if e.kind == "start" and e.job_id == job_id
        )

    def since_restart(self, source: str) -> list[Event]:
        return self.plugins[source].snapshot()[self.marks[source] :]

    def open_gate(self, job: Submitted) -> None:
        for name in job.sources():
            self.plugins[name].release(job.key)  # opens the gate even before the job starts
        job.released = True

    def submit_one(self, source: str, behaviour: str) -> Submitted:
        self.counter += 1
        key = f"k{self.counter}"
        rid = self.engine.submit(source, BEHAVIOURS[behaviour].format(key=key))
        job = Submitted(rid, CANONICAL[source], behaviour, key)
        self.jobs[rid] = job
        assert self.engine.get(rid).source == job.source, f"{source!r} did not resolve to {job.source!r}"
        return job

    @contextlib.contextmanager
    def where(self, job: Submitted) -> Iterator[str]:
        """Freeze the source ``job`` is on now (a chain moves it) and give its name."""
        while True:
            source = self.engine.get(job.id).source
            with frozen(self.engine, source) as view:
                if view.get(job.id).source == source:
                    yield source
                    return

    def cancel_frozen(self, job: Submitted) -> State:
        """Cancel ``job`` with its source frozen, check the answer, return the state it was in."""
        with self.where(job) as source:
            before = self.engine.get(job.id).state
            starts = self.starts(job.id)
            answer = self.engine.cancel(job.id, source_hint=source)
            after = self.engine.get(job.id).state
        if before.terminal:
            assert answer is False, f"cancel of a {before.name} job said it cancelled it"
            assert after is before, f"cancel moved a {before.name} record to {after.name}"
        else:
            assert answer is True, f"cancel of a {before.name} job said it had already ended"
            assert after is State.CANCELLED, f"a cancelled {before.name} job is {after.name}"
            job.cancelled = True
            if before is State.QUEUED:
                job.starts_at_cancel = starts
        return before

    def jobs_in(self, source: str, states: set[State]) -> list[Submitted]:
        """Live jobs on ``source`` now in one of ``states``; call with the source frozen."""
        found = []
        for job in self.live():
            record = self.engine.get(job.id)
            if record.source == source and record.state in states:
                found.append(job)
        return found

    # -- rules -------------------------------------------------------------------

    @rule(source=st.sampled_from(sorted(CANONICAL)), behaviour=st.sampled_from(sorted(BEHAVIOURS)))
    @logged
    def submit(self, source: str, behaviour: str) -> None:
        self.submit_one(source, behaviour)

    @rule(
        source=st.sampled_from(sorted(CANONICAL)),
        behaviours=st.lists(st.sampled_from(sorted(BEHAVIOURS)), min_size=2, max_size=6),
    )
    @logged
    def burst(self, source: str, behaviours: list[str]) -> None:
        """Several jobs to one source in one step, queued behind each other (a Retry-After's goes first)."""
        for behaviour in behaviours:
            self.submit_one(source, behaviour)

    @rule(chain=CHAINS, failing=st.frozensets(st.sampled_from(NAMES)), then=st.sampled_from(["ok", "block"]))
    @logged
    def submit_chain(self, chain: tuple[str, ...], failing: frozenset[str], then: str) -> None:
        """A fallback chain whose ``failing`` sources drop the connection; the first other one takes it."""
        self.counter += 1
        key = f"k{self.counter}"
        target = f"fail-on:{'+'.join(sorted(failing)) or '-'}:{BEHAVIOURS[then].format(key=key)}"
        rid = self.engine.submit(list(chain), target)
        self.jobs[rid] = Submitted(rid, chain[0], then, key, chain=chain, failing=failing)

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
        self.open_gate(data.draw(st.sampled_from(held), label="release"))

    @rule(seconds=st.sampled_from([1.0, 5.0, 15.0, 30.0, 60.0]))
    @logged
    def advance(self, seconds: float) -> None:
        """Move the engine's clock: delays, backoffs and Retry-After pauses run out on it alone."""
        self.clock.advance(seconds)

    def cancel_in(self, data: st.DataObject, states: set[State]) -> None:
        source = data.draw(st.sampled_from(NAMES), label="source")
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
        self.open_gate(job)

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    @logged
    def remove(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.live()), label="remove")
        with self.where(job):
            before = self.engine.get(job.id).state
            starts = self.starts(job.id)
            final = self.engine.remove(job.id)
        job.removed = True
        event(f"remove while {before.name}")
        if before.terminal:
            assert final.state is before, f"remove of a {before.name} job returned {final.state.name}"
        else:
            assert final.state is State.CANCELLED, f"remove of a {before.name} job left it {final.state.name}"
            job.cancelled = True
            if before is State.QUEUED:
                job.starts_at_cancel = starts
        with pytest.raises(UnknownDownloadError):
            self.engine.get(job.id)

    @rule(pair=st.permutations(NAMES).map(lambda names: names[:2]))
    @logged
    def another_source_frozen(self, pair: list[str]) -> None:
        """With one source frozen by another thread, the other source still takes writes.

        Not while a chain download may move between the two: the move holds both
        sources (the one it leaves first, in name order) for its one step.
        """
        held, other = pair
        for job in self.live():
            if {held, other} <= set(job.chain) and not self.engine.get(job.id).state.terminal:
                event("another_source_frozen: not while a chain may move between the two")
                self.submit_one(other, "ok")  # as the probe would: later draws must not depend on this
                return
        # Past any delay or pause now: ManualClock.advance takes the lock of every source
        # that waited on it, so no thread moves the clock while a source is frozen.
        self.clock.advance(PAST)
        taken, done = threading.Event(), threading.Event()

        def hold() -> None:
            with frozen(self.engine, held):
                taken.set()
                done.wait(WAIT)

        holder = threading.Thread(target=hold, name="test-freezer")
        holder.start()
        assert taken.wait(WAIT)
        outcome: list[Submitted] = []

        threads, running, queued = self.engine.worker_stats().get(other, (0, 0, 0))
        idle = running < POLICIES[other].concurrency and queued == 0

        def probe() -> None:
            job = self.submit_one(other, "ok")
            self.engine.records(other)
            # A whole download, when nothing of `other` was ahead of it; if it has not ended
            # (a chain moved a job in, or a delay began meanwhile), cancelling it is the write.
            if idle:
                with contextlib.suppress(TimeoutError):
                    self.engine.wait([job.id], timeout=1.0)
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

    @precondition(lambda self: any(j.behaviour == "ignore" and not j.released for j in self.live()))
    @rule(data=st.data())
    @logged
    def cancel_wakes_a_waiter(self, data: st.DataObject) -> None:
        """A thread waiting for a running job returns at its cancel, not when download_impl does."""
        held = [j for j in self.live() if j.behaviour == "ignore" and not j.released]
        job = data.draw(st.sampled_from(held), label="cancel_wakes_a_waiter")
        waited: list[State] = []
        waiter = threading.Thread(
            target=lambda: waited.append(self.engine.wait([job.id], timeout=WAIT)[0].state),
            name="test-waiter",
        )
        with frozen(self.engine, job.source) as view:
            running = view.state(job.id) is State.RUNNING
            if running:
                waiter.start()
                time.sleep(0.05)  # a head start into wait (were it late, the check could only pass)
                self.cancel_frozen(job)
        if running:  # download_impl goes on: it ignores the cancel until released
            waiter.join(5.0)
            woke = not waiter.is_alive()
        self.open_gate(job)  # running or not: later draws must not depend on the threads
        if running:
            waiter.join(WAIT)
            event("cancel_wakes_a_waiter while RUNNING")
            assert woke, "wait returned only when download_impl did, not at the cancel"
            assert waited == [State.CANCELLED], f"wait returned {waited}"

    @precondition(lambda self: not self.journal.full)
    @rule()
    @logged
    def disk_fills(self) -> None:
        """From now on the journal refuses every state commit (for the rest of the program)."""
        self.journal.full = True
        event("disk full")

    @precondition(lambda self: not self.journal.full)  # what the journal missed would run again
    @rule()
    @logged
    def restart(self) -> None:
        """Close the engine as an interrupted process would, and start another on its journal."""
        for job in self.jobs.values():  # removed ones too: a removed job that ignores its cancel still runs
            if job.behaviour == "ignore":
                self.open_gate(job)  # it outlives the close otherwise, and runs beside the next engine's
        for job in self.live():
            if not self.engine.get(job.id).state.terminal:
                job.interrupted = True
        stuck = self.engine.close(timeout=WAIT, interrupt=True)
        assert not stuck, f"close() left {len(stuck)} downloads running"
        self.marks = {n: len(self.plugins[n].snapshot()) for n in NAMES}
        self.engine = self.open_engine()
        event("restart")

    @rule()
    @logged
    def drain(self) -> None:
        self.drain_and_check()

    # -- invariants, after every step -----------------------------------------------

    @invariant()
    @logged
    def records_are_conserved(self) -> None:
        with contextlib.ExitStack() as stack:  # every source frozen (in name order): no chain moves
            views = {name: stack.enter_context(frozen(self.engine, name)) for name in NAMES}
            where = {j.id: self.engine.get(j.id).source for j in self.live()}
            for name, view in views.items():
                ids = [r.id for r in view.records()]
                assert len(ids) == len(set(ids)), f"{name}: a record is listed twice"
                expected = {i for i, source in where.items() if source == name}
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
            elif state is State.CANCELLED:
                raise AssertionError(f"a {job.behaviour} job nobody cancelled is CANCELLED")
            if state.terminal and job.terminal is None:
                job.terminal = state
                if not job.cancelled and not job.interrupted:
                    self.check_outcome(job, record.source, state, [t.source for t in record.tried])
            if state is State.COMPLETED:
                assert job.behaviour not in ("none", "raise"), f"a {job.behaviour} job COMPLETED"
                assert record.file_path is not None and Path(record.file_path).is_file(), (
                    f"a COMPLETED record's file {record.file_path!r} does not exist"
                )
                assert (record.progress, record.transferred) == (100.0, 10), (
                    f"a COMPLETED record shows {record.transferred} bytes, {record.progress} %"
                )
            if state is State.FAILED:
                assert record.error, "a FAILED record has no error"
            moved = job.chain and record.source != job.chain[0] and not job.interrupted
            if moved and state is State.QUEUED and record.retries == 0:  # not yet tried on its new source
                assert (record.progress, record.transferred, record.size) == (0.0, 0, None), (
                    f"a chain download moved to {record.source} kept {record.transferred} of {record.size} B"
                )

    def check_outcome(self, job: Submitted, source: str, state: State, tried: list[str]) -> None:
        """A job that ended by itself ended as its behaviour, its source's retries and its chain say."""
        want, on = job.expected()
        what = (
            f"{job.behaviour} job" if not job.chain else f"chain {job.chain} failing on {sorted(job.failing)}"
        )
        assert (state, source) == (want, on), (
            f"a {what} ended {state.name} on {source}, not {want.name} on {on}"
        )
        if job.chain:
            failed = list(job.chain[: job.chain.index(on) + (state is State.FAILED)])
            assert tried == failed, f"a {what} tried {tried}, not {failed}"
            event(f"chain ended {state.name} on source {job.chain.index(on) + 1} of {len(job.chain)}")
        elif job.behaviour in (*DROPS, "retry"):
            event(f"{job.behaviour} on {source} ended {state.name}")

    @invariant()
    @logged
    def cancelled_while_queued_never_started(self) -> None:
        for job in self.jobs.values():
            if job.starts_at_cancel is not None:
                assert self.starts(job.id) == job.starts_at_cancel, (
                    f"a job cancelled while QUEUED reached download_impl (on {job.sources()})"
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
        prefixes = tuple(f"headwater-{name}-" for name in NAMES)
        alive = [t for t in threading.enumerate() if t.name.startswith(prefixes)]
        queued = sum(q for _, _, q in self.engine.worker_stats().values())
        assert len(alive) <= TOTAL_CONCURRENCY + THREAD_SLACK, (
            f"{len(alive)} worker threads for {queued} queued jobs; the total concurrency is "
            f"{TOTAL_CONCURRENCY}"
        )

    @invariant()
    @logged
    def delay_is_kept(self) -> None:
        last_end: float | None = None
        for seen in self.since_restart("solo"):
            if seen.kind == "start" and last_end is not None:
                gap = seen.at - last_end
                assert gap >= DELAY, f"solo: a download started {gap:g} s after the previous end"
            elif seen.kind == "end":
                last_end = seen.at

    @invariant()
    @logged
    def retry_after_is_kept(self) -> None:
        """After a Retry-After on ``solo``, nothing starts before the pause ends, and its job goes first."""
        paused: Event | None = None
        for seen in self.since_restart("solo"):
            if seen.kind == "end" and seen.paused_for is not None:
                paused = None if self.jobs[seen.job_id].cancelled else seen  # a cancel may beat the pause
            elif seen.kind == "start" and paused is not None:
                wait = seen.at - paused.at
                assert wait >= paused.paused_for, (
                    f"solo: a download started {wait:g} s into a Retry-After pause of {paused.paused_for:g} s"
                )
                assert seen.job_id == paused.job_id or self.jobs[paused.job_id].cancelled, (
                    "solo: after a Retry-After another job started before the one that was asked to wait"
                )
                paused = None

    # -- draining ------------------------------------------------------------------

    def release_all(self) -> None:
        for job in self.jobs.values():
            if job.behaviour in HELD:
                self.open_gate(job)

    def drain_and_check(self) -> None:
        """Let every job end, moving the clock, then check what only holds at rest."""
        self.release_all()
        ids = [j.id for j in self.live()]
        deadline = time.monotonic() + self.drain_within
        while True:
            self.clock.advance(STEP)
            with contextlib.suppress(TimeoutError):
                self.engine.wait(ids, timeout=0.02)
                if not any(running or queued for _, running, queued in self.engine.worker_stats().values()):
                    break
            assert time.monotonic() < deadline, (
                f"not drained after {self.drain_within} s: {self.engine.worker_stats()}, "
                f"{sum(not self.engine.get(i).state.terminal for i in ids)} of {len(ids)} jobs not ended"
            )
        for name, plugin in self.plugins.items():
            events = plugin.snapshot()
            starts = sorted(e.job_id for e in events if e.kind == "start")
            ends = sorted(e.job_id for e in events if e.kind == "end")
            assert starts == ends, f"{name}: a download started and never ended"
        for job in self.jobs.values():
            if not job.interrupted:
                starts = self.starts(job.id)
                assert starts <= job.max_starts(), (
                    f"a {job.behaviour} job reached download_impl {starts} times (at most {job.max_starts()})"
                )
            if job.behaviour == "outside" and self.starts(job.id):
                outside = self.plugins[job.source].outside_path(self.engine.dest_dir, job.id)
                assert outside.is_file(), "the engine deleted a file outside the destination"
            landed = [p.landed_path(self.engine.dest_dir, job.id) for p in self.plugins.values()]
            if job.removed:
                if job.cancelled:
                    assert not any(p.exists() for p in landed), (
                        "a file landed after its download was removed still exists"
                    )
                continue
            state = self.engine.get(job.id).state
            assert state.terminal, f"a {job.behaviour} job is still {state.name} after the drain"
            if state is State.CANCELLED:
                if job.behaviour == "ignore" and self.starts(job.id):
                    event("a file landed after its cancel")
                assert not any(p.exists() for p in landed), "a file landed after a cancel still exists"
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
