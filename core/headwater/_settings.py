"""Source settings: the class a source declares, and the one frozen instance headwater builds of it.

A source's ``settings_schema`` hook returns an attrs class; each field is a
setting (its type, its default or none if required, its help text and
whether it is secret, in the field's metadata; :func:`setting` writes such
a field). The rule such a class must meet is :func:`headwater._contract.settings_class`.

:func:`build_settings` makes one instance per source from these layers,
highest first, each field taking the value of the highest layer that has it:

1. ``Engine(settings={"tidal": {...}})`` (by source name or alias);
2. the environment: ``HEADWATER_<SOURCE>_<FIELD>`` (:func:`env_name`);
3. the secrets store (:class:`~headwater.KeyStore`);
4. ``[sources.NAME.settings]`` in headwater.toml (NAME a name or alias);
5. the field's default.

Values are converted and validated by cattrs (:data:`converter`). Text (the
environment, the secrets store) is parsed: ``int``, ``float``, ``bool``
(true/false, yes/no, on/off, 1/0), paths and enum values from their text,
lists and tuples from a JSON array. A value of the wrong type, a missing
required field or an unknown key is a :class:`SettingProblem` naming the
field and where its value was read; a source with problems *needs
configuration* (:class:`SourceSettings`). No problem text ever holds the
value of a secret field; the engine registers every secret value read
(``SourceSettings.secret_values``) with :mod:`headwater._redact`.
"""

from __future__ import annotations

import enum
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.errors import AttributeValidationNote, ClassValidationError

from headwater._discovery import one_line
from headwater._keystore import KeyStore
from headwater._redact import MASK, scrub

ENV_PREFIX = "HEADWATER_"

#: Setting names: lowercase, so that the TOML key and the environment variable are plain.
FIELD_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

#: What a redacted setting shows in the instance's repr.
REDACTED = repr(MASK)


def secret_repr(_: object) -> str:
    """The repr of a secret setting's value: always ``'***'``."""
    return REDACTED


def setting(
    *,
    help: str = "",
    secret: bool = False,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
    validator: Any = None,
) -> Any:
    """An attrs field that is a setting: ``token: str = headwater.setting(help="API token", secret=True)``.

    Without ``default`` or ``factory`` the setting is required. ``help``
    is shown by ``headwater sources``; a ``secret`` is never shown, logged
    or journaled, and the instance's repr shows it as ``'***'``.
    ``validator`` is passed to :func:`attrs.field`.
    """
    return attrs.field(
        default=default,
        factory=factory,
        validator=validator,
        repr=secret_repr if secret else True,
        metadata={"help": help, "secret": secret},
    )


def env_name(source: str, field: str) -> str:
    """``HEADWATER_<SOURCE>_<FIELD>``: the source name upper-cased with ``-`` as ``_``."""
    return f"{ENV_PREFIX}{source.upper().replace('-', '_')}_{field.upper()}"


def places(source: str, field: str) -> tuple[str, ...]:
    """Where ``field`` of ``source`` can be set, highest layer first, one phrase each."""
    return (
        f"Engine(settings={{{source!r}: {{{field!r}: ...}}}})",
        f"environment variable {env_name(source, field)}",
        f"`headwater keys set {source} {field}`",
        f"`{field} = ...` under [sources.{source}.settings] in headwater.toml",
    )


# -- converting ------------------------------------------------------------

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _number_hook(
    kind: Callable[[Any], Any], accepted: type | types.UnionType, what: str
) -> Callable[[object, type], Any]:
    """A structure hook for ``kind`` (int or float): from text, or from an ``accepted`` value but a bool."""

    def structure(value: object, _: type) -> Any:
        if isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                raise ValueError(f"expected {what}") from None
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {what}, got {type(value).__name__}")
        return kind(value)

    return structure


def _structure_bool(value: object, _: type) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError("expected true or false")
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _structure_path(value: object, _: type) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError("expected a path")
    return Path(value).expanduser()


def _enum_hook(kind: type[enum.Enum], _: cattrs.Converter) -> Callable[[object, type], enum.Enum]:
    choices = ", ".join(str(m.value) for m in kind)

    def structure(value: object, _: type) -> enum.Enum:
        for member in kind:
            if value == member.value or (isinstance(value, str) and value == str(member.value)):
                return member
        raise ValueError(f"expected one of {choices}")

    return structure


