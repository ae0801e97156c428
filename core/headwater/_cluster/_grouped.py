"""Group commit: the writes that threads ask for at the same time go to the server as one.

A PostgreSQL commit waits for the server's log flush, and commits that
notify listeners (every change of a record does) pass one at a time, so
writers that each commit alone queue behind each other. :class:`Grouped`
lets the first caller write; callers arriving meanwhile wait, and the next
of them writes all that has gathered in one call, so one commit serves
many (each caller still gets its own answers, and its own error).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")
R = TypeVar("R")


@attrs.define
class _Ticket(Generic[T, R]):
    items: Sequence[T]
    done: threading.Event = attrs.field(factory=threading.Event)
    answers: list[R] | None = None
    error: BaseException | None = None
    lead: bool = False  # this caller is to write the next group (set under the lock, then ``done``)


class Grouped(Generic[T, R]):
    """Calls ``write`` with the items of every caller waiting, one group at a time.

    Args:
        write: writes a list of items, returning one answer per item, in
            order; it may raise (every caller of that group gets the error).
        key: the items of one group have distinct keys (a caller's own items
            must; a caller whose keys meet those already in the group waits
            for the next group).

    Thread-safe; :meth:`call` blocks until its items are written.
    """

    def __init__(self, write: Callable[[list[T]], list[R]], key: Callable[[T], Hashable]) -> None:
        self._write = write
        self._key = key
        self._lock = threading.Lock()
        self._waiting: list[_Ticket[T, R]] = []
        self._busy = False

    def call(self, items: Sequence[T]) -> list[R]:
        """Write ``items`` (with whatever else is waiting); their answers. Raises what ``write`` raised."""
        ticket: _Ticket[T, R] = _Ticket(items)
        with self._lock:
            self._waiting.append(ticket)
            ticket.lead = not self._busy
            self._busy = True
        while True:
            if ticket.lead:
                ticket.lead = False
                self._write_group()
            else:
                ticket.done.wait()  # set when answered, or when handed the lead
                ticket.done.clear()
            if ticket.answers is not None:
                return ticket.answers
            if ticket.error is not None:
                raise ticket.error

    def waiting(self) -> int:
        """Callers whose items wait for a group to be written (the one being written not counted)."""
        with self._lock:
            return len(self._waiting)

    def _write_group(self) -> None:
        """Write the waiting tickets whose keys are distinct; hand the lead to the next waiting one."""
        with self._lock:
            group: list[_Ticket[T, R]] = []
            later: list[_Ticket[T, R]] = []
            keys: set[Hashable] = set()
            for waiting in self._waiting:
                mine = {self._key(item) for item in waiting.items}
                if keys & mine:
                    later.append(waiting)
                else:
                    keys |= mine
                    group.append(waiting)
            self._waiting = later
        items = [item for waiting in group for item in waiting.items]
        try:
            answers = self._write(items)
        except BaseException as exc:  # each caller of the group raises it
            for waiting in group:
                waiting.error = exc
        else:
            start = 0
            for waiting in group:
                waiting.answers = answers[start : start + len(waiting.items)]
                start += len(waiting.items)
        with self._lock:
            follow = self._waiting[0] if self._waiting else None
            if follow is None:
                self._busy = False
            else:
                follow.lead = True
        for waiting in group:
            waiting.done.set()
        if follow is not None:
            follow.done.set()
