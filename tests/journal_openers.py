"""Processes that open journals at the same moment, round after round (tests/test_journal_open.py).

Every worker takes part in every round: it waits at the shared barrier, then
opens that round's journal as a writing command does (``SQLiteStore``,
``load``, ``close``), or reads it as ``headwater status`` does
(``read_records``). It puts one line on ``results`` per failure, then None
when its rounds are done.
"""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from headwater._journal import SQLiteStore
from headwater._reader import read_records


def open_each(journals: list[str], barrier: Barrier, reader: bool, results: Queue[str | None]) -> None:
    """Open (or, if ``reader``, read) each journal in turn, all workers starting each one together."""
    for path in journals:
        barrier.wait(30)
        try:
            if reader:
                read_records(Path(path))
            else:
                store = SQLiteStore(path)
                store.load()
                store.close()
        except Exception as exc:  # every failure is the finding: report it, go on with the next round
            results.put(f"{'reader' if reader else 'opener'} of {path}: {type(exc).__name__}: {exc}")
    results.put(None)
