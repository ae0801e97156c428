"""What a stopped engine leaves: whose it is, that stopping keeps it resumable, and where it lands.

An engine "dies" here by ending its journal session (its store is closed
under it, which drops the session's lock as a killed process would) while
its downloads are still running in memory; ``tests/test_cli_resume.py``
does the same with real processes and real signals.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from instrumented import InstrumentedSource
from waiting import wait_until

from headwater import (
    DownloadCancelled,
    DownloadContext,
    DownloadOwnedError,
    Engine,
    Job,
    RatePolicy,
    State,
    UnknownDownloadError,
    hookimpl,
)
from headwater._journal import SQLiteStore
from headwater._reader import read_records

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "home" / "journal.sqlite3"


OnJournal = Callable[..., Engine]
_STORES: weakref.WeakKeyDictionary[Engine, SQLiteStore] = weakref.WeakKeyDictionary()  # each engine's journal


@pytest.fixture
def on_journal(tmp_path: Path, journal: Path) -> Iterator[OnJournal]:
    """Make engines on the test's journal: ``on_journal(plugins, folder="dest", hold=False)``.

    ``folder`` is the engine's dest_dir, under the test's folder. Every
    engine is closed after the test (closing twice is harmless).
    """
    made: list[Engine] = []

    def make(plugins: Mapping[str, object], folder: str = "dest", *, hold: bool = False) -> Engine:
        store = SQLiteStore(journal)
        engine = Engine(tmp_path / folder, plugins=plugins, store=store, hold=hold)
        _STORES[engine] = store
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close(timeout=5)


def die(engine: Engine, src: InstrumentedSource) -> None:
    """End ``engine``'s journal session as a killed process would: its records stay as journaled."""
    engine.flush()
    _STORES[engine].close()
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


# -- item 6: an interrupt stops without cancelling -----------------------------------


class Resumable:
    """A source that writes ``<target>.part`` a piece at a time and keeps it only when interrupted.

    Each piece waits on ``pieces`` (released by the test), so the test knows
    how far a download got; the next call carries on from the ``.part``.
    """

    PIECE = b"0123456789" * 100
    PIECES = 5

    def __init__(self) -> None:
        self.pieces = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.resumed_from: list[int] = []  # .part size at each start
        self.saw: list[tuple[bool, bool]] = []  # (cancelled, interrupted) when it stopped

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        part = ctx.dest_dir / f"{job.target}.part"
        done = part.stat().st_size if part.exists() else 0
        self.resumed_from.append(done)
        self.started.release()
        with part.open("ab") as out:
            while done < self.PIECES * len(self.PIECE):
                while not self.pieces.acquire(timeout=0.01):
                    if ctx.cancelled.is_set():
                        self.saw.append((ctx.cancelled.is_set(), ctx.interrupted.is_set()))
                        out.close()
                        if not ctx.interrupted.is_set():
                            part.unlink()
                        raise DownloadCancelled(f"stopped after {done} bytes")
                out.write(self.PIECE)
                out.flush()
                done += len(self.PIECE)
                ctx.progress(done, self.PIECES * len(self.PIECE))
        return part.replace(ctx.dest_dir / job.target)

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        return RatePolicy(concurrency=2)


def test_close_with_interrupt_leaves_running_downloads_unfinished_and_resumable(
    on_journal: OnJournal, journal: Path
) -> None:
    src = Resumable()
    first = on_journal({"r": src})
    rid = first.submit("r", "file.bin")
    assert src.started.acquire(timeout=10)
    src.pieces.release(2)
    part = first.dest_dir / "file.bin.part"
    wait_until(
        lambda: first.get(rid).transferred >= 2 * len(Resumable.PIECE),
        10,
        "the first two pieces never arrived",
        step=0.01,
    )
    assert first.close(timeout=10, interrupt=True) == []  # download_impl returned within the timeout
    assert src.saw == [(True, True)]
    record = {r.id: r for r in read_records(journal)}[rid]
    assert record.state is State.QUEUED, record  # not CANCELLED, not FAILED: unfinished
    assert record.transferred == 2 * len(Resumable.PIECE) and record.attempts == 1 and record.error is None
    assert part.stat().st_size == 2 * len(Resumable.PIECE)

    second = on_journal({"r": src})
    src.pieces.release(Resumable.PIECES)
    done = second.wait([rid], timeout=10)[0]
    assert done.state is State.COMPLETED and done.attempts == 2
    assert src.resumed_from == [0, 2 * len(Resumable.PIECE)]
    assert Path(done.file_path or "").read_bytes() == Resumable.PIECE * Resumable.PIECES


