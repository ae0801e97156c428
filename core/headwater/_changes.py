"""The engine's change feed: :class:`Subscription`, :class:`Change`, and the engine's side of it.

:meth:`headwater.Engine.subscribe` returns a :class:`Subscription`; its
docstring states the contract.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Iterable
from types import TracebackType

import attrs

from headwater._errors import SubscriptionOverflow
from headwater._records import Record

#: How many changes a subscription holds unless told otherwise.
DEFAULT_MAXSIZE = 65_536


class ChangeKind(enum.Enum):
    """What happened to a download."""

    RECORD = "record"  # its record is new or changed (state, or fields written with a state change)
    REMOVED = "removed"  # it was removed (Engine.remove); the record is its last one


@attrs.frozen
class Change:
    """One change of one download, as the engine made it.

    Attributes:
        kind: what happened.
        record: the new record (``RECORD``) or the last one (``REMOVED``),
            as committed: a running record's progress is as of its last state
            change.
    """

    kind: ChangeKind
    record: Record


class Subscription:
    """A bounded, thread-safe queue of :class:`Change` values fed by the engine; read it with :meth:`get`.

    Made by :meth:`headwater.Engine.subscribe`. Reading is thread-safe; one
    reader is the intended use. The contract:

    - **What is fed**: every record that becomes visible to readers (a new
      QUEUED record, each state change, each change of fields written with a
      state change, such as a move down a fallback chain) as a ``RECORD`` change
      carrying the new record, and every removal as a ``REMOVED`` change
      carrying the last record. Progress is not fed: it is read from the
      running records' snapshots (:meth:`headwater.Engine.get`).
    - **Which thread delivers**: the thread that made the change puts it on
      every open subscription while it holds the lock that orders that
      download's changes (today its source's lock). The put never blocks, never
      calls out of this module and costs one append per subscription.
    - **Order**: the changes of one download arrive in the order they were
      made. Changes of different downloads keep the order of their making
      within one source; across sources there is no order to rely on.
    - **Overflow**: a subscription holds at most ``maxsize`` changes. A change
      that finds it full is not queued: the queued changes are dropped and the
      next :meth:`get` raises
      :class:`~headwater.SubscriptionOverflow` (once). The engine never
      waits for a slow subscriber. A subscriber that sees the overflow reads
      :meth:`headwater.Engine.records` afresh; every change made after the
      overflow is queued again as usual, so that snapshot plus the changes that
      follow it is the whole truth (a change may repeat what the snapshot
      already shows: records are whole values, so applying one again is
      harmless).
    - **Closing**: :meth:`close` (or leaving its ``with`` block)
      ends it; :meth:`headwater.Engine.close` closes every subscription.
      A closed subscription's :meth:`get` returns what was still
      queued, then empty lists at once.
    """

    def __init__(self, feed: ChangeFeed, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        self._feed = feed
        self._maxsize = maxsize
        self._queue: deque[Change] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._overflowed = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the engine closed)."""
        return self._closed

    def get(self, timeout: float | None = None) -> list[Change]:
        """Every queued change, oldest first, waiting up to ``timeout`` seconds for one.

        ``timeout=0`` never waits; None waits until there is a change or the
        subscription closes. Returns an empty list when the time ran out or
        the subscription is closed and empty. Raises SubscriptionOverflow
        once after changes were dropped (see the class docstring).
        """
        with self._ready:
            if not self._queue and not self._overflowed and not self._closed and timeout != 0:
                self._ready.wait(timeout)
            if self._overflowed:
                self._overflowed = False
                raise SubscriptionOverflow(
                    f"more than {self._maxsize} changes were waiting; they were dropped: "
                    "read the records afresh"
                )
            changes = list(self._queue)
            self._queue.clear()
            return changes

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds until :meth:`get` has something; whether it has.

        True also once the subscription is closed, or after an overflow.
        Takes nothing off the queue.
        """
        with self._ready:
            if not self._queue and not self._overflowed and not self._closed:
                self._ready.wait(timeout)
            return bool(self._queue) or self._overflowed or self._closed

    def close(self) -> None:
        """Stop receiving changes and wake a reader waiting in :meth:`get` or :meth:`wait`."""
        self._feed.drop(self)
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def put(self, changes: Iterable[Change]) -> None:
        """Queue ``changes`` (the engine's side); never blocks. On overflow, drop everything queued."""
        with self._ready:
            if self._closed:
                return
            self._queue.extend(changes)
            if len(self._queue) > self._maxsize:
                self._queue.clear()
                self._overflowed = True
            self._ready.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ChangeFeed:
    """The engine's side of the feed: the open subscriptions, and publishing to them.

    ``publish`` is called by the engine with the download's ordering lock
    held; with no subscription open it costs one attribute read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards replacing the tuple, never held while publishing
        self._subscriptions: tuple[Subscription, ...] = ()
        self._closed = False

    def subscribe(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new open subscription (a closed one if the feed is closed)."""
        subscription = Subscription(self, maxsize)
        with self._lock:
            if not self._closed:
                self._subscriptions = (*self._subscriptions, subscription)
                return subscription
        subscription.close()
        return subscription

    def publish(self, kind: ChangeKind, records: Iterable[Record]) -> None:
        """Queue a ``kind`` change of each of ``records`` on every open subscription.

        The caller holds the downloads' lock. With no subscription (the
        usual case) nothing is made: ``records`` is not even iterated.
        """
        subscriptions = self._subscriptions
        if subscriptions:
            changes = [Change(kind, record) for record in records]
            for subscription in subscriptions:
                subscription.put(changes)

    def drop(self, subscription: Subscription) -> None:
        """Forget ``subscription`` (it is closing)."""
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    def close(self) -> None:
        """Close every subscription; later ones are made closed."""
        with self._lock:
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, ()
        for subscription in subscriptions:
            subscription.close()