def _sequence_hook(kind: Any, conv: cattrs.Converter) -> Callable[[object, type], object]:
    if typing.get_origin(kind) is list:
        items = list_structure_factory(kind, conv)
    else:
        items = homogenous_tuple_structure_factory(kind, conv)

    def structure(value: object, _: type) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("expected a JSON array") from None
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return items(value, kind)

    return structure


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _number_hook(int, int, "a whole number"))
    conv.register_structure_hook(float, _number_hook(float, int | float, "a number"))
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook_factory(_is_enum, _enum_hook)
    conv.register_structure_hook_factory(_is_sequence, _sequence_hook)
    return conv


def _is_enum(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, enum.Enum)


def _is_sequence(kind: Any) -> bool:
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


#: The one cattrs converter settings are built with (and ``sources --json`` values unstructured by).
converter = _make_converter()

_SCALARS: tuple[type, ...] = (str, int, float, bool, Path)


def _is_scalar(kind: Any) -> bool:
    return kind in _SCALARS or _is_enum(kind)


def _optional_of(kind: Any) -> Any | None:
    """``X`` for ``X | None`` (or ``Optional[X]``), else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None


def supported_type(kind: Any) -> bool:
    """Whether a setting may have type ``kind``.

    str, int, float, bool, pathlib.Path, an Enum; a list or ``tuple[X, ...]``
    of those; any of these or None (``X | None``).
    """
    inner = _optional_of(kind)
    if inner is not None:
        kind = inner
    if _is_sequence(kind):
        return _is_scalar(typing.get_args(kind)[0])
    return _is_scalar(kind)


def type_text(kind: Any) -> str:
    """A setting's type as ``headwater sources`` shows it: ``int``, ``str | None``, ``list[str]``..."""
    inner = _optional_of(kind)
    if inner is not None:
        return f"{type_text(inner)} | None"
    if _is_sequence(kind):
        return f"list[{type_text(typing.get_args(kind)[0])}]"
    if kind is Path:
        return "path"
    if _is_enum(kind):
        return "one of " + ", ".join(str(m.value) for m in kind)
    return str(getattr(kind, "__name__", kind))


# -- the settings class ----------------------------------------------------


def is_secret(field: attrs.Attribute[Any]) -> bool:
    """Whether the setting ``field`` is secret (``metadata["secret"]``)."""
    return bool(field.metadata.get("secret", False))


# -- building an instance ------------------------------------------------------


@attrs.frozen
class SettingsLayers:
    """Where settings are read from below ``Engine(settings=...)``.

    Attributes:
        environ: the environment variables (``HEADWATER_<SOURCE>_<FIELD>``);
            None for :data:`os.environ` as it is when the engine is built.
        keystore: the secrets store to read, or None for none.
        config: ``[sources.NAME.settings]`` tables of headwater.toml, by
            source name or alias.
        config_path: the file ``config`` was read from, for messages.
    """

    environ: Mapping[str, str] | None = None
    keystore: KeyStore | None = None
    config: Mapping[str, Mapping[str, object]] = attrs.field(factory=dict)
    config_path: Path | None = None


@attrs.frozen
class SettingsInput:
    """The values of every layer, read once for all sources of an engine (see :meth:`read`).

    Attributes:
        given: ``Engine(settings=...)``, by source name or alias.
        environ: the environment variables.
        stored: the secrets store's values, by source name.
        stored_in: the secrets store's file, for messages.
        config: ``[sources.NAME.settings]`` tables, by source name or alias.
        config_path: the file ``config`` was read from, for messages.

    The defaults are all empty: ``SettingsInput()`` builds every source from
    its defaults alone, ``SettingsInput(given={"x": {...}})`` from values given.
    """

    given: Mapping[str, Mapping[str, object]] = attrs.field(factory=dict)
    environ: Mapping[str, str] = attrs.field(factory=dict)
    stored: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    stored_in: Path | None = None
    config: Mapping[str, Mapping[str, object]] = attrs.field(factory=dict)
    config_path: Path | None = None

    @classmethod
    def read(
        cls, given: Mapping[str, Mapping[str, object]] | None, layers: SettingsLayers | None
    ) -> SettingsInput:
        """Read the layers: the environment as it is now, the secrets store once.

        Raises :class:`~headwater.ConfigError` for a secrets store
        that cannot be read, and TypeError for a ``given`` that is not a
        mapping of source names to mappings.
        """
        layers = SettingsLayers() if layers is None else layers
        given = {} if given is None else given
        if not isinstance(given, Mapping) or not all(isinstance(v, Mapping) for v in given.values()):
            raise TypeError("settings must map source names to mappings of setting names to values")
        keystore = layers.keystore
        return cls(
            given,
            dict(os.environ if layers.environ is None else layers.environ),
            keystore.read() if keystore is not None else {},
            keystore.path if keystore is not None else None,
            layers.config,
            layers.config_path,
        )

    def named_sources(self) -> set[str]:
        """The source names and aliases ``given`` and ``config`` hold settings for."""
        return set(self.given) | set(self.config)