def test_close_without_interrupt_still_cancels(on_journal: OnJournal, journal: Path) -> None:
    src = Resumable()
    engine = on_journal({"r": src})
    rid = engine.submit("r", "file.bin")
    assert src.started.acquire(timeout=10)
    assert engine.close(timeout=10) == []
    assert src.saw == [(True, False)]
    assert {r.id: r.state for r in read_records(journal)}[rid] is State.CANCELLED
    assert not (engine.dest_dir / "file.bin.part").exists()


def test_a_download_that_lands_its_file_while_interrupted_is_completed(
    on_journal: OnJournal, journal: Path
) -> None:
    src = InstrumentedSource("a")
    engine = on_journal({"a": src})
    rid = engine.submit("a", "ignore-cancel:k")
    src.wait_started(1)
    threading.Timer(0.2, src.release, ("k",)).start()  # lands its file after the interrupt
    assert engine.close(timeout=10, interrupt=True) == []
    record = {r.id: r for r in read_records(journal)}[rid]
    assert record.state is State.COMPLETED
    assert Path(record.file_path or "").exists()


# -- item 7: each download keeps its own destination -------------------------------


def test_each_download_lands_in_its_own_folder(tmp_path: Path, on_journal: OnJournal) -> None:
    engine = on_journal({"a": InstrumentedSource("a")})
    mine = engine.submit("a", "ok:x", dest_dir=tmp_path / "new" / "folder")
    default = engine.submit("a", "ok:y")
    ended = engine.wait([mine, default], timeout=10)
    assert [r.state for r in ended] == [State.COMPLETED, State.COMPLETED]
    folder = (tmp_path / "new" / "folder").resolve()
    assert ended[0].dest_dir == str(folder) and Path(ended[0].file_path or "").parent == folder
    assert (
        ended[1].dest_dir == str(engine.dest_dir) and Path(ended[1].file_path or "").parent == engine.dest_dir
    )


class LandsElsewhere:
    """Writes its file into the folder named by the target, whatever ``ctx.dest_dir`` says."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        path = Path(job.target) / "file.bin"
        path.write_bytes(b"data")
        return path


def test_a_file_outside_the_download_folder_fails_even_inside_the_engine_folder(
    tmp_path: Path, on_journal: OnJournal
) -> None:
    engine = on_journal({"x": LandsElsewhere()})
    rid = engine.submit("x", str(engine.dest_dir), dest_dir=tmp_path / "own")
    record = engine.wait([rid], timeout=10)[0]
    assert record.state is State.FAILED and "outside the destination folder" in (record.error or "")
    assert str((tmp_path / "own").resolve()) in (record.error or "")


def test_a_resumed_download_lands_where_it_was_sent(
    tmp_path: Path, on_journal: OnJournal, journal: Path
) -> None:
    running, queued = left_behind(on_journal, journal)
    src = InstrumentedSource("a")
    elsewhere = on_journal({"a": src}, "elsewhere")
    src.release("r")
    src.release("q")
    ended = elsewhere.wait([running, queued], timeout=10)
    assert [r.state for r in ended] == [State.COMPLETED, State.COMPLETED]
    sent_to = (tmp_path / "dest").resolve()
    assert all(Path(r.file_path or "").parent == sent_to and r.dest_dir == str(sent_to) for r in ended)
    assert not list(elsewhere.dest_dir.iterdir())


def test_a_record_of_an_older_journal_lands_in_the_resuming_engine_folder(
    on_journal: OnJournal, journal: Path
) -> None:
    running, _ = left_behind(on_journal, journal)
    conn = sqlite3.connect(journal)  # make it a journal written before records had dest_dir
    with conn:
        conn.execute("UPDATE records SET data = json_remove(data, '$.dest_dir')")
    rows = conn.execute("SELECT data FROM records").fetchall()
    conn.close()
    assert rows and all("dest_dir" not in json.loads(data) for (data,) in rows)
    assert all(r.dest_dir is None for r in read_records(journal))
    src = InstrumentedSource("a")
    resumer = on_journal({"a": src}, "resumer")
    src.release("r")
    record = resumer.wait([running], timeout=10)[0]
    assert record.state is State.COMPLETED and record.dest_dir == str(resumer.dest_dir)
    assert Path(record.file_path or "").parent == resumer.dest_dir
