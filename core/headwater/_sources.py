"""Turning candidate plugins into sources: validation, names, aliases, settings, policies.

A :class:`SourceRegistry` registers each candidate with pluggy on its own.
A candidate that breaks a rule of the contract (judged by
:mod:`headwater._contract`: its name, hooks, aliases, settings class,
policy) or claims a taken name or alias is left out and reported as a
broken :class:`SourceInfo`; the others are usable. A usable
source whose settings lack a required value or hold an invalid one is kept,
as needing configuration (see :mod:`headwater._settings`). A hook implementation whose name
headwater does not define (a misspelling) leaves the source out too, unless
it is marked ``hookimpl(optionalhook=True)``.

Source names are claimed before aliases, so an alias equal to another
source's name always loses; of two sources claiming the same alias, the one
offered first keeps it (discovery offers them sorted by name).

pluggy registers and checks each source (one manager holds them all); at
load, each of a source's hooks becomes a :class:`Hook` that calls the
source's own implementation directly, with the arguments it names, as
pluggy would, so a call costs what the implementation does and not the
number of installed sources (``bench/dispatch.py``; docs/architecture.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from headwater import hookspecs
from headwater._contract import alias_names, rate_policy, register, settings_class, source_name
from headwater._discovery import Candidate, discover, one_line
from headwater._errors import HeadwaterError, PluginConflictError, PluginError, UnknownSourceError
from headwater._policy import RatePolicy
from headwater._settings import (
    NO_SETTINGS,
    SettingInfo,
    SettingProblem,
    SettingsInput,
    SettingsLayers,
    SourceSettings,
    build_settings,
)

log = logging.getLogger("headwater")


@attrs.frozen
class PolicyOverride:
    """Some fields of a source's :class:`RatePolicy` to change, keeping the rest as the plugin declares.

    ``PolicyOverride({"delay": 5})``. :meth:`apply` raises TypeError for a
    field RatePolicy does not have and InvalidPolicyError for a bad value.
    """

    changes: Mapping[str, object]

    def apply(self, policy: RatePolicy) -> RatePolicy:
        """``policy`` with the changes made (validated as a new RatePolicy)."""
        unknown = sorted(set(self.changes) - {a.name for a in attrs.fields(RatePolicy)})
        if unknown:
            raise TypeError(f"RatePolicy has no field(s) {', '.join(unknown)}")
        return attrs.evolve(policy, **self.changes)  # type: ignore[arg-type]  # attrs validates


@attrs.frozen
class SourceInfo:
    """What is known of one source, loaded or broken.

    ``policy`` is the one in force (the user's override if any); ``error`` is
    None for a loaded source and one line for a broken one; ``rule`` is the
    rule of the plugin contract a broken one broke (a key of
    ``headwater.testing.RULES``), None when it broke none (it failed to
    import, or claimed a name another source has). ``settings``
    describes each of its settings; ``problems`` says why a loaded source
    needs configuration (empty when it does not).
    """

    name: str
    aliases: tuple[str, ...] = ()
    policy: RatePolicy | None = None
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    settings: tuple[SettingInfo, ...] = ()
    problems: tuple[SettingProblem, ...] = ()
    rule: str | None = None

    @property
    def status(self) -> str:
        """``"ok"`` or ``"needs-configuration"`` for a loaded source, ``"broken"`` for one left out."""
        if self.error is not None:
            return "broken"
        return "needs-configuration" if self.problems else "ok"


class Hook:
    """One hook of one source, called with keyword arguments as a pluggy hook is; it reaches only that source.

    Returns what pluggy's call returns: for a ``firstresult`` hook the
    implementation's result (None when the source has none); for another a
    list of its result, empty when it returned None or the source has none.
    Raises what the implementation raises. The implementation gets, in
    order, the arguments it names (a hook's implementation may leave some
    out), on the calling thread; no lock is taken.

    Built by :func:`source_hook`; a call is one Python call of the
    implementation, whatever number of sources is installed. An
    implementation marked ``wrapper`` or ``hookwrapper`` is called through
    pluggy instead, which gives those their meaning.
    """

    __slots__ = ("name", "_function", "_argnames", "_firstresult")

    def __init__(
        self, name: str, function: Callable[..., Any] | None, argnames: Sequence[str], firstresult: bool
    ) -> None:
        self.name = name
        self._function = function
        self._argnames = tuple(argnames)
        self._firstresult = firstresult

    def __call__(self, **kwargs: object) -> Any:
        function = self._function
        if function is None:
            return None if self._firstresult else []
        result = function(*[kwargs[a] for a in self._argnames])
        if self._firstresult:
            return result
        return [] if result is None else [result]

    def __repr__(self) -> str:
        return f"<Hook {self.name}>"


def source_hook(
    pm: pluggy.PluginManager, name: str, plugin: object, others: Sequence[object]
) -> tuple[Callable[..., Any], bool]:
    """The hook ``name`` of ``plugin`` (registered with ``pm``, as ``others`` are), and whether it has it.

    A :class:`Hook` calling ``plugin``'s implementation, or pluggy's caller
    of that hook without ``others`` for an implementation that is a wrapper.
    """
    caller: pluggy.HookCaller = getattr(pm.hook, name)
    firstresult = bool(caller.spec is not None and caller.spec.opts.get("firstresult"))
    impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
    if not impls:
        return Hook(name, None, (), firstresult), False
    impl = impls[0]
    if impl.wrapper or impl.hookwrapper:
        return pm.subset_hook_caller(name, remove_plugins=others), True
    return Hook(name, impl.function, impl.argnames, firstresult), True


@attrs.define
class Source:
    """A loaded source and its own hooks (built once at load, each reaching only it; see :class:`Hook`).

    ``record_fields`` and ``translate`` are None when the source does not
    implement them.
    """

    name: str
    aliases: tuple[str, ...]
    policy: RatePolicy
    distribution: str | None
    version: str | None
    download: Callable[..., Any]
    record_fields: Callable[..., Any] | None
    translate: Callable[..., Any] | None = None
    settings: SourceSettings = NO_SETTINGS

    def label(self) -> str:
        """``name (distribution version)``, for messages."""
        return f"{self.name!r} ({_dist_label(self.distribution, self.version)})"

    def info(self) -> SourceInfo:
        return SourceInfo(
            self.name,
            self.aliases,
            self.policy,
            self.distribution,
            self.version,
            settings=self.settings.fields,
            problems=self.settings.problems,
        )


def _dist_label(distribution: str | None, version: str | None) -> str:
    if distribution is None:
        return "given directly"
    return f"{distribution} {version}" if version else distribution


class SourceRegistry:
    """The loaded sources of one engine, by name and alias."""

    def __init__(
        self,
        candidates: Iterable[Candidate],
        policies: Mapping[str, RatePolicy | PolicyOverride] | None = None,
        settings: SettingsInput | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._sources: dict[str, Source] = {}
        self._names: dict[str, str] = {}  # name or alias -> canonical name
        self._owner: dict[str, Candidate] = {}  # name or alias -> who claimed it
        self._broken: list[SourceInfo] = []
        self._settings = SettingsInput() if settings is None else settings
        registered = [c for c in candidates if self._register(c)]
        for cand in registered:
            self._admit(cand, [c.plugin for c in registered if c is not cand])
        self._apply_overrides(policies or {})
        self._check_named(self._settings.named_sources())

    # -- lookups ---------------------------------------------------------

    def resolve(self, name: str) -> Source:
        """The source called ``name`` (a canonical name or an alias)."""
        canonical = self._names.get(name)
        if canonical is None:
            raise self.unknown(name)
        return self._sources[canonical]

    def names(self) -> frozenset[str]:
        """Every name and alias a loaded source answers to."""
        return frozenset(self._names)

    def unknown(self, names: str | Sequence[str]) -> UnknownSourceError:
        """The error for ``names`` that no loaded source answers to, listing the loaded and the broken."""
        return UnknownSourceError(names, list(self._sources), [b.name for b in self._broken])

    def secret_values(self) -> frozenset[str]:
        """Every value read for a secret setting of a loaded source."""
        return frozenset().union(*(s.settings.secret_values for s in self._sources.values()))

    def infos(self, include_broken: bool = False) -> list[SourceInfo]:
        loaded = [s.info() for s in self._sources.values()]
        return sorted(loaded + (self._broken if include_broken else []), key=lambda i: i.name)

    # -- loading ---------------------------------------------------------

    def _reject(self, cand: Candidate, error: BaseException | str) -> None:
        """Report ``cand`` broken for ``error`` (a message, or what was raised: its rule is kept)."""
        rule = error.rule if isinstance(error, PluginError) else None
        if isinstance(error, BaseException):
            error = str(error) if isinstance(error, HeadwaterError) else one_line(error)
        label = _dist_label(cand.distribution, cand.version)
        log.warning("source %r (%s) left out: %s", cand.name, label, error)
        info = SourceInfo(cand.name, distribution=cand.distribution, version=cand.version, error=error)
        self._broken.append(attrs.evolve(info, rule=rule))

    def _claim(self, cand: Candidate, name: str, what: str) -> None:
        """Take ``name`` for ``cand`` or raise PluginConflictError naming both claimants."""
        other = self._owner.get(name)
        if other is not None:
            raise PluginConflictError(
                f"{what} {name!r} is already taken by source {other.name!r} "
                f"({_dist_label(other.distribution, other.version)}); this one is from "
                f"{_dist_label(cand.distribution, cand.version)}"
            )
        self._owner[name] = cand

    def _register(self, cand: Candidate) -> bool:
        """Register ``cand`` with pluggy under its name; report it and say False if unusable."""
        if cand.error is not None:
            self._reject(cand, cand.error)
            return False
        try:
            source_name(cand.name)
            self._claim(cand, cand.name, "source name")
        except PluginError as exc:
            self._reject(cand, exc)
            return False
        try:
            if self._pm.is_registered(cand.plugin):
                raise PluginError(
                    f"the same plugin object is already source {self._pm.get_name(cand.plugin)!r}; "
                    "register it once and declare other names as aliases"
                )
            register(self._pm, cand.plugin, cand.name)
        except (Exception, SystemExit) as exc:  # the rule's errors, ours, or a plugin's attribute access
            if self._pm.is_registered(cand.plugin) and self._pm.get_name(cand.plugin) == cand.name:
                self._pm.unregister(cand.plugin)
            del self._owner[cand.name]
            self._reject(cand, exc)
            return False
        return True

    def _admit(self, cand: Candidate, others: list[object]) -> None:
        """Build ``cand``'s own hooks, read its aliases and policy, or reject it."""

        def caller(hook: str) -> Callable[..., Any]:
            return source_hook(self._pm, hook, cand.plugin, others)[0]

        try:
            names = tuple(dict.fromkeys(alias_names(caller("aliases"))))
            aliases = tuple(n for n in names if n != cand.name)
            schema = settings_class(caller("settings_schema"))
            settings = build_settings((cand.name, *aliases), schema, self._settings)
            policy = rate_policy(functools.partial(caller("rate_policy"), settings=settings.values))
            for i, alias in enumerate(aliases):
                try:
                    self._claim(cand, alias, "alias")
                except PluginConflictError:
                    for taken in aliases[:i]:
                        del self._owner[taken]
                    raise
        except (Exception, SystemExit) as exc:  # the rules' errors, a clash, or a plugin's attribute access
            self._pm.unregister(cand.plugin)
            del self._owner[cand.name]
            self._reject(cand, exc)
            return
        fields, has_fields = source_hook(self._pm, "record_fields", cand.plugin, others)
        translate, has_translate = source_hook(self._pm, "translate_target", cand.plugin, others)
        source = Source(
            cand.name,
            aliases,
            policy,
            cand.distribution,
            cand.version,
            caller("download_impl"),
            fields if has_fields else None,
            translate if has_translate else None,
            settings,
        )
        self._sources[cand.name] = source
        for name in (cand.name, *aliases):
            self._names[name] = cand.name

    def _check_named(self, names: Iterable[str]) -> None:
        """Raise UnknownSourceError for settings given to a name no source has (but a broken one)."""
        broken = {b.name for b in self._broken}
        unknown = sorted(n for n in names if n not in self._names and n not in broken)
        if unknown:
            raise self.unknown(unknown)

    def _apply_overrides(self, policies: Mapping[str, RatePolicy | PolicyOverride]) -> None:
        """Replace a source's policy, or change some of its fields."""
        broken = {b.name for b in self._broken}
        for key, policy in policies.items():
            if not isinstance(policy, RatePolicy | PolicyOverride):
                raise TypeError(
                    f"policies[{key!r}] must be a RatePolicy or a PolicyOverride, got {type(policy).__name__}"
                )
            if key in broken and key not in self._names:
                continue  # the source is reported broken; its policy has nothing to act on
            source = self.resolve(key)
            if isinstance(policy, PolicyOverride):
                try:
                    policy = policy.apply(source.policy)
                except TypeError as exc:
                    raise TypeError(f"policies[{key!r}]: {exc}") from exc
            source.policy = policy


def load_sources(
    *,
    plugins: Mapping[str, object] | None = None,
    policies: Mapping[str, RatePolicy | PolicyOverride] | None = None,
    load: Collection[str] | None = None,
    block: Collection[str] = (),
    settings: Mapping[str, Mapping[str, object]] | None = None,
    settings_layers: SettingsLayers | None = None,
) -> SourceRegistry:
    """The loaded sources, from the arguments :class:`~headwater.Engine` takes for them.

    ``plugins`` (name to plugin) are the sources when given, and nothing is
    discovered; otherwise the installed ones are (``load`` and ``block``
    choose among them). Raises what :class:`SourceRegistry` raises.
    """
    if plugins is None:
        candidates = discover(only=load, block=block)
    else:
        candidates = [Candidate(n, p) for n, p in plugins.items()]
    return SourceRegistry(candidates, policies, SettingsInput.read(settings, settings_layers))
