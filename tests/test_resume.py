"""What a stopped engine leaves is the next runner's, and cancellable by anyone.

An engine "dies" here by ending its journal session (its store is closed
under it, which drops the session's lock as a killed process would) while
its downloads are still running in memory; ``tests/test_cli_resume.py``
does the same with real processes and real signals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from instrumented import InstrumentedSource

from headwater import (
    DownloadOwnedError,
    Engine,
    RatePolicy,
    State,
    UnknownDownloadError,
)
from headwater.store import SQLiteStore, read_records

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "home" / "journal.sqlite3"


OnJournal = Callable[..., Engine]


@pytest.fixture
def on_journal(tmp_path: Path, journal: Path) -> Iterator[OnJournal]:
    """Make engines on the test's journal: ``on_journal(plugins, folder="dest", hold=False)``.

    ``folder`` is the engine's dest_dir, under the test's folder. Every
    engine is closed after the test (closing twice is harmless).
    """
    made: list[Engine] = []

    def make(plugins: Mapping[str, object], folder: str = "dest", *, hold: bool = False) -> Engine:
        engine = Engine(tmp_path / folder, plugins=plugins, store=SQLiteStore(journal), hold=hold)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close(timeout=5)


def die(engine: Engine, src: InstrumentedSource) -> None:
    """End ``engine``'s journal session as a killed process would: its records stay as journaled."""
    engine.flush()
    engine._store.close()
    engine.close(timeout=0.2)
    src.release_all()


def left_behind(on_journal: OnJournal, journal: Path) -> tuple[str, str]:
    """An ended engine's RUNNING and QUEUED download (source ``a``, concurrency 1), as journaled."""
    src = InstrumentedSource("a", RatePolicy(concurrency=1))
    engine = on_journal({"a": src})
    running, queued = engine.submit("a", "block:r"), engine.submit("a", "block:q")
    src.wait_started(1)
    die(engine, src)
    states = {r.id: r.state for r in read_records(journal)}
    assert (states[running], states[queued]) == (State.RUNNING, State.QUEUED)
    return running, queued


# -- item 5: ownership follows liveness --------------------------------------------


def test_cancel_reaches_what_an_ended_engine_left_without_taking_the_rest(
    on_journal: OnJournal, journal: Path
) -> None:
    running, queued = left_behind(on_journal, journal)
    before = {r.id: r for r in read_records(journal)}
    canceller = on_journal({"a": InstrumentedSource("a")}, hold=True)
    assert canceller.cancel(running) is True
    assert canceller.get(running).state is State.CANCELLED
    assert canceller.cancel(running) is False  # already ended
    after = {r.id: r for r in read_records(journal)}
    assert after[running].state is State.CANCELLED and after[running].finished_at is not None
    assert after[queued] == before[queued], "the canceller touched a record it was not asked about"

    # While the canceller lives, what it did not cancel is free for an engine that runs it.
    src = InstrumentedSource("a")
    runner = on_journal({"a": src}, hold=True)
    assert runner.start_held() == [queued]
    src.release("q")
    assert runner.wait([queued], timeout=10)[0].state is State.COMPLETED
    with pytest.raises(UnknownDownloadError):
        canceller.cancel("0" * 32)


def test_cancel_refuses_a_download_a_running_engine_owns(on_journal: OnJournal, journal: Path) -> None:
    src = InstrumentedSource("a")
    owner = on_journal({"a": src})
    busy = owner.submit("a", "block:k")
    src.wait_started(1)
    owner.flush()
    other = on_journal({"a": InstrumentedSource("a")}, hold=True)
    with pytest.raises(
        DownloadOwnedError, match=f"download {busy} belongs to another engine in this process"
    ):
        other.cancel(busy)
    assert other.start_held() == [], "a running engine's downloads were taken over"
    assert owner.get(busy).state is State.RUNNING
    src.release("k")
    assert owner.wait([busy], timeout=10)[0].state is State.COMPLETED


@pytest.mark.parametrize("round_", range(10))
def test_a_cancel_and_a_takeover_at_once_never_both_win(
    on_journal: OnJournal, journal: Path, round_: int
) -> None:
    running, _ = left_behind(on_journal, journal)
    stores = [SQLiteStore(journal), SQLiteStore(journal)]
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def cancel() -> None:
        barrier.wait()
        try:
            outcome["cancel"] = stores[0].cancel_left(running)[1]
        except DownloadOwnedError:
            outcome["cancel"] = "refused"

    def take() -> None:
        barrier.wait()
        outcome["take"] = {r.id for r in stores[1].take_over({"a"})}

    threads = [threading.Thread(target=cancel), threading.Thread(target=take)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for store in stores:
        store.close()
    taken = running in outcome["take"]  # type: ignore[operator]
    assert (outcome["cancel"], taken) in ((True, False), ("refused", True)), outcome
    state = {r.id: r.state for r in read_records(journal)}[running]
    assert state is (State.CANCELLED if not taken else State.RUNNING)
