"""The values the API and the event stream send, and their one JSON encoding.

Records go out as :class:`headwater.Record` itself (Litestar documents and
encodes attrs classes as they are); the classes here wrap them or describe
what a record does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs
import msgspec

from headwater import RatePolicy, Record
from headwater._engine import Engine

Existing = Literal["rename", "skip", "overwrite"]


def _encodable(value: Any) -> Any:
    """What msgspec cannot encode itself: read-only mappings (a record's ``extra``)."""
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


#: Encodes records and the classes below to JSON bytes; built once.
ENCODER = msgspec.json.Encoder(enc_hook=_encodable)

#: For Litestar: how to encode the types msgspec does not know.
TYPE_ENCODERS: Mapping[Any, Any] = {MappingProxyType: dict}


@attrs.frozen
class SourceView:
    """One source as the API shows it.

    Attributes:
        name: the source's name.
        aliases: other names it answers to.
        status: ``"ok"``, or ``"broken"`` for an installed source left out.
        error: why it was left out (broken only).
        policy: the rate policy in force (None for a broken source).
        paused: whether it starts no new downloads.
        config: the policy fields headwater.toml sets for it (empty: none).
        distribution: the distribution that installed it, if known.
        version: that distribution's version.
    """

    name: str
    aliases: list[str]
    status: str
    error: str | None
    policy: RatePolicy | None
    paused: bool
    config: dict[str, Any]
    distribution: str | None
    version: str | None


def source_views(engine: Engine, config: Mapping[str, Mapping[str, object]]) -> list[SourceView]:
    """Every source of ``engine``, broken ones included; ``config`` is headwater.toml's ``[sources]``.

    Reads the engine without blocking on a download; call it off the event loop.
    """
    paused = set(engine.paused())
    views = []
    for info in engine.sources(include_broken=True):
        names = {info.name, *info.aliases}
        settings = {k: v for key, fields in config.items() if key in names for k, v in fields.items()}
        views.append(
            SourceView(
                name=info.name,
                aliases=list(info.aliases),
                status=info.status,
                error=info.error,
                policy=info.policy,
                paused=info.name in paused,
                config=settings,
                distribution=info.distribution,
                version=info.version,
            )
        )
    return views


@attrs.frozen
class Health:
    """The server is up: what it runs and where.

    Attributes:
        status: always ``"ok"``.
        version: the headwater version.
        pid: the server's process id.
        dest_dir: where downloads land.
        started_at: when the server started (seconds since the epoch).
        active: downloads queued or running now.
    """

    status: str
    version: str
    pid: int
    dest_dir: str
    started_at: float
    active: int


@attrs.frozen
class DownloadPage:
    """One page of downloads.

    Attributes:
        downloads: the records, newest first (or oldest first when asked).
        next: the cursor of the next page, or None when this is the last.
    """

    downloads: list[Record]
    next: str | None


@attrs.frozen
class Submitted:
    """The ids of the downloads a submit queued, in the order of the targets."""

    ids: list[str]


@attrs.frozen
class Cancelled:
    """The answer to a cancel.

    Attributes:
        cancelled: True if this request cancelled it, False if it had already ended.
        download: its record now.
    """

    cancelled: bool
    download: Record


@attrs.frozen
class Cleared:
    """The last records of the ended downloads a clear removed (their files stay)."""

    removed: list[Record]


@attrs.frozen
class ErrorDetail:
    """What went wrong.

    Attributes:
        code: a short name: ``bad_request``, ``bad_target``, ``bad_policy``,
            ``unknown_source``, ``unknown_download``, ``not_found``,
            ``plugin_error``, ``closed``, ``unauthorized``,
            ``forbidden_origin``, ``bad_host``, ``internal``...
        message: one sentence naming the problem.
        queued: for a submit that failed at one target: the ids of the
            downloads queued from the targets before it (they stay queued).
    """

    code: str
    message: str
    queued: list[str] | None = None


@attrs.frozen
class ErrorBody:
    """Every error response's body."""

    error: ErrorDetail


@attrs.frozen
class SubmitBody:
    """A submit: one or many targets to one source or a fallback chain.

    Attributes:
        source: a source name or alias, or a fallback chain (a list of them,
            tried in order until one delivers).
        targets: what to download, one download per target (at least one).
        existing: what to do when a file already has a download's final
            name (``rename``, ``skip``, ``overwrite``); None: the source's policy.
        display_name: a human name for the downloads (with one target).
    """

    source: str | list[str]
    targets: list[str]
    existing: Existing | None = None
    display_name: str | None = None


@attrs.frozen
class Login:
    """The page's login: the token, as ``headwater token`` prints it."""

    token: str


@attrs.frozen
class Session:
    """Whether the page is logged in after a login or logout."""

    logged_in: bool
