"""What an HTTP download is called and what it promises: targets, file names, Retry-After."""

from __future__ import annotations

import email.message
import email.utils
import re
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs

from headwater import InvalidHeaderError, InvalidTargetError, RetryAfter

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@attrs.frozen
class Target:
    """A parsed http source target.

    Attributes:
        url: the URL to fetch, without its fragment.
        sha256: the lowercase hex digest the file must have, or None.
    """

    url: str
    sha256: str | None


def parse_target(target: str) -> Target:
    """``target`` (``http(s)://...`` with an optional ``#sha256=<64 hex>``) parsed.

    Raises :class:`InvalidTargetError` for another scheme, a missing host or a
    fragment that is not a well-formed checksum.
    """
    parts = urlsplit(target.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidTargetError(f"{target!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidTargetError(f"{target!r} names no host")
    digest = None
    if parts.fragment:
        kind, equals, value = parts.fragment.partition("=")
        if kind != "sha256" or not equals:
            raise InvalidTargetError(
                f"{target!r}: the fragment {parts.fragment!r} is not a checksum; use #sha256=<64 hex digits>"
            )
        if _HEX64.fullmatch(value) is None:
            raise InvalidTargetError(
                f"{target!r}: the sha256 {value!r} is not 64 hex digits ({len(value)} characters)"
            )
        digest = value.lower()
    return Target(urlunsplit(parts._replace(fragment="")), digest)


def refuse_malformed(target: str) -> None:
    """Raise :class:`InvalidTargetError` for an ``http(s)://`` target that :func:`parse_target` refuses.

    Other targets pass: they are not this source's to judge at submit, and
    fail when run, so that a fallback chain moves on to its next source.
    """
    if urlsplit(target.strip()).scheme.lower() in ("http", "https"):
        parse_target(target)


def disposition_name(header: str | None) -> str | None:
    """The file name a Content-Disposition header proposes, unsanitised; None if it names none.

    ``filename*`` (RFC 5987/2231, with its charset) wins over ``filename``,
    as RFC 6266 asks, whichever comes first.
    """
    if not header:
        return None
    message = email.message.Message()
    message["content-disposition"] = header
    plain: str | None = None
    for key, value in message.get_params(header="content-disposition", failobj=[]):
        if key.lower() != "filename":
            continue
        if isinstance(value, tuple):  # the extended filename* form
            try:
                return email.utils.collapse_rfc2231_value(value) or None
            except LookupError:  # an unknown charset
                continue
        plain = plain or value
    return plain or None


def url_name(url: str) -> str:
    """The last segment of ``url``'s path, percent-decoded, unsanitised ("" if none)."""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1], errors="replace")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent or bad.

    A date in the past gives 0. Read by :meth:`headwater.RetryAfter.from_header`.
    """
    if value is None:
        return None
    try:
        return RetryAfter.from_header(value, now=now).seconds
    except InvalidHeaderError:
        return None
