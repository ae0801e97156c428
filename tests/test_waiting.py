"""The tests' one polling helper: it returns once its check holds, and says what never came true."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from waiting import wait_until


def test_it_returns_once_the_check_holds() -> None:
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), 10)
    assert next(calls, None) is None  # called until true, and no more


@pytest.mark.parametrize(
    ("what", "said"),
    [
        ("the flag set", "the flag set: not within 0.05 s"),
        (lambda: "the flag still unset", "the flag still unset: not within 0.05 s"),
        (None, "never true within 0.05 s: wait_until(lambda: flag, 0.05, what)"),
    ],
    ids=["words", "words made at the failure", "the check's source"],
)
def test_a_failure_says_what_never_came_true(what: str | Callable[[], str] | None, said: str) -> None:
    flag = False
    with pytest.raises(AssertionError) as failed:
        wait_until(lambda: flag, 0.05, what)
    assert str(failed.value) == said