@attrs.frozen
class SettingInfo:
    """One setting of a source, as ``headwater sources --json`` shows it.

    Attributes:
        name: the field name.
        type: its type, as :func:`type_text` writes it.
        default: its default as a JSON value (None when required or secret).
        required: True when it has no default.
        secret: True for a secret.
        help: the help text.
        origin: where the value in force was read ("default" for the
            default), or None when it is not set.
        value: the value in force as a JSON value; None for a secret, or when unset.
        places: where it can be set, highest layer first.
    """

    name: str
    type: str
    default: object
    required: bool
    secret: bool
    help: str
    origin: str | None
    value: object
    places: tuple[str, ...]


@attrs.frozen
class SettingProblem:
    """Why a source needs configuration: a field missing, invalid or unknown; never a secret value.

    ``field`` is None for a problem of the whole class (one of its validators).
    """

    field: str | None
    message: str

    def __str__(self) -> str:
        return self.message if self.field is None else f"{self.field}: {self.message}"


@attrs.frozen
class SourceSettings:
    """A source's settings: the instance in force, or the problems that keep it from being built.

    Attributes:
        schema: the settings class, or None when the source declares none.
        values: the frozen instance (None when there is no schema or a problem).
        fields: every setting, described.
        problems: why the source needs configuration; empty when it does not.
        secret_values: every value read for a secret setting, from any
            layer, valid or not (left out of the repr).
    """

    schema: type | None = None
    values: object | None = None
    fields: tuple[SettingInfo, ...] = ()
    problems: tuple[SettingProblem, ...] = ()
    secret_values: frozenset[str] = attrs.field(default=frozenset(), repr=False)

    @property
    def needs_configuration(self) -> bool:
        """True when a required setting is missing or a value is invalid."""
        return bool(self.problems)


#: A source that declares no settings and was given none.
NO_SETTINGS = SourceSettings()


@attrs.frozen
class _Read:
    """A value read for a field, and where it was read (``environment variable HEADWATER_X_Y``)."""

    value: object
    origin: str


def _table(
    names: Sequence[str], tables: Mapping[str, Mapping[str, object]], describe: Callable[[str], str]
) -> tuple[str | None, Mapping[str, object], list[SettingProblem]]:
    """The one table of ``tables`` keyed by a name in ``names``: (its key, it, problems)."""
    keys = [n for n in names if n in tables]
    if not keys:
        return None, {}, []
    if len(keys) > 1:
        where = " and ".join(describe(k) for k in keys)
        return None, {}, [SettingProblem(None, f"settings given twice, in {where}; keep one")]
    table = tables[keys[0]]
    if not isinstance(table, Mapping):
        return None, {}, [SettingProblem(None, f"{describe(keys[0])} must be a table of settings")]
    return keys[0], table, []


def _gather(
    names: Sequence[str], fields: Sequence[attrs.Attribute[Any]], inputs: SettingsInput
) -> tuple[dict[str, _Read], list[SettingProblem]]:
    """The value each field takes from the highest layer that has it, and the layers' problems."""
    source = names[0]
    known = {f.name for f in fields}
    problems: list[SettingProblem] = []
    found: dict[str, _Read] = {}

    def take(table: Mapping[str, object], origin: Callable[[str], str]) -> None:
        for key, value in table.items():
            if key not in known:
                listing = ", ".join(sorted(known)) if known else f"source {source!r} declares none"
                problems.append(
                    SettingProblem(str(key), f"unknown setting, in {origin(key)}; the settings: {listing}")
                )
            elif key not in found:
                found[key] = _Read(value, origin(key))

    key, table, trouble = _table(names, inputs.given, lambda k: f"Engine(settings={{{k!r}: ...}})")
    problems += trouble
    take(table, lambda f: f"Engine(settings={{{key!r}: {{{f!r}: ...}}}})")
    for field in fields:
        variable = env_name(source, field.name)
        if variable in inputs.environ and field.name not in found:
            found[field.name] = _Read(inputs.environ[variable], f"environment variable {variable}")
    stored = inputs.stored.get(source, {})
    for name in sorted(known & set(stored)):  # a stored value of a field the source dropped stays unused
        found.setdefault(name, _Read(stored[name], f"the secrets store {inputs.stored_in}"))
    config_file = f"config file {inputs.config_path}" if inputs.config_path else "the configuration"
    key, table, trouble = _table(names, inputs.config, lambda k: f"[sources.{k}.settings] of {config_file}")
    problems += trouble
    take(table, lambda f: f"[sources.{key}.settings] of {config_file}")
    return found, problems


