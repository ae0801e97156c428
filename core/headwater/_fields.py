"""The one rule for fields a source adds to a record, through ``record_fields`` or ``ctx.describe``.

A field has a ``str`` key that is not a core record field (except
``username``, the record's label, a non-empty string) and a plain JSON value:
``str``, ``int``, ``float``, ``bool`` or ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping

from headwater._errors import FieldConflictError, PluginError
from headwater._records import CORE_FIELDS

PLAIN_TYPES: tuple[type, ...] = (str, int, float, bool, type(None))


def plain_fields(result: object, what: str) -> tuple[str | None, dict[str, object]]:
    """The ``username`` and the other fields of ``result``, checked against the rule.

    ``result`` is what a hook returned (a mapping, or None for no fields);
    ``what`` names its origin in messages (``record_fields of source 'x'
    (dist 1.0)``). Returns ``(username or None, the other fields)``.

    Raises FieldConflictError for a core record field other than
    ``username``, and PluginError for anything else that breaks the rule (a
    result that is not a mapping, a key that is not a str, a value that is
    not plain, a username that is not a non-empty str).
    """
    if result is None:
        return None, {}
    if not isinstance(result, Mapping):
        raise PluginError(f"{what} returned {type(result).__name__}, not a mapping")
    username: str | None = None
    fields: dict[str, object] = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise PluginError(f"{what} returned the key {key!r}; keys must be str")
        if not isinstance(value, PLAIN_TYPES):
            raise PluginError(
                f"{what} returned {key!r}={value!r}; values must be str, int, float, bool or None"
            )
        if key == "username":
            if not isinstance(value, str) or not value:
                raise PluginError(f"{what} returned username={value!r}; it must be a non-empty string")
            username = value
        elif key in CORE_FIELDS:
            raise FieldConflictError(
                f"{what} returned {key!r}, a core record field; only 'username' may be set"
            )
        else:
            fields[key] = value
    return username, fields
