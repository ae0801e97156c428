"""Waiting in a test for what no event signals: polling a condition until it holds, failing saying which."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable


def wait_until(
    check: Callable[[], object],
    timeout: float = 10.0,
    what: str | Callable[[], str] | None = None,
    step: float = 0.005,
) -> None:
    """Call ``check`` every ``step`` seconds until it returns something true.

    After ``timeout`` seconds it fails (AssertionError) with ``what`` (a
    callable is called then, for the state at that moment), or else quoting
    the source of ``check``.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(_failed(what, check, timeout))
        time.sleep(step)


def _failed(what: str | Callable[[], str] | None, check: Callable[[], object], timeout: float) -> str:
    if what is not None:
        return f"{what if isinstance(what, str) else what()}: not within {timeout} s"
    try:
        said = inspect.getsource(check).strip()
    except (OSError, TypeError):
        said = repr(check)
    return f"never true within {timeout} s: {said}"
