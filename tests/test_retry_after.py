"""``RetryAfter.from_header``: a Retry-After value (seconds or an HTTP date) read once for every source."""

from __future__ import annotations

import pytest

from headwater import InvalidHeaderError, RetryAfter, TransientError
from headwater_http.naming import retry_after_seconds

NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7 ", 7.0),
        ("007", 7.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # the obsolete RFC 850 form
        ("Wed Oct 21 07:28:10 2015", 10.0),  # the obsolete asctime form: GMT
        ("Wed, 21 Oct 2015 09:28:30 +0200", 30.0),  # a zone, though HTTP says GMT
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_seconds_and_http_dates(value: str, seconds: float) -> None:
    retry = RetryAfter.from_header(value, now=NOW)
    assert isinstance(retry, RetryAfter) and isinstance(retry, TransientError)
    assert retry.seconds == seconds
    assert str(retry) == f"the service asked to retry later; retry after {seconds:g} s"


def test_the_message_and_the_current_time() -> None:
    retry = RetryAfter.from_header("5", "HTTP 429 from https://api.example")
    assert str(retry) == "HTTP 429 from https://api.example; retry after 5 s"
    assert RetryAfter.from_header("Wed, 21 Oct 2015 07:28:00 GMT").seconds == 0.0  # long past by now


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "5s",
        "1e3",
        "١٢",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct",
        "0x10",
    ],
)
def test_garbage_is_a_clear_error_naming_the_value(value: str) -> None:
    with pytest.raises(
        InvalidHeaderError, match="is neither a number of seconds nor an HTTP date"
    ) as refused:
        RetryAfter.from_header(value)
    assert repr(value) in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_a_value_that_is_not_a_string_is_named() -> None:
    with pytest.raises(InvalidHeaderError, match="Retry-After must be a str, got int 5"):
        RetryAfter.from_header(5)  # type: ignore[arg-type]


def test_the_http_source_reads_retry_after_through_it() -> None:
    """The asctime form, which the http source's own parser used to drop, now pauses it too."""
    assert retry_after_seconds("Wed Oct 21 07:28:10 2015", now=NOW) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
