"""Turning candidate plugins into sources: validation, names, aliases, settings, policies.

A :class:`SourceRegistry` registers each candidate with pluggy on its own.
A candidate that fails validation, lacks ``download_impl``, declares a bad
policy or settings class or claims a taken name or alias is left out and
reported as a broken :class:`SourceInfo`; the others are usable. A usable
source whose settings lack a required value or hold an invalid one is kept,
as needing configuration (see :mod:`headwater._settings`). A hook implementation whose name
headwater does not define (a misspelling) leaves the source out too, unless
it is marked ``hookimpl(optionalhook=True)``.

Source names are claimed before aliases, so an alias equal to another
source's name always loses; of two sources claiming the same alias, the one
offered first keeps it (discovery offers them sorted by name).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs
import pluggy

from headwater import hookspecs
from headwater._discovery import Candidate, one_line
from headwater._errors import HeadwaterError, PluginConflictError, PluginError, UnknownSourceError
from headwater._policy import RatePolicy
from headwater._settings import (
    NO_SETTINGS,
    SettingInfo,
    SettingProblem,
    SettingsInput,
    SourceSettings,
    build_settings,
    check_settings_class,
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


NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a legal source name or alias: lowercase ``[a-z0-9][a-z0-9_-]*``."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


@attrs.frozen
class SourceInfo:
    """What is known of one source, loaded or broken.

    ``policy`` is the one in force (the user's override if any); ``error`` is
    None for a loaded source and one line for a broken one. ``settings``
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

    @property
    def status(self) -> str:
        """``"ok"`` or ``"needs-configuration"`` for a loaded source, ``"broken"`` for one left out."""
        if self.error is not None:
            return "broken"
        return "needs-configuration" if self.problems else "ok"


@attrs.define
class Source:
    """A loaded source and its own hook callers (built once, reaching only it)."""

    name: str
    aliases: tuple[str, ...]
    policy: RatePolicy
    distribution: str | None
    version: str | None
    download: pluggy.HookCaller
    record_fields: pluggy.HookCaller | None
    translate: pluggy.HookCaller | None = None
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


def _alias_names(results: list[object]) -> list[str]:
    """The names in the ``aliases`` hook's results (one iterable, or None, per implementation).

    Raises PluginError for a result that is not a list of names, or a name
    that is not a legal source name.
    """
    names: list[object] = []
    for result in results:
        if result is None:
            continue
        if isinstance(result, str | bytes) or not isinstance(result, Iterable):
            raise PluginError(
                f"aliases returned a {type(result).__name__}, {result!r}; return a list of names"
            )
        names.extend(result)
    bad = [n for n in names if not is_valid_name(n)]
    if bad:
        raise PluginError(f"invalid alias(es) {bad!r}: use lowercase [a-z0-9][a-z0-9_-]*")
    return [str(n) for n in names]


def _implements(hook: pluggy.HookCaller, plugin: object) -> bool:
    return any(i.plugin is plugin for i in hook.get_hookimpls())


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

    def _reject(self, cand: Candidate, error: str) -> None:
        label = _dist_label(cand.distribution, cand.version)
        log.warning("source %r (%s) left out: %s", cand.name, label, error)
        self._broken.append(
            SourceInfo(cand.name, distribution=cand.distribution, version=cand.version, error=error)
        )

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
        if not is_valid_name(cand.name):
            self._reject(cand, f"invalid source name {cand.name!r}: use lowercase [a-z0-9][a-z0-9_-]*")
            return False
        try:
            self._claim(cand, cand.name, "source name")
        except PluginConflictError as exc:
            self._reject(cand, str(exc))
            return False
        try:
            if self._pm.is_registered(cand.plugin):
                raise PluginError(
                    f"the same plugin object is already source {self._pm.get_name(cand.plugin)!r}; "
                    "register it once and declare other names as aliases"
                )
            self._pm.register(cand.plugin, name=cand.name)
            unknown = [
                c.name
                for c in self._pm.get_hookcallers(cand.plugin) or []
                if c.spec is None
                and any(i.plugin is cand.plugin and not i.optionalhook for i in c.get_hookimpls())
            ]
            if unknown:
                raise PluginError(f"implements unknown hook(s): {', '.join(sorted(unknown))}")
            if not any(i.plugin is cand.plugin for i in self._pm.hook.download_impl.get_hookimpls()):
                raise PluginError("does not implement download_impl")
        except (Exception, SystemExit) as exc:  # pluggy's errors, ours, or a plugin's attribute access
            if self._pm.is_registered(cand.plugin) and self._pm.get_name(cand.plugin) == cand.name:
                self._pm.unregister(cand.plugin)
            del self._owner[cand.name]
            self._reject(cand, one_line(exc))
            return False
        return True

    def _admit(self, cand: Candidate, others: list[object]) -> None:
        """Build ``cand``'s own hook callers, read its aliases and policy, or reject it."""

        def caller(hook: str) -> pluggy.HookCaller:
            return self._pm.subset_hook_caller(hook, remove_plugins=others)

        try:
            names = tuple(dict.fromkeys(_alias_names(caller("aliases")())))
            aliases = tuple(n for n in names if n != cand.name)
            schema = caller("settings_schema")()
            if schema is not None:
                schema = check_settings_class(schema)
            settings = build_settings((cand.name, *aliases), schema, self._settings)
            policy = caller("rate_policy")(settings=settings.values)
            if policy is None:
                policy = RatePolicy()
            elif not isinstance(policy, RatePolicy):
                raise PluginError(f"rate_policy returned {type(policy).__name__}, not a RatePolicy")
            for i, alias in enumerate(aliases):
                try:
                    self._claim(cand, alias, "alias")
                except PluginConflictError:
                    for taken in aliases[:i]:
                        del self._owner[taken]
                    raise
        except (Exception, SystemExit) as exc:  # a plugin's hook can raise anything
            self._pm.unregister(cand.plugin)
            del self._owner[cand.name]
            self._reject(cand, one_line(exc) if not isinstance(exc, HeadwaterError) else str(exc))
            return
        fields = caller("record_fields")
        translate = caller("translate_target")
        source = Source(
            cand.name,
            aliases,
            policy,
            cand.distribution,
            cand.version,
            caller("download_impl"),
            fields if _implements(fields, cand.plugin) else None,
            translate if _implements(translate, cand.plugin) else None,
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
