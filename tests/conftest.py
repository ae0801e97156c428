"""Shared fixtures: an engine factory that closes what it builds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from headwater import Engine, RatePolicy


@pytest.fixture(autouse=True)
def _private_user_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test, and the commands it runs, out of the real user data and config folders.

    platformdirs honours the XDG variables on Linux, so even a subprocess that
    drops HEADWATER_HOME journals into a private folder.
    """
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.delenv("HEADWATER_HOME", raising=False)


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
