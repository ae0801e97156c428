"""Every exception headwater raises, in one place.

All of them derive from :class:`HeadwaterError`, so ``except HeadwaterError``
catches anything the engine itself refuses. Errors raised *inside* a plugin's
``download_impl`` are not wrapped: they are caught at the engine boundary and
recorded on the download's record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC


class HeadwaterError(Exception):
    """Base class of every error headwater raises."""


class UnknownSourceError(HeadwaterError, LookupError):
    """One or more source names (or aliases) that no loaded source answers to.

    ``name`` is the first unknown name, ``names`` all of them (a fallback
    chain may name several). The message names the known sources so a typo
    is easy to spot, and the installed sources left out as broken
    (``broken``), whose aliases cannot be known.
    """

    def __init__(self, name: str | Sequence[str], known: list[str], broken: Sequence[str] = ()) -> None:
        self.names = (name,) if isinstance(name, str) else tuple(name)
        self.name = self.names[0]
        self.known = sorted(known)
        self.broken = sorted(broken)
        listing = ", ".join(self.known) if self.known else "none are loaded"
        what = "unknown source" if len(self.names) == 1 else "unknown sources"
        message = f"{what} {', '.join(map(repr, self.names))}; known sources: {listing}"
        if self.broken:
            message += f"; left out as broken (see `headwater sources`): {', '.join(self.broken)}"
        super().__init__(message)


class SourceSkippedWarning(UserWarning):
    """An unknown name in a fallback chain submitted with ``strict=False``; it was left out."""


class TargetRejectedError(HeadwaterError, ValueError):
    """No source of a submit could take the target (``translate_target`` declined it)."""


class UnknownDownloadError(HeadwaterError, LookupError):
    """A download id that the engine has no record of."""

    def __init__(self, download_id: str) -> None:
        self.download_id = download_id
        super().__init__(f"no download with id {download_id!r}")


class PluginError(HeadwaterError):
    """A plugin that cannot be used: bad hooks, bad policy, bad fields.

    ``rule`` is the rule of the plugin contract it broke (a key of
    ``headwater.testing.RULES``), or None when it broke none (a name another
    source has, say).
    """

    def __init__(self, *args: object, rule: str | None = None) -> None:
        super().__init__(*args)
        self.rule = rule


class PluginConflictError(PluginError):
    """Two sources claim the same name or alias."""


class FieldConflictError(PluginError):
    """``record_fields`` tried to set a core record field other than ``username``."""


class InvalidPolicyError(HeadwaterError, ValueError):
    """A :class:`~headwater.RatePolicy` with values that cannot be scheduled."""


class UnsafePathError(HeadwaterError):
    """A path that would lie outside the destination folder."""


class TemplateError(HeadwaterError):
    """``headwater plugin new`` cannot render the plugin template (no copier, a bad name, a taken folder)."""


class DownloadCancelled(HeadwaterError):
    """Raised by a source's ``download_impl`` when it stops because ``ctx.cancelled`` was set.

    The record is already CANCELLED when a source sees the event; raising this
    is the clean way to leave ``download_impl`` early.
    """


class DownloadOwnedError(HeadwaterError):
    """A download another running engine owns: only that engine may run or cancel it.

    ``download_id`` is the download, ``owner`` says who owns it
    (``"headwater process 1234"``, or ``"another engine in this process"``).
    The message says how to get it: through that engine, or by stopping it
    first (Ctrl-C or SIGTERM leave a ``headwater`` process's downloads
    resumable by anyone).
    """

    def __init__(self, download_id: str, owner: str) -> None:
        self.download_id = download_id
        self.owner = owner
        super().__init__(
            f"download {download_id} belongs to {owner}, which is still running: cancel it through "
            "that engine, or stop it (Ctrl-C or SIGTERM keep its downloads resumable) and cancel it then"
        )


class EngineClosedError(HeadwaterError, RuntimeError):
    """The engine has been closed and takes no more work."""


class TransientError(HeadwaterError):
    """Raised by a source for a failure that may pass: the engine retries the download.

    A download that raises a transient error is tried again on the same
    source, after an exponential backoff, up to ``RatePolicy.retries`` times;
    see :func:`is_transient` for which exceptions count as transient.
    """


class RetryAfter(TransientError):
    """Raised by a source when the service asked it to come back later (HTTP 429/503).

    ``seconds`` is how long to wait before the next attempt, as the service
    said (``Retry-After``). The engine pauses the whole source (every queued
    download of it) until then and tries the download again; the wait does not
    use up the download's retries. The message says when to retry.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        self.seconds = float(seconds)
        text = message or "the service asked to retry later"
        super().__init__(f"{text}; retry after {self.seconds:g} s")

    @classmethod
    def from_header(cls, value: str, message: str = "", *, now: float | None = None) -> RetryAfter:
        """A RetryAfter for the value of an HTTP ``Retry-After`` header.

        ``value`` is delta-seconds (``"120"``) or an HTTP date
        (``"Wed, 21 Oct 2015 07:28:00 GMT"``, and the obsolete RFC 850 and
        asctime forms, read as GMT); a date in the past gives 0 seconds.
        ``now`` is the time (seconds since the epoch) a date is measured
        from; default: the current time. ``message`` is as for the
        constructor. Raises :class:`InvalidHeaderError`, naming the value,
        for anything else (so ``raise RetryAfter.from_header(...)`` never
        raises a RetryAfter built from garbage).
        """
        return cls(_retry_after_seconds(value, now), message)


