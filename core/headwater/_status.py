"""``headwater status``, the listing itself, and its quick start without click.

Start-up is most of what ``status`` costs: the page of the latest 100 is a
few milliseconds at any journal size, and importing click, attrs, cattrs
and platformdirs was most of the rest (docs/benchmarks.md, Store). So the
listing is here, on plain JSON values (:class:`headwater._reader.Reader`
with :func:`headwater._plain.decode_plain`) and the standard library alone,
and :func:`quick`, which the ``headwater`` command's entry point calls
before it imports the command line, runs the commonest forms of ``status``
with it: the journal's own listing, no server, no cluster (a
``headwater.toml`` is read only if there is one). Everything else
(``--help``, a usage error, ``-v``, ``--config``, a ``[cluster]``, a
running server) goes to :mod:`headwater.cli`, which
lists through the same :func:`listing`, so both print the same bytes and
exit with the same status (tests/test_cli_status.py runs each test both
ways; tests/test_cli_imports.py pins what this path imports).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from types import FrameType
from typing import Protocol, TypeVar

from headwater._errors import ConfigError, StoreError, UnknownDownloadError
from headwater._paths import default_config_path, default_journal
from headwater._plain import STATES, decode_plain
from headwater._reader import Plain, Reader

_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_JOURNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143

#: How many downloads ``headwater status`` lists without ``--limit`` or ``--all``.
STATUS_LIMIT = 100

#: The file a running ``headwater serve`` leaves beside the journal
#: (:data:`headwater._serve._state.STATE_NAME`): while it is there, ``status`` asks the server.
SERVE_STATE_NAME = "serve.json"

#: How the command line's log lines look on stderr.
LOG_FORMAT = "headwater: %(levelname)s: %(message)s"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a command runs: handled as Ctrl-C is."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler while a command runs: raise :class:`Terminated`."""
    raise Terminated


def ignore_interrupts() -> None:
    """A second Ctrl-C or SIGTERM must not break the shutdown that the first one began."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def interrupted(exc: KeyboardInterrupt, what: str) -> Refused:
    """The error to exit with after Ctrl-C (130) or SIGTERM (143): ``interrupted: what``."""
    if isinstance(exc, Terminated):
        return Refused(f"terminated: {what}", EXIT_TERMINATED)
    return Refused(f"interrupted: {what}", EXIT_INTERRUPTED)


class Refused(Exception):
    """What a command prints on stderr as ``Error: message``, exiting with ``exit_code``.

    :mod:`headwater.cli` turns it into its click exception, which prints the same.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class Matcher(Protocol[_R_co]):
    """What :func:`pick` looks ids up in: a journal's reader, or a running server's or a cluster's records."""

    def match(self, key: str) -> tuple[int, _R_co | None]:
        """How many downloads ``key`` names (an id, or else the start or end of ids), and the one if one."""
        ...


class Pages(Protocol):
    """What :func:`listing` pages: :meth:`headwater._reader.Reader.records`, as plain values."""

    def records(
        self,
        *,
        states: Collection[str] | None = None,
        sources: Collection[str] | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Plain]:
        """The records, latest first: of ``states`` and ``sources``, before ``before``, ``limit`` at most."""
        ...


def pick(reader: Matcher[_R], wanted: Iterable[str], where: str = "the journal") -> list[_R]:
    """The records ``wanted`` names, by id or a unique start or end of one; else Refused (exit 2).

    ``where`` names what ``reader`` reads, in the refusal (a cluster's:
    ``"the cluster's records"``).

    The status list shows an id's last 12 characters (its random part: the
    first 12 are the time it was made), so an end names a download as well
    as a start does. Raises StoreError if the journal cannot be read.
    """
    picked: list[_R] = []
    for key in wanted:
        count, record = reader.match(key)
        if record is None:
            problem = f"{count} downloads" if count > 1 else "no download"
            raise Refused(f"{problem} with an id starting or ending {key!r} in {where}", EXIT_USAGE)
        picked.append(record)
    return picked


def listing(
    pages: Pages,
    reader: Matcher[Plain],
    ids: Collection[str],
    states: Collection[str],
    sources: Collection[str],
    before: str | None,
    limit: int | None,
    show_all: bool,
    as_json: bool,
    where: str = "the journal",
) -> None:
    """Print what ``headwater status`` lists: those ``ids`` name, or a page, latest first.

    The arguments are the command's (checked: ``ids`` come without
    ``before``, ``limit`` and ``show_all``); ``where`` names what is read,
    in the messages. Raises Refused: exit 3 for a journal that cannot be
    read, 2 for an id that names no one download.
    """
    wanted_states = set(states) or None
    wanted_sources = set(sources) or None
    try:
        if ids:
            show(
                [
                    r
                    for r in pick(reader, ids, where)
                    if (wanted_states is None or r["state"] in wanted_states)
                    and (wanted_sources is None or r["source"] in wanted_sources)
                ],
                as_json,
                where,
            )
            return
        cursor = str(pick(reader, [before], where)[0]["id"]) if before else None
        size = None if show_all else limit or STATUS_LIMIT
        found = pages.records(
            states=wanted_states,
            sources=wanted_sources,
            before=cursor,
            limit=None if size is None else size + 1,  # one more: are there older ones?
        )
        last = show(itertools.islice(found, size), as_json, where)
        if last is not None and not as_json and next(found, None) is not None:
            shown = str(last["id"])[-12:]
            _err(f"older downloads: add --before {shown} (or list all with --all)")
    except StoreError as exc:
        raise Refused(str(exc), EXIT_JOURNAL) from exc
    except UnknownDownloadError as exc:  # --before's download removed meanwhile
        raise Refused(str(exc), EXIT_USAGE) from exc


