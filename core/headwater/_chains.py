"""Fallback chains: one download tried on several sources in turn.

A :class:`Chain` names sources in order; :func:`resolve_chain` turns it (or
one source name) into loaded sources (aliases resolved, duplicates dropped
keeping the first). :func:`translate` asks one source whether it can take a
target; :func:`find_taker` and :func:`first_taker` ask the sources of a chain
in turn, for the submit and for each move down the chain. The move itself,
which holds both sources' locks, is :mod:`headwater._fallback`'s (see
``docs/resilience.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import attrs

from headwater._discovery import one_line
from headwater._errors import SourceSkippedWarning, TargetRejectedError, UnknownSourceError
from headwater._records import Tried
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
