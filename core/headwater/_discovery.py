"""Finding installed sources through the ``headwater.sources`` entry point group.

Each entry point is loaded on its own; one that fails to import (any
exception, ``SystemExit`` included) becomes a :class:`Candidate` with an
error instead of stopping the rest. A ``KeyboardInterrupt`` is not caught.
Whether a loaded object is a usable source is decided by
:mod:`headwater._sources`.

Environment:
    HEADWATER_DISABLE_PLUGIN_AUTOLOAD: any value but "", "0", "false" or "no"
        loads no installed source.
    HEADWATER_LOAD_PLUGINS: a comma-separated list of source names; only
        those are loaded (even when autoload is disabled), and a named source
        that is not installed is reported.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping

import attrs

from headwater._redact import redact

ENTRY_POINT_GROUP = "headwater.sources"
DISABLE_ENV = "HEADWATER_DISABLE_PLUGIN_AUTOLOAD"
LOAD_ENV = "HEADWATER_LOAD_PLUGINS"


class NamedSources(tuple[str, ...]):
    """Source names to load, with ``origin``: where they were named, for the report of one not installed.

    ``NamedSources(["file", "http"], "plugins.load of /path/headwater.toml")``
    is an ordinary tuple of names otherwise.
    """

    origin: str

    def __new__(cls, names: Iterable[str], origin: str) -> NamedSources:
        made = super().__new__(cls, names)
        made.origin = origin
        return made


@attrs.frozen
class Candidate:
    """A plugin object offered as a source, or the error that kept it from loading."""

    name: str
    plugin: object | None
    distribution: str | None = None
    version: str | None = None
    error: str | None = None


#: The most characters :func:`one_line` returns.
ONE_LINE_MAX = 1000


def one_line(exc: BaseException) -> str:
    """``ExcType: message``, folded onto one line of at most :data:`ONE_LINE_MAX` characters.

    Secret setting values are taken out (see :mod:`headwater._redact`). How
    every exception a plugin raises becomes text: a record's error, a
    fallback chain's reason, a broken source's error.

    Never raises, whatever ``exc`` is (it often comes from a plugin): an
    exception whose ``str()`` fails gives its type name alone, and the middle
    of a longer line is cut out, so both ends stay.
    """
    try:
        text = redact(" ".join(str(exc).split()))
    except Exception:
        text = ""
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(line) <= ONE_LINE_MAX:
        return line
    gap = f" [... cut from {len(line)} characters ...] "
    head = (ONE_LINE_MAX - len(gap)) * 2 // 3
    return line[:head] + gap + line[len(line) - (ONE_LINE_MAX - len(gap) - head) :]


def wanted_names(environ: Mapping[str, str]) -> frozenset[str] | None:
    """The names the environment restricts loading to; None means all installed."""
    if LOAD_ENV in environ:
        return frozenset(n.strip() for n in environ[LOAD_ENV].split(",") if n.strip())
    if environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return frozenset()
    return None


def discover(
    environ: Mapping[str, str] | None = None,
    *,
    only: Collection[str] | None = None,
    block: Collection[str] = (),
) -> list[Candidate]:
    """Load every installed ``headwater.sources`` entry point the environment allows.

    ``only`` (a configuration's list) restricts loading like
    ``HEADWATER_LOAD_PLUGINS`` when the environment sets neither variable;
    names in ``block`` are never loaded, whatever else asks for them. A name
    that is not installed becomes a broken candidate whose error says where
    it was named: the variable, ``only.origin`` for :class:`NamedSources`, or
    else "the list of sources to load".
    Entry points are taken in order of (name, distribution) so that which of
    two clashing sources wins does not depend on the order of ``sys.path``.
    """
    wanted = wanted_names(os.environ if environ is None else environ)
    origin = LOAD_ENV
    if wanted is None and only is not None:
        wanted = frozenset(only)
        origin = only.origin if isinstance(only, NamedSources) else "the list of sources to load"
    if wanted is not None and block:
        wanted = wanted - frozenset(block)
    if wanted is not None and not wanted:
        return []
    import importlib_metadata  # here, not above: a command that loads no source does not pay for it

    points = sorted(
        importlib_metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.name, ep.dist.name if ep.dist else ""),
    )
    found: list[Candidate] = []
    for ep in points:
        if (wanted is not None and ep.name not in wanted) or ep.name in block:
            continue
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # not KeyboardInterrupt: Ctrl-C while loading stops
            found.append(Candidate(ep.name, None, dist, version, f"failed to import: {one_line(exc)}"))
        else:
            found.append(Candidate(ep.name, plugin, dist, version))
    if wanted is not None:
        seen = {c.name for c in found}
        for name in sorted(wanted - seen):
            found.append(Candidate(name, None, error=f"not installed (named in {origin})"))
    return found
