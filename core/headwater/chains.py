"""Fallback chains: one download tried on several sources in turn.

A :class:`Chain` names sources in order; :func:`resolve_chain` turns the
names into loaded sources (aliases resolved, duplicates dropped keeping the
first) and :func:`translate` asks a source whether it can take a target.
How a download moves along its chain is the engine's business (see
``docs/resilience.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import attrs

from headwater.discovery import one_line
from headwater.errors import SourceSkippedWarning, UnknownSourceError
from headwater.sources import Source, SourceRegistry


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


def resolve_chain(registry: SourceRegistry, chain: Chain) -> tuple[Source, ...]:
    """The chain's sources, aliases resolved and duplicates dropped keeping the first.

    Raises UnknownSourceError for unknown names (all of them when strict,
    or when none is known); warns with SourceSkippedWarning otherwise.
    """
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
        raise UnknownSourceError(unknown, [i.name for i in registry.infos()])
    if unknown:
        warnings.warn(
            f"fallback chain: left out unknown source(s) {', '.join(map(repr, unknown))}",
            SourceSkippedWarning,
            stacklevel=3,
        )
    return tuple(found.values())


def translate(source: Source, target: str) -> tuple[str | None, str]:
    """The target ``source`` wants for ``target`` and, if it declines, why (one line).

    Returns ``(target, "")`` or ``(None, reason)``. Never raises: whatever the
    plugin's ``translate_target`` raises becomes the reason.
    """
    if source.translate is None:
        return target, ""
    try:
        mapped = source.translate(target=target)
    except Exception as exc:  # the plugin boundary
        return None, f"translate_target raised {one_line(exc)}"
    if mapped is None:
        return None, "cannot take the target (translate_target returned None)"
    if not isinstance(mapped, str) or not mapped:
        return None, f"translate_target returned {mapped!r}, not a non-empty string"
    return mapped, ""
