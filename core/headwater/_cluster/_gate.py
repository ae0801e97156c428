"""Holding a source still in one process, for :meth:`~headwater._cluster._engine.ClusterEngine.freeze`.

The workers and the scheduler of a process write every change of a
download's state inside :meth:`SourceGate.writing` of its source; a thread
inside :meth:`SourceGate.frozen` of that source keeps them out (and waits
for those already in to leave), so that it can read the source's records
and act on them knowing this process moves none meanwhile. Other processes
of the cluster are not held.

It also knows which attempts this process is ending (:meth:`SourceGate.ending`
until :meth:`SourceGate.ended`): an attempt gives its slot back before its
end is written, and the scheduler, finding the slot's lease gone meanwhile,
must not take it for dead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SourceGate:
    """Per source: writes (any number at once) and one thread's freeze (nested) exclude each other.

    A freeze waiting to begin lets no new write in, so writes cannot keep it
    out. Thread-safe.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._writing: dict[str, int] = {}
        self._frozen: dict[str, tuple[int, int]] = {}  # source -> (the freezing thread, its depth)
        self._wanted: dict[str, int] = {}  # source -> freezes waiting to begin
        self._ending: set[str] = set()  # holders whose end this process is writing

    @contextmanager
    def frozen(self, source: str) -> Iterator[None]:
        """Hold ``source``'s writes back until the block ends (the calling thread may nest freezes)."""
        me = threading.get_ident()
        with self._changed:
            held = self._frozen.get(source)
            if held is not None and held[0] == me:
                self._frozen[source] = (me, held[1] + 1)
            else:
                self._wanted[source] = self._wanted.get(source, 0) + 1
                while source in self._frozen or self._writing.get(source, 0):
                    self._changed.wait()
                self._wanted[source] -= 1
                self._frozen[source] = (me, 1)
        try:
            yield
        finally:
            with self._changed:
                owner, depth = self._frozen[source]
                if depth > 1:
                    self._frozen[source] = (owner, depth - 1)
                else:
                    del self._frozen[source]
                    self._changed.notify_all()

    @contextmanager
    def writing(self, source: str) -> Iterator[None]:
        """Write a change of ``source``'s downloads: waits while another thread freezes it."""
        me = threading.get_ident()
        with self._changed:
            while True:
                held = self._frozen.get(source)
                if held is not None and held[0] == me:
                    break  # the freezing thread's own writes go through
                if held is None and not self._wanted.get(source, 0):
                    break
                self._changed.wait()
            self._writing[source] = self._writing.get(source, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._writing[source] -= 1
                if not self._writing[source]:
                    self._changed.notify_all()

    def is_frozen(self, source: str) -> bool:
        """Whether a thread freezes ``source`` now."""
        with self._changed:
            return source in self._frozen

    def ending(self, holder: str) -> None:
        """The attempt ``holder`` is ending in this process (its slot may be free) until :meth:`ended`."""
        with self._changed:
            self._ending.add(holder)

    def ended(self, holder: str) -> None:
        """The end of the attempt ``holder`` is written (or refused): see :meth:`ending`."""
        with self._changed:
            self._ending.discard(holder)

    def is_ending(self, holder: str) -> bool:
        """Whether this process is ending the attempt ``holder`` now."""
        with self._changed:
            return holder in self._ending
