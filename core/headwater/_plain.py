"""A journal row as the plain JSON values of its record, checked field by field, without attrs.

:func:`decode_plain` is the one decoder of a record's JSON text: it checks
each field as strictly as a record is read back (a number is no string, a
bool is no int, a string is no list; a float field takes an int, as a hand
edit may write ``2``), fills the fields the text leaves out with their
defaults, and drops fields it does not know. Its result is what
:func:`headwater._codec.plain` makes of the record: the fields in the
record's order, the state by its value, ``tried`` as a list of
``{"source", "error"}`` objects. :func:`headwater._codec.decode` builds the
:class:`~headwater.Record` from it; ``headwater status`` prints it as it is,
so that listing the journal needs neither attrs nor the record classes
(tests/test_codec_plain.py checks :data:`FIELDS` against
:class:`~headwater.Record`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

#: The values of :class:`~headwater.State`, and of those that are final.
STATES = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})

#: What a field's ``existing`` may be (:data:`headwater._files.Existing`).
EXISTING = ("rename", "skip", "overwrite")

Check = Callable[[object], object]


def _exactly(kind: type) -> Check:
    """A check that takes a value of type ``kind`` as it is (a bool is no int) and refuses anything else."""

    def check(value: object) -> object:
        if type(value) is kind:
            return value
        raise TypeError(f"{kind.__name__} expected, found {type(value).__name__} {value!r:.60}")

    return check


_str, _int, _bool = _exactly(str), _exactly(int), _exactly(bool)


def _float(value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:  # JSON writes 2.0 as 2.0, but a hand edit may say 2
        return float(value)
    raise TypeError(f"float expected, found {type(value).__name__} {value!r:.60}")


def _dict(value: object) -> dict[str, object]:
    if type(value) is not dict:
        raise TypeError(f"dict expected, found {type(value).__name__} {value!r:.60}")
    return value


def _list_of(item: Check) -> Check:
    def check(value: object) -> list[object]:
        if type(value) is not list:
            raise TypeError(f"list expected, found {type(value).__name__} {value!r:.60}")
        return [item(v) for v in value]

    return check


def _optional(check: Check) -> Check:
    def optional(value: object) -> object:
        return None if value is None else check(value)

    return optional


def _state(value: object) -> object:
    if value in STATES and type(value) is str:
        return value
    raise ValueError(f"{value!r} is not a valid State")


def _existing(value: object) -> object:
    if value in EXISTING and type(value) is str:
        return value
    raise ValueError(f"one of {', '.join(map(repr, EXISTING))} expected, found {value!r:.60}")


def _object(fields: tuple[tuple[str, Check, object], ...]) -> Callable[[object], dict[str, object]]:
    """A check of a JSON object with ``fields`` (name, check, default): the checked values, in order."""

    def check(value: object) -> dict[str, object]:
        if type(value) is not dict:
            raise TypeError(f"a JSON object expected, found {type(value).__name__} {value!r:.60}")
        checked: dict[str, object] = {}
        for name, field_check, default in fields:
            if name in value:
                checked[name] = field_check(value[name])
            elif default is REQUIRED:
                raise ValueError(f"field {name!r} is missing")
            else:
                checked[name] = default() if callable(default) else default
        return checked

    return check


#: The default of a field that has none: the text must hold it.
REQUIRED = object()

#: A :class:`~headwater.Tried`'s fields.
TRIED_FIELDS: tuple[tuple[str, Check, object], ...] = (("source", _str, REQUIRED), ("error", _str, REQUIRED))

#: A :class:`~headwater.Record`'s fields, in its order: name, check, default (a callable makes a
#: new one each time; :data:`REQUIRED`: none).
FIELDS: tuple[tuple[str, Check, object], ...] = (
    ("id", _str, REQUIRED),
    ("source", _str, REQUIRED),
    ("target", _str, REQUIRED),
    ("display_name", _optional(_str), REQUIRED),
    ("username", _str, REQUIRED),
    ("state", _state, REQUIRED),
    ("created_at", _float, REQUIRED),
    ("updated_at", _float, REQUIRED),
    ("progress", _float, 0.0),
    ("size", _optional(_int), None),
    ("transferred", _int, 0),
    ("speed", _float, 0.0),
    ("time_remaining", _optional(_float), None),
    ("file_path", _optional(_str), None),
    ("error", _optional(_str), None),
    ("attempts", _int, 0),
    ("started_at", _optional(_float), None),
    ("finished_at", _optional(_float), None),
    ("extra", _dict, dict),
    ("tried", _list_of(_object(TRIED_FIELDS)), list),
    ("fallbacks", _list_of(_str), list),
    ("retries", _int, 0),
    ("existing", _optional(_existing), None),
    ("skipped", _bool, False),
    ("dest_dir", _optional(_str), None),
)

check_record = _object(FIELDS)


def decode_plain(data: bytes | str) -> dict[str, object]:
    """The record JSON text ``data`` holds, as plain values (see the module); unknown fields dropped.

    Raises ValueError, TypeError or RecursionError, saying why, for text
    that is not a record (not JSON, not UTF-8, a field of the wrong type, an
    unknown state, a missing field).
    """
    return check_record(json.loads(data))
