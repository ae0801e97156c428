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

    [cluster]                            # run on a cluster (docs/cluster.md)
    broker = "redis://127.0.0.1:6379/0"  # Dramatiq's broker and the limits
    postgres = "postgresql://user:pw@db/headwater"   # the records
    schema = "headwater"                 # optional: the records' schema
    lease = 10.0                         # optional: seconds a slot's lease lasts unrenewed
    prefix = "headwater"                 # optional: the start of its Redis keys, queue and channel

The file is read with :mod:`tomllib`; an unknown key or a value of the
wrong type raises :class:`~headwater.ConfigError` naming the file and
the key. A missing file at the default place means an empty configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import attrs

from headwater._discovery import NamedSources
from headwater._errors import ConfigError, InvalidPolicyError
from headwater._paths import default_config_path
from headwater._policy import RatePolicy


def _cluster_lease(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < 86400:
        raise ValueError(f"cluster lease must be a number of seconds > 0 (and under a day), got {value!r}")


def _masked_repr(url: str) -> str:
    """The ``repr`` of ``url`` with its password masked, for :class:`ClusterConfig`'s ``repr``."""
    from headwater._cluster._pgurl import masked  # the cluster's code, only when used

    return repr(masked(url))


@attrs.frozen
class ClusterConfig:
    """Where a cluster keeps its work, limits and records (``[cluster]``, or ``Engine``'s arguments).

    Attributes:
        broker: the Redis URL (``redis://host:port/db``) of Dramatiq's broker,
            which also holds the limits and the leases.
        postgres: the PostgreSQL URL of the records.
        schema: the records' schema.
        lease: seconds a slot's lease lasts unrenewed: a killed worker's
            slot is free again within it.
        prefix: the start of the cluster's names in Redis (its keys, its
            Dramatiq namespace, its cancel channel): clusters sharing one
            Redis name different ones.

    Neither URL is shown with its password: not by :meth:`shown`, nor by
    ``repr`` or ``str`` (so not in a log line either).
    """

    broker: str = attrs.field(repr=_masked_repr)
    postgres: str = attrs.field(repr=_masked_repr)
    schema: str = "headwater"
    lease: float = attrs.field(default=10.0, validator=_cluster_lease)
    prefix: str = "headwater"

    @property
    def limits_prefix(self) -> str:
        """The key prefix of the sources' limits."""
        return f"{self.prefix}:limits:"

    @property
    def leader_prefix(self) -> str:
        """The key prefix of the scheduler's lease."""
        return f"{self.prefix}:leader:"

    @property
    def cancel_channel(self) -> str:
        """The channel cancels are announced on."""
        return f"{self.prefix}:cancel"

    def shown(self) -> str:
        """The configuration in words, every password masked."""
        from headwater._cluster._pgurl import masked  # the cluster's code, with its extra, only when used

        records = f"records {masked(self.postgres)} (schema {self.schema})"
        return f"broker {masked(self.broker)}, {records}, lease {self.lease:g} s"


def needs_cluster_extra(what: str, missing: ImportError) -> str:
    """The message for ``what`` (a command, an engine on a cluster) that could not import the cluster's code.

    ``missing`` is the ImportError raised; the message names its package and
    the extra that installs it.
    """
    return f"{what} needs the cluster extra ({missing.name} is missing): pip install 'headwater[cluster]'"


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
        cluster: the ``[cluster]`` table, or None to run in one process.
    """

    path: Path | None = None
    destination: Path | None = None
    policies: Mapping[str, Mapping[str, object]] = attrs.field(factory=lambda: MappingProxyType({}))
    load: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, object]] = attrs.field(factory=lambda: MappingProxyType({}))
    cluster: ClusterConfig | None = None


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
    import tomllib  # here, not above: without a config file, no command pays for it

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from exc
    return _parse(chosen, data)


def _parse(path: Path, data: Mapping[str, object]) -> Config:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"config file {path}: {key!r} {problem}")

    _only_keys(path, "", data, {"destination", "plugins", "sources", "cluster"})
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
    cluster = None
    if "cluster" in data:
        cluster = _cluster(path, _table(path, "cluster", data["cluster"]))
    return Config(
        path, destination, MappingProxyType(policies), load, block, MappingProxyType(settings), cluster
    )


def _cluster(path: Path, table: Mapping[str, object]) -> ClusterConfig:
    """The ``[cluster]`` table, checked: both URLs given, each value of its type."""
    _only_keys(path, "cluster.", table, {"broker", "postgres", "schema", "lease", "prefix"})
    for key in ("broker", "postgres"):
        if key not in table:
            raise ConfigError(f"config file {path}: [cluster] needs {key!r} (a URL)")
    for key in ("broker", "postgres", "schema", "prefix"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise ConfigError(f"config file {path}: 'cluster.{key}' must be a non-empty string")
    lease = table.get("lease", 10.0)
    if not isinstance(lease, (int, float)) or isinstance(lease, bool):
        raise ConfigError(f"config file {path}: 'cluster.lease' must be a number, got {lease!r}")
    try:
        return ClusterConfig(
            str(table["broker"]),
            str(table["postgres"]),
            str(table.get("schema", "headwater")),
            float(lease),
            str(table.get("prefix", "headwater")),
        )
    except ValueError as exc:
        raise ConfigError(f"config file {path}: [cluster]: {exc}") from exc


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
