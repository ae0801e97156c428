"""Fallback chains: one download tried on several sources in turn.

A :class:`Chain` names sources in order; :func:`resolve_chain` turns it (or
one source name) into loaded sources (aliases resolved, duplicates dropped
keeping the first). :func:`translate` asks one source whether it can take a
target; :func:`find_taker` and :func:`first_taker` ask the sources of a chain
in turn, for the submit and for each move down the chain; :func:`fall_back`
and :func:`move_down` make that move, which holds both sources' locks (see
``docs/resilience.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import attrs

from headwater._attempt import moved_down
from headwater._discovery import one_line
from headwater._errors import SourceSkippedWarning, TargetRejectedError, UnknownSourceError
from headwater._outcomes import end_broken, fail
from headwater._records import Job, Record, State, Tried
from headwater._shard import Shard, Shards
from headwater._sources import Source, SourceRegistry


def _names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _not_empty(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("a Chain needs at least one source name")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise TypeError(f"Chain source names must be strings, got {bad!r}")


@attrs.frozen
class Chain:
    """Sources to try one after another until one delivers.

    Attributes:
        sources: source names or aliases, first choice first (a list or tuple
            is converted; at least one).
        strict: with True (the default) a name that no loaded source answers
            to fails the submit with :class:`UnknownSourceError` naming every
            such name; with False it is left out with a
            :class:`SourceSkippedWarning` (the submit still fails if no name
            is known).
    """

    sources: tuple[str, ...] = attrs.field(converter=_names, validator=_not_empty)
    strict: bool = True


def resolve_chain(registry: SourceRegistry, names: str | Sequence[str] | Chain) -> tuple[Source, ...]:
    """The sources ``names`` names, aliases resolved and duplicates dropped keeping the first.

    ``names`` is one source name or alias (a chain of one), a sequence of
    them (a strict :class:`Chain`) or a :class:`Chain`. Raises
    UnknownSourceError for unknown names (all of them when strict, or when
    none is known; a single name raises as ``SourceRegistry.resolve`` does),
    TypeError or ValueError for a sequence that is no valid :class:`Chain`,
    and warns with SourceSkippedWarning otherwise, attributed to the caller's
    caller (``Engine.submit``'s).
    """
    if isinstance(names, str):
        return (registry.resolve(names),)
    chain = names if isinstance(names, Chain) else Chain(names)
    found: dict[str, Source] = {}
    unknown: list[str] = []
    for name in chain.sources:
        try:
            source = registry.resolve(name)
        except UnknownSourceError:
            unknown.append(name)
            continue
        found.setdefault(source.name, source)
    if unknown and (chain.strict or not found):
        raise registry.unknown(unknown)
    if unknown:
        warnings.warn(
            f"fallback chain: left out unknown source(s) {', '.join(map(repr, unknown))}",
            SourceSkippedWarning,
            stacklevel=3,
        )
    return tuple(found.values())


def translate(source: Source, target: str) -> tuple[str | None, str]:
    """The target ``source`` wants for ``target`` and, if it declines, why (one line).

    Returns ``(target, "")`` or ``(None, reason)``. A source that needs
    configuration declines without being asked. Never raises: whatever the
    plugin's ``translate_target`` raises becomes the reason.
    """
    settings = source.settings
    if settings.needs_configuration:
        return None, "needs configuration: " + "; ".join(map(str, settings.problems))
    if source.translate is None:
        return target, ""
    try:
        mapped = source.translate(target=target, settings=settings.values)
    except (Exception, SystemExit) as exc:  # the plugin boundary (a Ctrl-C still stops a submit)
        return None, f"translate_target raised {one_line(exc)}"
    if mapped is None:
        return None, "cannot take the target (translate_target returned None)"
    if not isinstance(mapped, str) or not mapped:
        return None, f"translate_target returned {mapped!r}, not a non-empty string"
    return mapped, ""


@attrs.frozen
class Taker:
    """The source of a chain that takes a target, found by :func:`find_taker`.

    Attributes:
        index: its position among the sources asked (0 for the first).
        source: the source.
        target: the target in the source's own form (from ``translate_target``).
    """

    index: int
    source: Source
    target: str


def find_taker(sources: Iterable[Source], target: str) -> tuple[Taker | None, tuple[Tried, ...]]:
    """The first of ``sources`` that takes ``target`` (None if none does), and who declined before it.

    ``sources`` is consumed lazily: those after the taker are not asked (nor,
    if it is a generator, made). Each declining source becomes a
    ``Tried(name, reason)``, in order. Runs ``translate_target`` hooks, so
    call it without holding any engine lock. Never raises (see :func:`translate`).
    """
    declined: list[Tried] = []
    for i, src in enumerate(sources):
        mapped, why = translate(src, target)
        if mapped is not None:
            return Taker(i, src, mapped), tuple(declined)
        declined.append(Tried(src.name, why))
    return None, tuple(declined)


def first_taker(chain: tuple[Source, ...], target: str) -> tuple[tuple[Source, ...], str, tuple[Tried, ...]]:
    """The chain from its first source that takes ``target``, that source's target, and who declined.

    Raises TargetRejectedError, naming every source and its reason, when no
    source of the chain takes it.
    """
    taker, declined = find_taker(chain, target)
    if taker is None:
        reasons = "; ".join(f"{t.source}: {t.error}" for t in declined)
        raise TargetRejectedError(f"no source can take target {target!r}: {reasons}")
    return chain[taker.index :], taker.target, declined


def fall_back(shards: Shards, shard: Shard, download_id: str, error: str) -> None:
    """Move a chain download that failed on ``shard`` with ``error`` to the next source that takes it.

    Call it without locks, while the record is still RUNNING on ``shard``
    (its attempt ended by :meth:`Download.end` or :meth:`Download.expire`).
    The fallbacks' ``translate_target`` hooks run without locks; the move
    itself is :func:`move_down`. Fails the download when no source is left,
    unless it was cancelled or removed meanwhile. Never raises: if a step
    fails (a fallback's ``translate_target`` raising what its boundary lets
    through, such as KeyboardInterrupt), the download FAILS instead.
    """
    try:
        record = shard.records.get(download_id)
        if record is None:
            return
        fallbacks = (shards.registry.resolve(name) for name in record.fallbacks)
        taker, declined = find_taker(fallbacks, record.target)
        if taker is not None:
            move_down(shards, shard, record, error, taker, declined)
            return
        with shard.lock:
            current = shard.records.get(download_id)
            if current is not None and current.state is State.RUNNING:
                fail(shard, current, error, declined)
                shard.logger.info("download %s failed on every source of its chain", download_id)
    except BaseException as exc:  # the last resort: this runs on a worker or the watchdog thread
        with shard.lock:
            end_broken(shard, download_id, exc)


def move_down(
    shards: Shards, shard: Shard, record: Record, error: str, taker: Taker, declined: tuple[Tried, ...]
) -> None:
    """Requeue ``record``'s download, which failed with ``error`` on ``shard``, on ``taker``'s source.

    ``record`` is as read without a lock while it was RUNNING on
    ``shard``; ``taker`` and ``declined`` are :func:`find_taker`'s answer
    for its ``fallbacks``. Its ``tried`` gains this source's failure and
    ``declined``. Call it with no lock held: it takes both sources' locks
    in name order, so a cancel either lands first (and nothing moves) or
    finds the record on its new source. The QUEUED record is committed
    through :meth:`Shard.move`, entered in ``shards.home`` before it leaves
    ``shard`` (see :meth:`Shards.raise_unless_moved`), then the download
    (its next job set) is put on the new source's worker.
    """
    download_id, name = record.id, taker.source.name  # the name now, should the chain say an alias
    dest = shards.of(name)
    first, second = sorted((shard, dest), key=lambda s: s.source.name)
    with first.lock, second.lock:
        current = shard.records.get(download_id)
        download = shard.live.get(download_id)
        if current is None or current.state is not State.RUNNING or download is None:
            return  # cancelled or removed meanwhile
        moved = shard.move(current, State.QUEUED, **moved_down(current, error, taker, declined))
        assert moved is not None, "RUNNING -> QUEUED is always legal"
        dest.records[download_id] = moved
        shards.home[download_id] = dest
        del shard.records[download_id]
        del shard.live[download_id]
        dest.live[download_id] = download
        download.again(Job(download_id, name, taker.target, moved.display_name))
        dest.worker.put(download)
    shard.logger.info("download %s failed on %s (%s); trying %s", download_id, record.source, error, name)
