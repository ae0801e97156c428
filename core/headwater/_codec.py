"""Records as JSON and back: what the journal stores and ``--json`` prints.

Encoding is :func:`plain`'s rules through one compact encoder. A record is
decoded by :func:`headwater._plain.decode_plain`, which checks every field
strictly (a number is no string, a bool is no int, a string is no list), so
that a row a bit flip or a hand edit damaged is refused, saying why, and
never read as something else; other attrs classes by a cattrs converter
whose hooks are as strict.
"""

from __future__ import annotations

import enum
import json
import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import cattrs

from headwater._plain import check_record, decode_plain
from headwater._records import NO_EXTRA, Record, State, Tried

_T = TypeVar("_T")


def _jsonable(value: object) -> object:
    """``value`` one step nearer JSON: an enum as its value, an attrs instance or a mapping as a dict.

    :class:`json.JSONEncoder` calls this for what it cannot encode itself
    (it takes str, int, float, bool, None, dict, list and tuple as they are).
    Raises TypeError for anything else, naming its type.
    """
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return {a.name: getattr(value, a.name) for a in attrs.fields(type(value))}  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"cannot journal a value of type {type(value).__name__}: {value!r}")


#: The one encoder of journal rows: compact, and built once (``json.dumps``
#: with options builds a new encoder on every call).
_ENCODER = json.JSONEncoder(default=_jsonable, separators=(",", ":"))


def plain(value: object) -> object:
    """``value`` as JSON values: enums by value, attrs instances as dicts, tuples as lists.

    What the journal stores and ``--json`` prints for a record.

    Raises TypeError for anything else, naming its type.
    """
    return json.loads(_ENCODER.encode(value))


def encode(record: Record) -> str:
    """``record`` as compact JSON text; TypeError or ValueError for a field that is not plain."""
    return _ENCODER.encode(record)


def decode(data: bytes | str) -> Record:
    """The record JSON text ``data`` holds (as :func:`encode` wrote it); unknown fields are ignored.

    Raises ValueError, TypeError or RecursionError, saying why, for text
    that is not a record (not JSON, not UTF-8, a field of the wrong type, an
    unknown state, a missing field).
    """
    return _record(decode_plain(data))


def _record(values: dict[str, Any]) -> Record:
    """The record of ``values``, as :func:`headwater._plain.decode_plain` checked them."""
    values["state"] = State(values["state"])
    values["extra"] = MappingProxyType(values["extra"]) if values["extra"] else NO_EXTRA
    values["tried"] = tuple(Tried(t["source"], t["error"]) for t in values["tried"])
    values["fallbacks"] = tuple(values["fallbacks"])
    return Record(**values)


def structure(value: object, kind: type[_T]) -> _T:
    """The ``kind`` (an attrs class) :func:`plain` turned into ``value``; unknown fields are ignored.

    Raises ValueError or TypeError, saying why, if ``value`` cannot be one.
    """
    if kind is Record:
        return _record(check_record(value))  # type: ignore[return-value]  # kind is Record: _T is
    if type(value) is not dict:
        raise TypeError(f"a JSON object expected, found {type(value).__name__} {value!r:.60}")
    try:
        return _CONVERTER.structure(value, kind)
    except KeyError as exc:  # cattrs reads a required field as value[name]
        raise ValueError(f"field {exc.args[0]!r} is missing") from None


def _exactly(kind: type) -> Callable[[object, type], object]:
    """A hook that takes a value of type ``kind`` as it is (a bool is no int) and refuses anything else."""

    def structure(value: object, _: type) -> object:
        if type(value) is kind:
            return value
        raise TypeError(f"{kind.__name__} expected, found {type(value).__name__} {value!r:.60}")

    return structure


def _float(value: object, _: type) -> float:
    if type(value) is float:
        return value
    if type(value) is int:  # JSON writes 2.0 as 2.0, but a hand edit may say 2
        return float(value)
    raise TypeError(f"float expected, found {type(value).__name__} {value!r:.60}")


def _mapping(value: object, _: type) -> Mapping[str, object]:
    if type(value) is not dict:
        raise TypeError(f"dict expected, found {type(value).__name__} {value!r:.60}")
    return MappingProxyType(value)


def _literal_hook(kind: Any) -> Callable[[object, type], object]:
    choices = typing.get_args(kind)

    def structure(value: object, _: type) -> object:
        if value not in choices:
            raise ValueError(f"one of {', '.join(map(repr, choices))} expected, found {value!r:.60}")
        return value

    return structure


def _tuple_hook(kind: Any, converter: cattrs.Converter) -> Callable[[object, type], object]:
    (item, _) = typing.get_args(kind)
    item_hook = converter.get_structure_hook(item)

    def structure(value: object, _: type) -> tuple[object, ...]:
        if type(value) is not list:
            raise TypeError(f"list expected, found {type(value).__name__} {value!r:.60}")
        return tuple(item_hook(v, item) for v in value)

    return structure


def _is_literal(kind: Any) -> bool:
    return typing.get_origin(kind) is typing.Literal


def _is_mapping(kind: Any) -> bool:
    return typing.get_origin(kind) is Mapping


def _is_tuple(kind: Any) -> bool:
    args = typing.get_args(kind)
    return typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis


def _make_converter() -> cattrs.Converter:
    # No detailed validation: the first problem is raised as it is, which is what a row's
    # warning says, and cattrs skips collecting exceptions on the common path.
    converter = cattrs.Converter(detailed_validation=False)
    for kind in (str, int, bool):
        converter.register_structure_hook(kind, _exactly(kind))
    converter.register_structure_hook(float, _float)
    converter.register_structure_hook_func(_is_mapping, _mapping)
    converter.register_structure_hook_factory(_is_literal, _literal_hook)
    converter.register_structure_hook_factory(_is_tuple, _tuple_hook)
    return converter


_CONVERTER = _make_converter()
