"""Jobs, records and the one table of legal state changes.

A :class:`Job` is what a source is asked to download; a :class:`Record` is
what the engine knows about that download. Both are immutable: the engine
replaces a record with a new one on every change and readers get snapshots.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from headwater._files import Existing

C = TypeVar("C", bound=type)


def slot_init(cls: C) -> C:
    """Give the frozen, slotted attrs class ``cls`` an ``__init__`` setting each slot by its descriptor.

    attrs' ``__init__`` of a frozen class sets each field with
    ``object.__setattr__``, which looks the name up in the class on every
    call; the engine makes records (25 fields), jobs and its own small
    answers on every submit and state change, so this generated one calls
    each slot's descriptor directly (about a third less time for a record).
    Same parameters, defaults and result; a field with a validator, a
    converter, a factory, an alias, ``kw_only`` or ``init=False``, or a
    class without slots, is refused (TypeError): this one would get it
    wrong. Use it above ``@attrs.frozen``.
    """
    params: list[str] = []
    body: list[str] = []
    scope: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name = field.name
        slot = cls.__dict__.get(name)
        plain = field.validator is None and field.converter is None and field.init and not field.kw_only
        factory = isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]  # a class at run time
        if not plain or factory or field.alias != name or slot is None:
            raise TypeError(f"{cls.__name__}.{name}: only a plain field of a slotted class can be set so")
        scope[f"_set_{name}"] = slot.__set__
        body.append(f"    _set_{name}(self, {name})\n")
        if field.default is attrs.NOTHING:
            params.append(name)
        else:
            scope[f"_default_{name}"] = field.default
            params.append(f"{name}=_default_{name}")
    source = f"def __init__(self, {', '.join(params)}):\n{''.join(body)}"
    exec(compile(source, f"<{cls.__name__}.__init__>", "exec"), scope)  # noqa: S102  # the class's own names
    init = scope["__init__"]
    init.__doc__ = "Set every field; see the class."
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010  # mypy refuses an assignment to a method
    return cls


class State(enum.Enum):
    """Where a download is in its life. COMPLETED, FAILED and CANCELLED are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    # Members are singletons compared by identity, so identity is a hash that agrees
    # with equality; Enum's own hashes the name in Python, and a download's state
    # changes look states up about ten times.
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED: nothing moves a record out of them."""
        return self in _TERMINAL


_TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})

#: The legal transitions. Every state change the engine makes is checked here;
#: anything else is refused (and the record stays as it was). RUNNING -> QUEUED
#: is an attempt that ended without ending the download: a retry, a
#: Retry-After pause, or a move to the next source of a fallback chain.
TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType(
    {
        State.QUEUED: frozenset({State.RUNNING, State.CANCELLED}),
        State.RUNNING: frozenset({State.QUEUED, State.COMPLETED, State.FAILED, State.CANCELLED}),
        State.COMPLETED: frozenset(),
        State.FAILED: frozenset(),
        State.CANCELLED: frozenset(),
    }
)


def may_transition(current: State, new: State) -> bool:
    """Whether a record in ``current`` may move to ``new`` (per :data:`TRANSITIONS`)."""
    return new in TRANSITIONS[current]


#: The ``extra`` of a record whose source returned no fields (shared, read-only).
NO_EXTRA: Mapping[str, object] = MappingProxyType({})


@slot_init
@attrs.frozen(weakref_slot=False)
class Job:
    """One download, as handed to a source's ``download_impl``.

    Attributes:
        id: the download id (the record's id).
        source: the canonical source name.
        target: what to download, in the source's own terms (a URL, a track id).
        display_name: a human name for the download, or None.
        attempt: 1 for the first try on this source, counting up on each new
            attempt on it (a retry, or a try again after a Retry-After pause).
        retry_after_rounds: the Retry-After pauses this download has waited
            out on this source so far (``RatePolicy.max_retry_after_rounds``
            bounds them); counted afresh on each source and by each engine.
        retry_after_total: the seconds of those pauses in all
            (``RatePolicy.max_retry_after_total`` bounds them).
    """

    id: str
    source: str
    target: str
    display_name: str | None = None
    attempt: int = 1
    retry_after_rounds: int = 0
    retry_after_total: float = 0.0


@attrs.frozen
class Tried:
    """A source of a fallback chain that did not deliver, and why.

    Attributes:
        source: the canonical source name.
        error: one line: the error of its last attempt, "declined: ...",
            "timed out ...", or why it could not take the target.
    """

    source: str
    error: str


@slot_init
@attrs.frozen(weakref_slot=False)
class Record:
    """A snapshot of everything the engine knows about one download.

    Times are seconds since the epoch. ``progress`` runs 0..100 and is only
    meaningful when ``size`` is known. ``extra`` holds what the first source's
    ``record_fields`` returned. ``target`` is the target as submitted (a
    source's ``translate_target`` may hand it a different one).

    For a fallback chain, ``source`` is the source the download is on now,
    ``tried`` the sources that failed it so far (oldest first, with why) and
    ``fallbacks`` the sources still to try. ``attempts`` counts every start
    on every source; ``retries`` the retries used on the current source.
    ``error`` is the latest error, also while a retry is queued.

    ``existing`` is the download's own choice for a final name already
    taken (``"rename"``, ``"skip"``, ``"overwrite"``), or None for its
    source's ``RatePolicy.existing``. ``file_path`` is where the file
    landed, ``name (1).ext`` when the name was taken; ``skipped`` is true
    when, under ``skip``, a file was already there: the download is
    COMPLETED, fetched nothing, and ``file_path`` is that file.
    ``dest_dir`` is the folder the download lands in (absolute, resolved),
    chosen at submit and kept across restarts; None only in records of
    journals written before it existed, which an engine that runs them
    reads as its own ``dest_dir``.
    """

    id: str
    source: str
    target: str
    display_name: str | None
    username: str
    state: State
    created_at: float
    updated_at: float
    progress: float = 0.0
    size: int | None = None
    transferred: int = 0
    speed: float = 0.0
    time_remaining: float | None = None
    file_path: str | None = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    extra: Mapping[str, object] = NO_EXTRA
    tried: tuple[Tried, ...] = ()
    fallbacks: tuple[str, ...] = ()
    retries: int = 0
    existing: Existing | None = None
    skipped: bool = False
    dest_dir: str | None = None

    @property
    def name(self) -> str:
        """The display name if there is one, else the target."""
        return self.display_name or self.target


#: Record fields the engine owns. ``record_fields`` may set none of them
#: except ``username``.
_FIELD_NAMES: tuple[str, ...] = tuple(a.name for a in attrs.fields(Record))
CORE_FIELDS: frozenset[str] = frozenset(_FIELD_NAMES)

_FIELD_INDEX = {name: i for i, name in enumerate(_FIELD_NAMES)}

#: The copiers :func:`changed` made, by the names it was given (in their order).
_COPIERS: dict[tuple[str, ...], Callable[..., Record]] = {}


def _copier(names: tuple[str, ...]) -> Callable[..., Record]:
    """A function ``(record, *values)`` -> a copy of ``record`` with ``names`` set to ``values``.

    Generated once per set of names: one call that reads every other field
    and builds the new record, with no list, loop or lookup per change.
    Raises TypeError for a name that is not a field.
    """
    for name in names:
        if name not in _FIELD_INDEX:
            raise TypeError(f"Record has no field {name!r}")
    given = {name: f"_{i}" for i, name in enumerate(names)}
    args = ", ".join(given.get(name, f"record.{name}") for name in _FIELD_NAMES)
    source = f"def copy(record, {', '.join(given.values())}):\n    return Record({args})\n"
    scope: dict[str, Any] = {"Record": Record}
    exec(compile(source, f"<changed {', '.join(names)}>", "exec"), scope)  # noqa: S102  # names checked above
    copier: Callable[..., Record] = scope["copy"]
    _COPIERS[names] = copier
    return copier


def changed(record: Record, **changes: Any) -> Record:
    """A copy of ``record`` with ``changes`` (field name -> value): what ``attrs.evolve`` makes.

    The engine's way to change a record, used on every state change: a
    function made for the names changed (:func:`_copier`) reads every other
    field and builds the copy in one call, where ``attrs.evolve`` reads and
    checks them one by one. Raises TypeError for a name that is not a field.
    """
    names = tuple(changes)
    copier = _COPIERS.get(names) or _copier(names)
    return copier(record, *changes.values())