def _retry_after_seconds(value: str, now: float | None) -> float:
    """Seconds to wait for a ``Retry-After`` value; InvalidHeaderError if it is none (see from_header)."""
    if not isinstance(value, str):
        raise InvalidHeaderError(f"Retry-After must be a str, got {type(value).__name__} {value!r}")
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    import email.utils  # here, not above: only a Retry-After date needs it

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise InvalidHeaderError(
            f"Retry-After {value!r} is neither a number of seconds nor an HTTP date"
        ) from None
    seconds = when.timestamp() if when.tzinfo is not None else when.replace(tzinfo=UTC).timestamp()
    return max(0.0, seconds - (time.time() if now is None else now))


class InvalidHeaderError(HeadwaterError, ValueError):
    """An HTTP header value that cannot be read (``RetryAfter.from_header`` of garbage); names the value."""


class NeedsConfigurationError(HeadwaterError):
    """A submit to a source whose required settings are missing or invalid.

    ``source`` is the source's name, ``problems`` one line per problem
    (the field, what is wrong, where it can be set). The message never holds
    a secret value. ``headwater sources`` lists the same problems.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"source {source!r} needs configuration: {'; '.join(self.problems)}")


class InvalidTargetError(HeadwaterError, ValueError):
    """A target the source cannot download as given: a bad URL, a directory, a device.

    The message names the target and what is wrong with it.
    """


class TransferError(HeadwaterError):
    """A transfer the remote side refused or broke off (an HTTP error status, a dropped connection).

    ``status`` is the HTTP status when there was one, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class IntegrityError(HeadwaterError):
    """Data that arrived complete but wrong: a size or checksum that does not match what was promised.

    The partial file is deleted; the download is FAILED, never COMPLETED.
    """


class MissingDependencyError(PluginError, ImportError):
    """A source needs an optional package that is not installed; the message names the pip command."""


#: Exception types that fail one attempt but not the download: it is retried.
#: ``ConnectionError`` covers refused, reset and aborted connections;
#: ``TimeoutError`` covers socket timeouts.
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc``, raised by ``download_impl``, is worth another attempt.

    True for :class:`TransientError` (and so :class:`RetryAfter`),
    ``ConnectionError`` and ``TimeoutError``; False for everything else, such
    as ``ValueError``, ``FileNotFoundError``, ``PermissionError`` and other
    ``OSError`` s, and :class:`DownloadCancelled`: those fail the download at once.
    """
    return isinstance(exc, TRANSIENT_TYPES)


class StoreError(HeadwaterError):
    """The journal cannot be used: damaged, another program's file, a newer schema, a failed read or write.

    The message names the file, and for a failed read or write why (a full
    disk, a permission, a lock held too long). headwater never wipes or
    rewrites such a file.
    """


class ConfigError(HeadwaterError, ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


class ContractError(HeadwaterError, AssertionError):
    """A source broke a rule of the plugin contract (raised by :mod:`headwater.testing`).

    ``rule`` is the rule's short name (a key of ``headwater.testing.RULES``);
    the message is one sentence naming the source, the rule and what it did.
    Derives from AssertionError so test runners report it as a failed check.
    """

    def __init__(self, source: str, rule: str, detail: str) -> None:
        self.source = source
        self.rule = rule
        super().__init__(f"source {source!r} broke the {rule!r} rule: {detail}")


class NetworkBlockedError(HeadwaterError, ConnectionError):
    """A network call refused where none may be made (the kit's ``record_fields`` check); names the call."""


class ExistingFileKept(HeadwaterError):
    """A download whose final name is already taken, under the ``skip`` choice: nothing lands.

    Raised by :func:`headwater.land` and :class:`headwater.PartFile` (and by
    any ``download_impl`` that checks ``ctx.existing`` itself) to end a
    download early. The engine records it COMPLETED with ``file_path`` the
    file already there and ``skipped`` true; ``path`` is that file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(f"a file is already at {self.path!r}; it was kept and nothing landed")


class SubscriptionOverflow(HeadwaterError):
    """A change-feed subscription fell behind: changes were dropped, read the records afresh.

    Raised once by :meth:`headwater.Subscription.get`; its docstring says
    what to do next.
    """


class ServeError(HeadwaterError):
    """``headwater serve`` cannot start as asked: an unsafe bind, a bad allow-list, a taken port.

    The message says what was refused and how to do it safely.
    """


class ServerError(HeadwaterError):
    """A headwater server answered a request with an error, or could not be reached.

    ``status`` is the HTTP status (None when no answer came), ``code`` the
    error's short name from the JSON error body (``"unknown_source"``,
    ``"bad_request"``...), or None.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)
