"""Shared fixtures: an engine factory that closes what it builds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from headwater import Engine, RatePolicy


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Build engines over given plugins (autoload off), all closed after the test."""
    built: list[Engine] = []

    def make(
        plugins: Mapping[str, object],
        policies: Mapping[str, RatePolicy] | None = None,
        **kwargs: object,
    ) -> Engine:
        engine = Engine(tmp_path / "dest", plugins=plugins, policies=policies, **kwargs)  # type: ignore[arg-type]
        built.append(engine)
        return engine

    yield make
    for engine in built:
        engine.close(timeout=5)