def build_settings(
    names: Sequence[str], schema: type | None, inputs: SettingsInput | None = None
) -> SourceSettings:
    """Build the settings of the source ``names[0]`` (its aliases follow) from ``inputs``.

    ``schema`` has passed :func:`headwater._contract.settings_class` (or is None: the
    source declares no settings, and any value given it is a problem).
    ``inputs`` defaults to none at all: the defaults alone. Never raises for
    a bad value: problems are returned in the result, none quoting a value
    read for a secret setting (those are the result's ``secret_values``).
    """
    inputs = SettingsInput() if inputs is None else inputs
    fields: Sequence[attrs.Attribute[Any]] = attrs.fields(schema) if schema is not None else ()
    found, problems = _gather(names, fields, inputs)
    secret = {f.name for f in fields if is_secret(f)}
    hidden = frozenset(str(read.value) for name, read in found.items() if name in secret)
    if schema is None:
        return SourceSettings(problems=tuple(problems)) if problems else NO_SETTINGS
    values: object | None = None
    if not problems:
        values, problems = _structure(names, schema, found, secret, hidden)
    infos = tuple(_info(names[0], f, found.get(f.name), values) for f in fields)
    return SourceSettings(schema, values, infos, tuple(problems), hidden)


def _structure(
    names: Sequence[str], schema: type, found: Mapping[str, _Read], secret: set[str], hidden: frozenset[str]
) -> tuple[object | None, list[SettingProblem]]:
    """The instance cattrs builds from ``found``, or the problems it met (none quoting ``hidden``)."""
    try:
        return converter.structure({k: r.value for k, r in found.items()}, schema), []
    except ClassValidationError as group:
        errors = list(group.exceptions)
    except Exception as exc:  # a validator of the class itself, outside cattrs' per-field checks
        errors = [exc]
    problems: list[SettingProblem] = []
    for error in errors:
        notes = [n for n in getattr(error, "__notes__", ()) if isinstance(n, AttributeValidationNote)]
        if not notes:
            why = scrub(one_line(error), hidden)
            problems.append(SettingProblem(None, f"rejected by the settings class: {why}"))
            continue
        name = notes[0].name
        read = found.get(name)
        if read is None:
            _, *first, last = places(names[0], name)  # Engine(settings=...) is the library's own
            problems.append(
                SettingProblem(name, f"required, not set; set it with {', '.join(first)} or {last}")
            )
        elif name in secret:
            problems.append(SettingProblem(name, f"not a valid {type_text(notes[0].type)}, in {read.origin}"))
        else:
            why = " ".join(str(error).split()) or type(error).__name__
            problems.append(
                SettingProblem(name, scrub(f"{why}, got {read.value!r}, in {read.origin}", hidden))
            )
    return None, problems


def default_value(field: attrs.Attribute[Any]) -> object:
    """The field's default value (a factory's made afresh; None for one that takes self)."""
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs.Factory is a class at runtime
        return None if default.takes_self else default.factory()
    return default


def _info(source: str, field: attrs.Attribute[Any], read: _Read | None, values: object | None) -> SettingInfo:
    required = field.default is attrs.NOTHING
    secret = is_secret(field)
    default = None if required or secret else converter.unstructure(default_value(field))
    if read is not None:
        origin: str | None = read.origin
        value = getattr(values, field.name) if values is not None else read.value
    elif required:
        origin, value = None, None
    else:
        origin, value = "default", default_value(field)
    shown = None if secret else converter.unstructure(value)
    return SettingInfo(
        field.name,
        type_text(field.type),
        default,
        required,
        secret,
        str(field.metadata.get("help", "")),
        origin,
        shown,
        places(source, field.name),
    )
