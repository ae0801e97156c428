"""The plugin contract: each rule one function, so that the registry, the engine and the kit judge alike.

A rule function takes what a plugin handed back (or the plugin itself) and
returns it checked, or raises :class:`~headwater.PluginError` (a
:class:`~headwater.FieldConflictError` for a core record field) whose
``rule`` is the rule's name, a key of :data:`RULES`. The message says what
the plugin did in one clause, with no final period: the registry and the
engine show it as it is, and the kit (:mod:`headwater.testing`) makes it
the sentence of a :class:`~headwater.ContractError`.

Who calls which: the registry (:mod:`headwater._sources`) :func:`source_name`,
:func:`register`, :func:`alias_names`, :func:`settings_class` and
:func:`rate_policy` when a source loads; the engine :func:`record_fields` at
submit and :func:`returned_file` when ``download_impl`` returns;
``ctx.describe`` :func:`described`; and the kit all of them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pluggy

from headwater._discovery import one_line
from headwater._errors import FieldConflictError, InvalidTargetError, PluginError, UnsafePathError
from headwater._files import landed_file
from headwater._policy import RatePolicy
from headwater._records import CORE_FIELDS
from headwater._settings import (
    FIELD_PATTERN,
    converter,
    default_value,
    is_secret,
    secret_repr,
    supported_type,
    type_text,
)

T = TypeVar("T")

#: Every rule of the contract, by the name a broken one gives (``PluginError.rule``,
#: ``ContractError.rule``). Kept in the order a source meets them.
RULES: Mapping[str, str] = {
    "name": "the source's name (its entry point's name) is lowercase [a-z0-9][a-z0-9_-]*",
    "hooks": (
        "the plugin registers with pluggy, implements download_impl, and implements no hook headwater "
        "lacks unless it is marked hookimpl(optionalhook=True)"
    ),
    "aliases": "aliases() returns an iterable of valid names (lowercase [a-z0-9][a-z0-9_-]*), not a string",
    "settings": (
        "settings_schema() returns None or a frozen attrs class whose settings are public __init__ "
        "arguments named lowercase [a-z][a-z0-9_]*, of a supported type, with a default of that type, "
        "secrets redacted in the repr; it builds from its defaults and from the values a test gives"
    ),
    "rate-policy": "rate_policy() returns a RatePolicy or None",
    "record-fields": (
        "record_fields(job) raises nothing but InvalidTargetError, even for a strange target, and "
        "that for none of the downloadable targets; it returns None or a mapping of str keys to plain "
        "values (str, int, float, bool, None) that sets no core field but a non-empty 'username'; "
        "it opens no network connection and returns quickly"
    ),
    "described-fields": (
        "ctx.describe gets a display name that is a non-empty str or None, and fields under the rules "
        "of record_fields"
    ),
    "download": "download_impl returns a path for every target the test names as downloadable",
    "download-path": "download_impl returns the path of a regular file inside ctx.dest_dir",
    "progress": "progress reports never go backwards and never exceed the total",
    "cancel": (
        "download_impl returns within the bound once ctx.cancelled is set, and leaves nothing it "
        "wrote in ctx.dest_dir but the file it returns (which the engine deletes)"
    ),
}

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
NAME_HINT = "use lowercase [a-z0-9][a-z0-9_-]*"

#: The value types a record field may have.
PLAIN_TYPES: tuple[type, ...] = (str, int, float, bool, type(None))


def violation(rule: str, message: str, kind: type[PluginError] = PluginError) -> PluginError:
    """The error for a broken ``rule`` (a key of :data:`RULES`), to raise."""
    assert rule in RULES, rule
    return kind(message, rule=rule)


def hook_call(
    rule: str, what: str, call: Callable[[], T], passing: tuple[type[BaseException], ...] = ()
) -> T:
    """``call()``, a plugin's hook; what it raises becomes a PluginError of ``rule``.

    The message is ``"{what} raised ExcType: text"``. Exceptions of the
    types in ``passing`` are raised as they are; so is a KeyboardInterrupt.
    """
    try:
        return call()
    except passing:
        raise
    except (Exception, SystemExit) as exc:  # a plugin's hook can raise anything
        raise violation(rule, f"{what} raised {one_line(exc)}") from exc


# -- loading: rules "name", "hooks", "aliases", "settings", "rate-policy" ----------


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a legal source name or alias: lowercase ``[a-z0-9][a-z0-9_-]*``."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def source_name(name: object) -> str:
    """Rule "name": ``name`` (an entry point's name), checked."""
    if not is_valid_name(name):
        raise violation("name", f"invalid source name {name!r}: {NAME_HINT}")
    assert isinstance(name, str)
    return name


def register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Rule "hooks": register ``plugin`` with ``pm`` under ``name``, and check its hooks.

    Every hook it implements must be one ``pm``'s hookspecs define (with
    argument names from the spec), but for one marked
    ``hookimpl(optionalhook=True)``, which a newer headwater may define; and
    it must implement ``download_impl``. On a violation the plugin may stay
    registered: the caller unregisters it.
    """
    try:
        pm.register(plugin, name=name)
    except (Exception, SystemExit) as exc:  # pluggy's validation, or a plugin's attribute access
        raise violation("hooks", f"pluggy refused its hooks: {one_line(exc)}") from exc
    unknown = sorted(
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if caller.spec is None
        and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls())
    )
    if unknown:
        defined = sorted(c for c in vars(pm.hook) if getattr(pm.hook, c).spec is not None)
        raise violation(
            "hooks",
            f"implements unknown hook(s) {', '.join(unknown)} (headwater's hooks: {', '.join(defined)})",
        )
    if not any(i.plugin is plugin for i in pm.hook.download_impl.get_hookimpls()):
        raise violation("hooks", "does not implement download_impl, the one required hook")


def alias_names(call: Callable[[], Iterable[object]]) -> list[str]:
    """Rule "aliases": the names the ``aliases`` hook gives (``call`` calls it).

    ``call`` returns one result per implementation: an iterable of names, or None. Raises PluginError for a
    result that is a string or no iterable, a name that is not a valid
    source name, or anything the hook (or iterating its result) raises.
    """

    every: list[object] = []
    for result in hook_call("aliases", "aliases()", call):
        if result is None:
            continue
        if isinstance(result, str | bytes) or not isinstance(result, Iterable):
            raise violation("aliases", f"aliases() returned {result!r}, not an iterable of names")
        every.extend(hook_call("aliases", "aliases()", functools.partial(list, result)))
    bad = [n for n in every if not is_valid_name(n)]
    if bad:
        raise violation("aliases", f"invalid alias(es) {', '.join(map(repr, bad))}: {NAME_HINT}")
    return [str(n) for n in every]


def settings_class(call: Callable[[], object]) -> type | None:
    """Rule "settings": the class ``settings_schema`` returns (``call`` calls it), checked; None if none.

    A usable class is a frozen attrs class whose type annotations resolve;
    each field is set by ``__init__``, is named lowercase
    ``[a-z][a-z0-9_]*``, has a type :func:`~headwater._settings.supported_type`
    accepts and a default (if any) that converts as a value of that type, and
    if secret is left out of the repr or redacted in it (as
    :func:`headwater.setting` does). No message quotes a secret's default.
    """
    schema = hook_call("settings", "settings_schema()", call)
    if schema is None:
        return None
    if not isinstance(schema, type) or not attrs.has(schema):
        raise violation("settings", f"settings_schema returned {schema!r}, not an attrs class")
    try:
        attrs.resolve_types(schema)
    except Exception as exc:  # NameError and whatever else an annotation evaluates to
        raise violation(
            "settings", f"settings class {schema.__name__}: its annotations do not resolve: {one_line(exc)}"
        ) from exc
    fields = attrs.fields(schema)
    if fields and not _is_frozen(schema, fields[0].name):
        raise violation("settings", f"settings class {schema.__name__} must be frozen (@attrs.frozen)")
    for field in fields:
        where = f"settings class {schema.__name__}, field {field.name!r}"
        if not field.init or field.alias != field.name:
            raise violation("settings", f"{where}: every field must be a public __init__ argument")
        if FIELD_PATTERN.fullmatch(field.name) is None:
            raise violation("settings", f"{where}: setting names are lowercase [a-z][a-z0-9_]*")
        if not supported_type(field.type):
            raise violation(
                "settings",
                f"{where}: type {field.type!r} is not supported; use str, int, float, bool, "
                "pathlib.Path, an Enum, a list or tuple[X, ...] of those, or any of them | None",
            )
        if is_secret(field) and field.repr not in (False, secret_repr):
            raise violation(
                "settings",
                f"{where}: a secret must be redacted in the repr: declare it with "
                "headwater.setting(secret=True)",
            )
        _check_default(field, where)
    return schema


def _is_frozen(schema: type, name: str) -> bool:
    """Whether setting ``name`` on an instance of ``schema`` is refused (probed on an uninitialised one)."""
    bare: object = object.__new__(schema)
    try:
        setattr(bare, name, None)
    except attrs.exceptions.FrozenInstanceError:
        return True
    except Exception:  # an on_setattr validator refusing None: the class is not frozen
        return False
    return False


def _check_default(field: attrs.Attribute[Any], where: str) -> None:
    """The field's default, if it has one, converts as a value of its type (as a user's value would).

    ``field`` has a supported type. A factory that takes ``self`` is not called.
    """
    default: Any = field.default
    if default is attrs.NOTHING:
        return
    if isinstance(default, attrs.Factory) and default.takes_self:  # type: ignore[arg-type]  # a class at runtime
        return
    try:
        value = default_value(field)
    except Exception as exc:  # a plugin's factory can raise anything
        raise violation("settings", f"{where}: its default factory raised {one_line(exc)}") from exc
    kind: Any = field.type
    try:
        converter.structure(converter.unstructure(value), kind)
    except Exception as exc:  # cattrs' and the hooks' errors
        what = "its default" if is_secret(field) else f"its default {value!r}"
        raise violation("settings", f"{where}: {what} is not a valid {type_text(kind)}") from exc


def rate_policy(call: Callable[[], object]) -> RatePolicy:
    """Rule "rate-policy": the policy ``rate_policy`` returns (``call`` calls it); the default for None."""
    result = hook_call("rate-policy", "rate_policy()", call)
    if result is None:
        return RatePolicy()
    if not isinstance(result, RatePolicy):
        raise violation(
            "rate-policy", f"rate_policy() returned {type(result).__name__}, not a RatePolicy or None"
        )
    return result


# -- running: rules "record-fields", "described-fields", "download-path" -------------


def _plain_fields(result: object, what: str, rule: str) -> tuple[str | None, dict[str, object]]:
    """The ``username`` and the other fields of one mapping ``result``, checked under ``rule``."""
    if result is None:
        return None, {}
    if not isinstance(result, Mapping):
        raise violation(rule, f"{what} returned {type(result).__name__}, not a mapping or None")
    username: str | None = None
    fields: dict[str, object] = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise violation(rule, f"{what} returned the key {key!r}; keys must be str")
        if not isinstance(value, PLAIN_TYPES):
            raise violation(
                rule, f"{what} returned {key!r}={value!r}; values must be str, int, float, bool or None"
            )
        if key == "username":
            if not isinstance(value, str) or not value:
                raise violation(rule, f"{what} returned username={value!r}; it must be a non-empty str")
            username = value
        elif key in CORE_FIELDS:
            raise violation(
                rule,
                f"{what} returned {key!r}, a core record field; only 'username' may be set",
                FieldConflictError,
            )
        else:
            fields[key] = value
    return username, fields


def record_fields(call: Callable[[], Iterable[object]], what: str) -> tuple[str | None, dict[str, object]]:
    """Rule "record-fields": the ``username`` (None if none) and extra fields ``record_fields`` gives.

    ``call`` calls the hook, one result per implementation (a mapping, or
    None); ``what`` names it in messages (``record_fields of source 'x'
    (dist 1.0)``). An InvalidTargetError it raises (the target is refused)
    is raised as it is. Raises FieldConflictError for a core record field
    other than ``username``, PluginError for anything else that breaks the
    rule (anything else the hook raises among it).
    """
    results = hook_call("record-fields", what, call, passing=(InvalidTargetError,))
    username: str | None = None
    extra: dict[str, object] = {}
    for result in results:
        named, fields = _plain_fields(result, what, "record-fields")
        username = named or username
        extra.update(fields)
    return username, extra


def described(
    display_name: object, fields: Mapping[str, object]
) -> tuple[str | None, str | None, dict[str, object]]:
    """Rule "described-fields": what ``ctx.describe`` was given, as (display name, username, extra)."""
    if display_name is not None and (not isinstance(display_name, str) or not display_name):
        raise violation(
            "described-fields",
            f"ctx.describe got display_name={display_name!r}; it must be a non-empty str or None",
        )
    username, extra = _plain_fields(fields, "ctx.describe", "described-fields")
    return display_name, username, extra


def returned_file(dest_dir: Path, returned: object) -> tuple[Path, int]:
    """Rule "download-path": the resolved file ``download_impl`` returned, and its size.

    ``dest_dir`` is resolved. The file must be a regular file inside it
    (see :func:`headwater._files.landed_file`).
    """
    try:
        return landed_file(dest_dir, returned)  # type: ignore[arg-type]  # landed_file checks the type
    except (UnsafePathError, FileNotFoundError, TypeError) as exc:  # landed_file's own, naming the path
        raise violation("download-path", " ".join(str(exc).split())) from exc
    except Exception as exc:  # what a path-like object, or the system, raises while it is checked
        raise violation(
            "download-path", f"download_impl returned a path that cannot be checked: {one_line(exc)}"
        ) from exc