def show(records: Iterable[Plain], as_json: bool, where: str = "the journal") -> Plain | None:
    """Print ``records`` as they come (a JSON array, or one line each); return the last, None if none.

    With none, says so on stderr, naming ``where`` they were looked for.

    Nothing is kept but the record being printed. When stdout is closed
    early (``headwater status --all | head``) it stops quietly, exit 0.
    """
    out = sys.stdout
    last = None
    try:
        if as_json:  # what json.dumps(list, indent=2) prints, a record at a time
            for count, last in enumerate(records):
                item = json.dumps(last, indent=2).replace("\n", "\n  ")
                out.write(f"{',' if count else '['}\n  {item}")
            out.write("[]\n" if last is None else "\n]\n")
        else:
            for last in records:
                shown, outcome = str(last["id"])[-12:], last["file_path"] or last["error"] or ""
                line = f"{shown}  {last['state']:<9} {last['progress']:5.1f}%  {last['source']:<10}"
                out.write(f"{line} {last['display_name'] or last['target']}  {outcome}".rstrip() + "\n")
            if last is None:
                _err(f"no downloads in {where}")
        out.flush()
    except BrokenPipeError:
        stdout_gone()
    return last


def stdout_gone() -> None:
    """Exit 0 quietly after the reader of stdout went away (and Python's final flush with it)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(EXIT_OK)


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def configure_logging(verbose: int) -> None:
    """The command line's logging: to stderr, WARNING (``-v``: INFO, ``-vv``: DEBUG), secrets redacted."""
    import logging

    from headwater._redact import protect

    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        protect(handler)  # no secret setting value on stderr, whichever library logs it


def _logging_first(decode: Callable[[bytes], Plain]) -> Callable[[bytes], Plain]:
    """``decode``, configuring the command line's logging before the first row it refuses is logged.

    So that a ``status`` whose page is all records imports no logging (a
    sixth of its start-up), and one that meets a bad row warns as the
    command line does (:func:`configure_logging`).
    """

    def decode_or_configure(data: bytes) -> Plain:
        try:
            return decode(data)
        except (ValueError, TypeError, RecursionError):
            configure_logging(0)
            raise

    return decode_or_configure


def _cluster_configured() -> bool:
    """Whether ``headwater.toml`` names a cluster; Refused (exit 2) if it cannot be read, as click says."""
    from headwater._config import load_config  # attrs with it: only where there is a config file

    try:
        return load_config().cluster is not None
    except ConfigError as exc:
        raise Refused(str(exc), EXIT_USAGE) from exc


class _Asked:
    """The arguments of a ``status`` that :func:`quick` can run, as click would have parsed them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.states: list[str] = []
        self.sources: list[str] = []
        self.before: str | None = None
        self.limit: int | None = None
        self.show_all = False
        self.as_json = False


def _parse(args: list[str]) -> _Asked | None:
    """The arguments of ``headwater ARGS`` if they are a ``status`` that click would run as they say.

    None for anything else, and for anything this parser is not sure of
    (``--help``, ``--``, an option it does not know, a value that click
    would refuse or that looks like an option): :mod:`headwater.cli` runs
    those, and says what is wrong.
    """
    if not args or args[0] != "status":
        return None
    asked = _Asked()
    rest = iter(args[1:])
    for arg in rest:
        if not arg.startswith("-"):
            asked.ids.append(arg)
            continue
        name, equals, value = arg.partition("=")
        if name in ("--json", "--all") and not equals:
            asked.as_json = asked.as_json or name == "--json"
            asked.show_all = asked.show_all or name == "--all"
            continue
        if name not in ("--state", "--source", "--before", "--limit"):
            return None
        if not equals:
            value = next(rest, "-")
            if value.startswith("-"):
                return None
        if name == "--state":
            if value not in STATES:
                return None
            asked.states.append(value)
        elif name == "--source":
            asked.sources.append(value)
        elif name == "--before":
            asked.before = value
        elif not (value.isascii() and value.isdigit() and int(value) >= 1):
            return None
        else:
            asked.limit = int(value)
    if asked.ids and (asked.before or asked.limit or asked.show_all):
        return None
    if asked.show_all and asked.limit:
        return None
    return asked


def quick(args: list[str]) -> int | None:
    """Run ``headwater ARGS`` here if it is a ``status`` of the journal that needs no more; its exit status.

    None, having done nothing, when :mod:`headwater.cli` must run it (see
    the module). A Ctrl-C or SIGTERM (with :func:`raise_terminated` as its
    handler) ends it as the command line's would, exit 130 or 143.
    """
    asked = _parse(args)
    if asked is None:
        return None
    journal = default_journal()
    if os.path.lexists(journal.with_name(SERVE_STATE_NAME)):
        return None  # a server may run on the journal: the command line asks it
    try:
        if os.path.lexists(default_config_path()) and _cluster_configured():
            return None  # the cluster's records, not the journal: the command line reads them
        reader = Reader(journal, _logging_first(decode_plain))
        listing(
            reader,
            reader,
            asked.ids,
            asked.states,
            asked.sources,
            asked.before,
            asked.limit,
            asked.show_all,
            asked.as_json,
        )
    except KeyboardInterrupt as exc:
        ignore_interrupts()
        refused = interrupted(exc, "`headwater status` stopped before it finished")
    except Refused as exc:
        refused = exc
    else:
        return EXIT_OK
    _err(f"Error: {refused.message}")
    return refused.exit_code
