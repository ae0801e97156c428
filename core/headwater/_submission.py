"""What a submit makes, before anything is recorded: the QUEUED record and the first job.

The one rule every runner submits by (the single-process engine, and a
cluster's client): the source or chain resolved, the target checked and
translated by the first source that takes it, ``record_fields`` asked for
the record's label and fields, and the folder made. A runner then records
the record and queues the job its own way.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from headwater._attempt import redacted
from headwater._chains import Chain, first_taker, resolve_chain
from headwater._chance import rng
from headwater._contract import record_fields
from headwater._errors import NeedsConfigurationError
from headwater._files import Existing, existing_choice
from headwater._records import NO_EXTRA, Job, Record, State, Tried, slot_init
from headwater._sources import Source, SourceRegistry


def new_id() -> str:
    """A new download id: 32 hex digits, the first 12 the time in milliseconds, the other 20 random.

    Ids sort by when they were made, so a journal keyed by id appends new
    records at its end instead of scattering them over the whole file. The
    random part comes from the engine's own :data:`~headwater._chance.rng`
    (seeded from the system at start and again in a forked child, whatever
    the host seeds :mod:`random` with), not ``os.urandom``: an id needs to be
    unique, not secret, and a system call here lets the submitting thread
    lose the GIL to the workers on every submit.
    """
    # 16 bytes as hex: the same 32 digits as "%032x", at a third of the cost.
    return (time.time_ns() // 1_000_000 << 80 | rng.getrandbits(80)).to_bytes(16, "big").hex()


@slot_init
@attrs.frozen
class Submission:
    """A download about to be recorded: its QUEUED record and its first job (on the record's source).

    ``job`` is None when the first job is the record's own
    (:func:`headwater._download.first_job`: its target as submitted), the
    usual case, so that none is made per submit.
    """

    record: Record
    job: Job | None


def submission(
    registry: SourceRegistry,
    source: str | Sequence[str] | Chain,
    target: str,
    folder: Path,
    *,
    display_name: str | None = None,
    existing: Existing | None = None,
    dest_dir: str | os.PathLike[str] | None = None,
) -> Submission:
    """The record and job of a new download (see :meth:`headwater.Engine.submit` for the arguments).

    ``folder`` is where it lands unless ``dest_dir`` names another (then
    made, and resolved). Raises what ``Engine.submit`` raises for its
    arguments; nothing is recorded.
    """
    chain = resolve_chain(registry, source)
    for src in chain:  # settings: refused at once, naming what to set
        if src.settings.needs_configuration:
            raise NeedsConfigurationError(src.name, [str(p) for p in src.settings.problems])
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a non-empty string, got {target!r}")
    if existing is not None:
        existing_choice(existing)
    if dest_dir is not None:
        folder = Path(dest_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        folder = folder.resolve()
    job_target: str = target
    tried: tuple[Tried, ...] = ()
    if chain[0].translate is not None:
        chain, job_target, tried = first_taker(chain, target)
    src = chain[0]
    download_id = new_id()
    job = None if job_target == target else Job(download_id, src.name, job_target, display_name)
    username, extra = src.name, NO_EXTRA
    if src.record_fields is not None:
        asked = job if job is not None else Job(download_id, src.name, target, display_name)
        username, extra = _fields(src, src.record_fields, asked)
    now = time.time()
    record = Record(
        download_id,
        src.name,
        target,
        display_name,
        username,
        State.QUEUED,
        now,
        now,
        extra=extra,
        tried=tried,
        fallbacks=tuple(s.name for s in chain[1:]) if len(chain) > 1 else (),
        existing=existing,
        dest_dir=str(folder),
    )
    return Submission(record, job)


def _fields(src: Source, hook: Callable[..., Any], job: Job) -> tuple[str, Mapping[str, object]]:
    """The record's username label and extra fields from ``hook``, ``src``'s ``record_fields``.

    An InvalidTargetError the hook raises (it refuses the target) is
    raised as it is; anything else it raises or returns wrongly raises
    PluginError (FieldConflictError for a core field).
    """
    call = functools.partial(hook, job=job, settings=src.settings.values)
    username, extra = record_fields(call, f"record_fields of source {src.label()}")
    return username or src.name, MappingProxyType(redacted(extra))
