"""The hooks a source implements. Each docstring is the contract.

A source is a plugin object (usually a module) registered under one
canonical name. Mark implementations with :data:`headwater.hookimpl`.
Only ``download_impl`` is required. Each call reaches only that source's
implementation (see :class:`headwater._sources.Hook`).

Hooks that take ``settings`` get the source's settings instance (built
from the class ``settings_schema`` returns; see :mod:`headwater._settings`),
or None when the source declares none. An implementation may leave the
argument out (pluggy passes only the arguments an implementation names).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import pluggy

from headwater._context import DownloadContext
from headwater._policy import RatePolicy
from headwater._records import Job

PROJECT = "headwater"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def download_impl(job: Job, ctx: DownloadContext) -> str | os.PathLike[str] | None:
    """Download ``job.target`` into ``ctx.dest_dir``; the one required hook.

    Runs on a worker thread of the source, inside its concurrency limit and
    after its delay; never on the caller's thread. Call
    ``ctx.progress(transferred, total)`` as bytes arrive and check
    ``ctx.cancelled`` between chunks. ``ctx.settings`` holds the source's
    settings; ``ctx.describe(display_name=..., **fields)`` sets the record's
    display name and extra fields as soon as the source learns them.

    Returns the path of the finished file (a ``str`` or ``os.PathLike``;
    relative paths are taken relative to ``ctx.dest_dir``). The file must
    exist and lie inside ``ctx.dest_dir``, or the download FAILS and the engine
    leaves the file alone. Land it with :class:`~headwater.PartFile` or
    :func:`~headwater.land`, passing ``ctx.existing``, so that a file
    already at the name is never replaced unless the user chose
    ``overwrite``. Return ``None`` to decline: the download FAILS as
    "declined by the source".

    Raising records the exception as the record's ``error``. A transient
    error (:class:`~headwater.TransientError`, ``ConnectionError``,
    ``TimeoutError``; see :func:`~headwater.is_transient`) is retried
    after a backoff while the policy's ``retries`` last;
    :class:`~headwater.RetryAfter` pauses the whole source for its
    seconds and then tries again; :class:`~headwater.ExistingFileKept`
    (under ``skip``, the name is taken) COMPLETES it with the file that was
    there; anything else fails the download at once (in a fallback chain
    the next source gets it). A file returned after a cancel is deleted.
    """


@hookspec
def record_fields(job: Job, settings: object) -> Mapping[str, object] | None:
    """Extra fields for the record of ``job``, merged into ``record.extra``.

    Called once on the caller's thread when the download is submitted, so it
    must be quick and do no I/O. Return a mapping of ``str`` keys to plain
    values (str, int, float, bool, None) or None. The key ``username`` sets
    the record's label (a legacy name such as ``deezer_dl``); any other core
    record field name fails the submit with
    :class:`~headwater.FieldConflictError` naming the plugin, and anything
    else that breaks these rules with :class:`~headwater.PluginError`.

    Raise :class:`~headwater.InvalidTargetError`, with a message naming
    the target and what is wrong with it, to refuse a target the source can
    never download (a malformed URL, say): ``submit`` raises that same error
    and records nothing, so bad input is refused before it is queued. Only the
    first source of a submit is asked; a fallback later in a chain finds out
    when it runs. Raising anything else fails the submit with a
    :class:`~headwater.PluginError` naming the plugin.
    """


@hookspec
def aliases() -> Iterable[str]:  # type: ignore[empty-body]
    """Other names the source answers to (legacy configuration names).

    Called once when the source is loaded. Names are lowercase
    ``[a-z0-9][a-z0-9_-]*``. An alias that another source already has as a
    name or alias leaves this source out, reported as a conflict. Raising
    leaves the source out, reported with the error.
    """


@hookspec(firstresult=True)
def settings_schema() -> type | None:
    """The attrs class of the source's settings, or None if it has none.

    Called once when the source is loaded (on the thread that builds the
    engine), after ``aliases``. Each field of the class is one setting: its
    type (str, int, float, bool, pathlib.Path, an Enum, a list or
    ``tuple[X, ...]`` of those, or any of them ``| None``), its default (none:
    required), and in its metadata ``help`` and ``secret``;
    :func:`headwater.setting` writes such a field. The class must be frozen
    and name its fields lowercase ``[a-z][a-z0-9_]*``.

    headwater builds one instance per engine from ``Engine(settings=...)``,
    ``HEADWATER_<SOURCE>_<FIELD>``, the secrets store and headwater.toml, in
    that order. When a required setting is missing or a value is invalid, the
    source *needs configuration*: it is listed so by ``headwater sources``
    and a submit to it raises
    :class:`~headwater.NeedsConfigurationError`; other sources run.
    Returning anything but such a class, or raising, leaves the source out,
    reported with the error.
    """


@hookspec(firstresult=True)
def rate_policy(settings: object) -> RatePolicy | None:
    """The :class:`~headwater.RatePolicy` the source asks for.

    Called once when the source is loaded, after its settings are built
    (``settings`` is None when the source needs configuration). Return None for the default
    (concurrency 1, no delay). The user's ``Engine(policies=...)`` or
    configuration overrides it. Anything but a RatePolicy or None, or
    raising, leaves the source out, reported with the error.
    """


@hookspec(firstresult=True)
def translate_target(target: str, settings: object) -> str | None:
    """The target this source should download for ``target``, or None if it cannot take it.

    Optional. Lets one fallback chain carry a target that each source reads
    its own way (an "artist - title" that a searching source maps to its own
    track id). Called once per download for each source the download reaches,
    before it is queued there: on the caller's thread at submit for the first
    source, on an engine thread later in a chain; so it must be quick and do
    no I/O. Without this hook a source gets ``target`` unchanged.

    Return a non-empty string (the source's ``job.target``) or None to decline:
    the chain skips this source and records why (a source that needs
    configuration is skipped so without being asked). Raising, or returning
    anything else, skips the source the same way with the error recorded. A
    submit that no source of it can take raises
    :class:`~headwater.TargetRejectedError`.
    """
