"""Following downloads on screen: rich progress bars on a terminal, plain lines elsewhere.

:func:`follow` polls the engine (it never holds an engine lock) until every
download it watches has ended, and reports each one as it ends. It runs on
the calling thread; Ctrl-C raises KeyboardInterrupt out of it, leaving the
downloads to the caller.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from headwater._records import Record, State

POLL_SECONDS = 0.1

#: Called once per download as it ends, with its final record.
Report = Callable[[Record], None]


class Records(Protocol):
    """What :func:`follow` reads: an Engine, or a :class:`headwater.client.Watch` of a server's downloads."""

    def get(self, download_id: str) -> Record: ...


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def detail(record: Record) -> str:
    """``1.2 MB / 4.0 MB  350.0 kB/s  eta 9 s`` for a running download."""
    done = _size(record.transferred)
    text = f"{done} / {_size(record.size)}" if record.size else done
    if record.speed:
        text += f"  {_size(record.speed)}/s"
    if record.time_remaining is not None:
        text += f"  eta {record.time_remaining:.0f} s"
    return text


def follow(
    engine: Records,
    ids: Sequence[str],
    report: Report,
    *,
    console: Console | None,
    timeout: float | None = None,
) -> list[Record]:
    """Wait for ``ids`` to end, calling ``report`` for each as it ends; return their records.

    With a ``console`` (a terminal), draws one bar per running download and
    an overall bar on it; with None, draws nothing. Raises TimeoutError after
    ``timeout`` seconds with downloads still going.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(ids)
    final: dict[str, Record] = {}
    with contextlib.nullcontext(None) if console is None else _Bars(console, len(ids)) as bars:
        while pending:
            pending = _sweep(engine, pending, final, report)
            if bars is not None:
                bars.show(engine, pending, final)
            if pending:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{len(pending)} of {len(ids)} downloads had not ended after {timeout} s"
                    )
                time.sleep(POLL_SECONDS)
    return [final[i] for i in ids]


class _Bars:
    """One bar per running download and an overall one, on a rich console."""

    def __init__(self, console: Console, total: int) -> None:
        columns = (
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
        )
        self._progress = Progress(*columns, console=console, transient=True, refresh_per_second=8)
        self._total = total
        self._overall = self._progress.add_task("[bold]all", total=total, detail="")
        self._bars: dict[str, TaskID] = {}

    def __enter__(self) -> _Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def show(self, engine: Records, pending: Sequence[str], final: Mapping[str, Record]) -> None:
        """Bring the bars up to date: drop ended downloads, add and advance running ones."""
        progress = self._progress
        failed = sum(1 for r in final.values() if r.state is not State.COMPLETED)
        summary = f"{len(final)}/{self._total} ended" + (f", {failed} not completed" if failed else "")
        progress.update(self._overall, completed=len(final), detail=summary)
        for download_id in [i for i in self._bars if i in final]:
            progress.remove_task(self._bars.pop(download_id))
        for download_id in pending:
            record = engine.get(download_id)
            if record.state is not State.RUNNING:
                continue
            if download_id not in self._bars:
                self._bars[download_id] = progress.add_task(_label(record), total=None, detail="")
            progress.update(
                self._bars[download_id],
                description=_label(record),  # a name the source learned (ctx.describe) shows at once
                total=record.size,
                completed=record.transferred,
                detail=detail(record),
            )


def _label(record: Record, width: int = 28) -> str:
    name = record.name
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _sweep(engine: Records, pending: list[str], final: dict[str, Record], report: Report) -> list[str]:
    """Report the downloads in ``pending`` that have ended; return those still going."""
    still: list[str] = []
    for download_id in pending:
        record = engine.get(download_id)
        if record.state.terminal:
            final[download_id] = record
            report(record)
        else:
            still.append(download_id)
    return still
