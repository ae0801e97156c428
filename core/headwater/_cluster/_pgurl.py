"""A PostgreSQL connection URL as it may be shown: with its password masked.

Every message, log line and ``repr`` the cluster's PostgreSQL code writes
names the server by :func:`masked` of its URL, and passes what psycopg says
through :func:`scrubbed`, so that a password never leaves the process.
Both forms libpq takes are understood: a URL
(``postgresql://user:secret@host/db?password=...``) and ``key=value``
words (``host=h password=secret``).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from headwater._redact import MASK, scrub

#: A ``password=...`` word of a ``key=value`` connection string: quoted (with
#: backslash escapes) or up to the next blank.
_WORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")

#: A ``password=...`` parameter of a URL's query.
_QUERY = re.compile(r"((?:^|&)password=)[^&]*")

_SCHEMES = ("postgresql://", "postgres://")


#: A URL's start: its scheme (``postgresql://``, ``redis://``, ...).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def masked(url: str) -> str:
    """``url`` with its password, wherever it is given, replaced by ``***``; the rest as it is.

    Also masks the password of a URL of another scheme (a Redis URL:
    ``redis://:secret@host/0`` -> ``redis://:***@host/0``).
    """
    if not _URL.match(url):
        return _WORD.sub(lambda m: m.group(1) + MASK, url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":" + MASK
        netloc = f"{user}@{hosts}"
    query = _QUERY.sub(lambda m: m.group(1) + MASK, parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def passwords(url: str) -> list[str]:
    """The passwords ``url`` holds, as written and decoded (:func:`scrubbed` adds their encoded forms)."""
    found: list[str] = []
    if url.startswith(_SCHEMES):
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        if ":" in user:
            found.append(user.split(":", 1)[1])
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "password"]
    else:
        found += [m.group(2).strip("'") for m in _WORD.finditer(url)]
    return [form for value in found for form in {value, unquote(value)} if form]


def scrubbed(text: str, url: str) -> str:
    """``text`` (an error's message, a log line) with every password of ``url`` in it masked."""
    return scrub(text, passwords(url))
