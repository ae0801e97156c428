"""Keeping secret setting values out of everything headwater writes: messages, logs, the journal.

An engine registers the value of every setting declared ``secret`` of its
sources with :func:`register` when it is built, and releases them when it
closes. While registered, in this process, :func:`redact` replaces each
value, and its URL-encoded forms, with ``***``. Every exception a plugin
raises becomes text through :func:`headwater._discovery.one_line`, which
redacts; the engine redacts the record fields a plugin sets; and
:class:`RedactingFilter` redacts log records (their message, arguments and
traceback) on the loggers and handlers it is put on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

#: What a secret value is replaced with.
MASK = "***"

_lock = threading.Lock()
_counts: Counter[str] = Counter()  # value -> registrations holding it
_secrets: tuple[str, ...] = ()  # the registered values, longest first; replaced whole: no lock to read


def _forms(values: Iterable[str]) -> set[str]:
    """``values`` and their URL-encoded forms, empty strings left out."""
    return {form for value in values if value for form in (value, quote(value, safe=""), quote_plus(value))}


class Registration:
    """Secret values registered by one :func:`register` call, until :meth:`release`."""

    def __init__(self, forms: set[str]) -> None:
        self._forms: set[str] | None = forms

    def release(self) -> None:
        """Stop redacting the values (unless another registration holds them too); later calls do nothing."""
        forms, self._forms = self._forms, None
        if forms:
            with _lock:
                _counts.subtract(forms)
                _publish()


def register(values: Iterable[str]) -> Registration:
    """Redact each of ``values`` (and its URL-encoded forms) until the registration is released."""
    forms = _forms(values)
    if forms:
        with _lock:
            _counts.update(forms)
            _publish()
    return Registration(forms)


def _publish() -> None:
    """Rebuild the tuple readers use from the counts; ``_lock`` held."""
    global _secrets
    live = [value for value, count in _counts.items() if count > 0]
    for value in [v for v, c in _counts.items() if c <= 0]:
        del _counts[value]
    _secrets = tuple(sorted(live, key=lambda s: (-len(s), s)))


def redact(text: str) -> str:
    """``text`` with every registered secret value replaced by :data:`MASK`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (and its URL-encoded forms) replaced by :data:`MASK`."""
    for secret in sorted(_forms(values), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that takes registered secret values out of a record before any handler sees it.

    Put it on a handler to cover every logger that reaches the handler (the
    command line does so for its stderr handler), or on a logger for the
    records logged there (the engine does so for ``headwater.source.<name>``).
    The message is formatted and redacted, and so are the traceback and
    stack of ``exc_info`` and ``stack_info``. Always keeps the record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def protect(target: logging.Filterer) -> None:
    """Put the one shared :class:`RedactingFilter` on a logger or handler (once, however often called)."""
    target.addFilter(_FILTER)
