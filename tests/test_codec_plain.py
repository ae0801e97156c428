"""headwater._plain, the record decoder that needs no attrs, against the Record it decodes.

``headwater status`` prints what :func:`decode_plain` makes of a row; the
rest of headwater builds a :class:`Record` from it. Its table of fields is
its own (so that it needs no attrs), so these tests hold it to the class.
"""

from __future__ import annotations

import json
import typing

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import Record, State, Tried
from headwater._codec import decode, encode, plain
from headwater._files import EXISTING_CHOICES
from headwater._plain import EXISTING, FIELDS, REQUIRED, STATES, TERMINAL, TRIED_FIELDS, decode_plain


def test_the_fields_are_the_records_in_order_with_its_defaults() -> None:
    for table, kind in ((FIELDS, Record), (TRIED_FIELDS, Tried)):
        fields = attrs.fields(kind)
        assert [name for name, _, _ in table] == [a.name for a in fields]
        for (name, _, default), field in zip(table, fields, strict=True):
            if field.default is attrs.NOTHING:
                assert default is REQUIRED, name
            else:
                made = default() if callable(default) else default
                assert plain(field.default) == made, name


def test_the_states_and_choices_are_the_records() -> None:
    assert tuple(s.value for s in State) == STATES
    assert {s.value for s in State if s.terminal} == TERMINAL
    assert (
        EXISTING
        == EXISTING_CHOICES
        == typing.get_args(typing.get_args(typing.get_type_hints(Record)["existing"])[0])
    )


_text = st.text(max_size=8)
_time = st.floats(min_value=0, max_value=2e9, allow_nan=False)
_records = st.builds(
    Record,
    id=_text,
    source=_text,
    target=_text,
    display_name=st.none() | _text,
    username=_text,
    state=st.sampled_from(State),
    created_at=_time,
    updated_at=_time,
    progress=st.floats(0, 100),
    size=st.none() | st.integers(0, 2**40),
    time_remaining=st.none() | _time,
    file_path=st.none() | _text,
    error=st.none() | _text,
    extra=st.dictionaries(_text, st.none() | st.integers() | _text, max_size=3),
    tried=st.lists(st.builds(Tried, _text, _text), max_size=3).map(tuple),
    fallbacks=st.lists(_text, max_size=3).map(tuple),
    existing=st.none() | st.sampled_from(EXISTING_CHOICES),
    skipped=st.booleans(),
    dest_dir=st.none() | _text,
)


@given(_records)
def test_decode_plain_is_plain_of_the_record(record: Record) -> None:
    text = encode(record)
    assert decode_plain(text) == plain(record) == plain(decode(text))
    assert decode(text) == record


@pytest.mark.parametrize("dropped", [name for name, _, default in FIELDS if default is not REQUIRED])
def test_a_field_left_out_is_its_default_both_ways(dropped: str) -> None:
    whole = json.loads(
        encode(Record("i", "s", "t", None, "u", State.QUEUED, 1.0, 2.0, tried=(Tried("a", "b"),)))
    )
    del whole[dropped]
    text = json.dumps({**whole, "unknown": [1]})
    assert decode_plain(text) == plain(decode(text))
    assert getattr(decode(text), dropped) == attrs.fields_dict(Record)[dropped].default


def test_tried_that_is_not_an_object_is_refused() -> None:
    whole = json.loads(encode(Record("i", "s", "t", None, "u", State.QUEUED, 1.0, 2.0)))
    with pytest.raises(TypeError, match="a JSON object expected, found str 'a'"):
        decode_plain(json.dumps({**whole, "tried": ["a"]}))
