"""The command line's configuration file, ``headwater.toml``.

::

    destination = "~/Downloads"          # where files land (``--dest`` overrides)

    [plugins]
    load = ["file", "http"]              # load only these installed sources
    block = ["ytdlp"]                    # never load these

    [sources.youtube]                    # a source name or alias
    concurrency = 1                      # any RatePolicy field
    delay = 5

    [sources.tidal.settings]             # the source's own settings (see headwater._settings)
    quality = "lossless"

The file is read with :mod:`tomllib`; an unknown key or a value of the
wrong type raises :class:`~headwater.ConfigError` naming the file and
the key. A missing file at the default place means an empty configuration.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import attrs
import platformdirs

from headwater._discovery import NamedSources
from headwater._errors import ConfigError, InvalidPolicyError
from headwater._paths import HOME_ENV
from headwater._policy import RatePolicy

CONFIG_NAME = "headwater.toml"


def default_config_path() -> Path:
    """``$HEADWATER_HOME/headwater.toml`` if that is set, else the file in the user config folder."""
    given = os.environ.get(HOME_ENV, "").strip()
    if given:
        return Path(given).expanduser() / CONFIG_NAME
    return platformdirs.user_config_path("headwater", appauthor=False) / CONFIG_NAME


@attrs.frozen
class Config:
    """What ``headwater.toml`` says; every field has a default for a missing file.

    Attributes:
        path: the file read, or None when there was none.
        destination: where downloads land, or None for the current folder.
        policies: source name or alias -> the RatePolicy fields to change.
        settings: source name or alias -> its ``settings`` table (checked
            against the source's settings class when an engine loads it).
        load: the only installed sources to load, or None for all.
        block: installed sources never to load.
    """

    path: Path | None = None
    destination: Path | None = None
    policies: Mapping[str, Mapping[str, object]] = attrs.field(factory=lambda: MappingProxyType({}))
    load: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, object]] = attrs.field(factory=lambda: MappingProxyType({}))


def load_config(path: Path | None = None) -> Config:
    """Read ``path``, or the default file if ``path`` is None (a missing default file is no error).

    Raises ConfigError for a file that is missing (when given), unreadable,
    not TOML, or holds an unknown key or a wrong type.
    """
    chosen = default_config_path() if path is None else path
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is None:
            return Config()
        raise ConfigError(f"config file {chosen} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {chosen}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from exc
    return _parse(chosen, data)


def _parse(path: Path, data: Mapping[str, object]) -> Config:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"config file {path}: {key!r} {problem}")

    _only_keys(path, "", data, {"destination", "plugins", "sources"})
    destination = None
    if "destination" in data:
        value = data["destination"]
        if not isinstance(value, str) or not value:
            raise fail("destination", f"must be a folder path (a string), got {value!r}")
        destination = Path(value).expanduser()
    load: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    plugins = _table(path, "plugins", data.get("plugins", {}))
    _only_keys(path, "plugins.", plugins, {"load", "block"})
    if "load" in plugins:
        load = NamedSources(_names(path, "plugins.load", plugins["load"]), f"plugins.load of {path}")
    if "block" in plugins:
        block = _names(path, "plugins.block", plugins["block"])
    policies: dict[str, Mapping[str, object]] = {}
    settings: dict[str, Mapping[str, object]] = {}
    for name, table in _table(path, "sources", data.get("sources", {})).items():
        fields = dict(_table(path, f"sources.{name}", table))
        if "settings" in fields:
            own = _table(path, f"sources.{name}.settings", fields.pop("settings"))
            settings[name] = MappingProxyType(dict(own))
        policies[name] = _policy(path, f"sources.{name}", fields)
    return Config(path, destination, MappingProxyType(policies), load, block, MappingProxyType(settings))


def _only_keys(path: Path, prefix: str, table: Mapping[str, object], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"config file {path}: unknown key {prefix + key!r}; known here: {', '.join(sorted(allowed))}"
            )


def _table(path: Path, key: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(f"config file {path}: {key!r} must be a table, got {value!r}")
    return value


def _names(path: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"config file {path}: {key!r} must be a list of source names, got {value!r}")
    return tuple(value)


_POLICY_DEFAULTS = RatePolicy()

#: The type of a policy field's default -> the TOML value types it accepts, and how to say so.
#: A field whose default is None is checked by RatePolicy's own validators only.
_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "a whole number"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _policy(path: Path, key: str, table: Mapping[str, object]) -> Mapping[str, object]:
    """The RatePolicy fields ``table`` sets, each checked against the type of the field's default.

    TOML values are exact types: ``true`` is a bool, never a whole number.
    """
    fields = {a.name for a in attrs.fields(RatePolicy)}
    for name, value in table.items():
        if name not in fields:
            raise ConfigError(
                f"config file {path}: unknown key {key + '.' + name!r}; "
                f"a source's policy has {', '.join(sorted(fields))} (its own settings go under "
                f"[{key}.settings])"
            )
        kind = _KINDS.get(type(getattr(_POLICY_DEFAULTS, name)))
        if kind is not None and type(value) not in kind[0]:
            raise ConfigError(f"config file {path}: {key + '.' + name!r} must be {kind[1]}, got {value!r}")
    try:
        attrs.evolve(_POLICY_DEFAULTS, **table)  # type: ignore[arg-type]  # the validators speak
    except InvalidPolicyError as exc:
        raise ConfigError(f"config file {path}: [{key}]: {exc}") from exc
    return MappingProxyType(dict(table))
