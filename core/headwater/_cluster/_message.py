"""The message a scheduler sends a worker, and the Dramatiq broker that carries it.

A message names a download that already holds a slot of its source: its
id, its source, the attempts its record had when the scheduler sent it,
and the lease the slot was granted for. The record itself is in
PostgreSQL; the slot's holder is ``<id>:<attempt>`` (:attr:`Assignment.holder`),
so a message sent again for a later attempt names another holder, and a
stale one (redelivered after its worker died) finds its lease gone and its
record moved on.

Messages travel on Dramatiq's Redis broker, in the queue :data:`QUEUE` to
the actor :data:`ACTOR`, and are acknowledged after the actor returns
(after the download ended); the broker has no middleware: no retries (the
scheduler decides what runs again), no time limit (a download takes as
long as it takes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import dramatiq
from dramatiq.brokers.redis import RedisBroker

from headwater._cluster._setup import redis_client
from headwater._codec import plain, structure

log = logging.getLogger("headwater.cluster")

#: The Dramatiq queue the downloads go to.
QUEUE = "headwater"

#: The Dramatiq actor that runs one download.
ACTOR = "headwater.run"


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number of seconds > 0, got {value!r}")


@attrs.frozen
class Assignment:
    """One download to run, holding a slot of its source (the body of a message).

    Attributes:
        download_id: the record's id.
        source: the canonical name of the source the slot is of.
        attempts: the record's ``attempts`` as the scheduler wrote it
            (QUEUED); the worker starts attempt ``attempts + 1``, and only
            from that state and count.
        lease: seconds the slot's lease lasts without a renewal.
    """

    download_id: str
    source: str
    attempts: int
    lease: float = attrs.field(validator=_positive)

    @property
    def attempt(self) -> int:
        """The attempt this message starts."""
        return self.attempts + 1

    @property
    def holder(self) -> str:
        """The slot's holder: ``<id>:<attempt>``."""
        return f"{self.download_id}:{self.attempt}"

    def payload(self) -> dict[str, object]:
        """The message's body, as JSON values."""
        body = plain(self)
        assert isinstance(body, dict)
        return body

    @classmethod
    def read(cls, payload: object) -> Assignment:
        """The assignment a message's ``payload`` holds; ValueError or TypeError, saying why, if none."""
        return structure(payload, cls)


class _BrokerWithoutDelays(RedisBroker):
    """Dramatiq's Redis broker, declaring no delay queues: a queue is declared alone.

    Nothing here is sent with a delay, and a Dramatiq worker runs a consumer
    for each declared delay queue, which polls Redis all the time (every
    worker timeout while idle), for nothing.
    """

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)


def broker(url: str, namespace: str = "headwater", *, one_thread: bool = False) -> RedisBroker:
    """A Dramatiq Redis broker on ``url`` (``redis://host:port/db``): no middleware, its queue declared.

    Its client is :func:`~headwater._cluster._setup.redis_client`'s, whose
    calls time out: a send to a Redis that stopped answering raises. It has
    no delay queue (no message is sent with a delay), so a worker polls one
    queue only.
    """
    client = redis_client(url, one_thread=one_thread)  # one_thread: a broker only one thread sends with
    found = _BrokerWithoutDelays(client=client, namespace=namespace, middleware=[])  # type: ignore[no-untyped-call]
    found.declare_queue(QUEUE)
    return found


def send(carrier: dramatiq.Broker, assignment: Assignment) -> None:
    """Put ``assignment`` on ``carrier``'s queue; raises what the broker raises when it cannot."""
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=QUEUE, actor_name=ACTOR, args=(assignment.payload(),), kwargs={}, options={}
    )
    carrier.enqueue(message)


def declare(carrier: dramatiq.Broker, run: Callable[[Assignment], object]) -> None:
    """Make ``run`` the actor of :data:`ACTOR` on ``carrier``: each message's assignment is handed to it.

    A payload that is no assignment is logged and acknowledged (it never
    will be one). ``run`` should not raise; what it raises is logged by
    Dramatiq and the message is acknowledged all the same.
    """

    def actor(payload: object) -> None:
        try:
            assignment = Assignment.read(payload)
        except (ValueError, TypeError) as exc:
            log.error("a message that is no download: %s", exc)
            return
        run(assignment)

    dramatiq.Actor(actor, broker=carrier, actor_name=ACTOR, queue_name=QUEUE, priority=0, options={})
