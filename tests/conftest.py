"""Shared fixtures, and the Hypothesis profiles.

Profiles: ``ci`` (the default) and ``stress`` (``pytest --hypothesis-profile=stress``);
docs/regression-suite.md says what each runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from headwater import Engine, RatePolicy

# The conformance kit (headwater_engine fixture) and pytester, for the kit's own tests.
pytest_plugins = ["headwater.testing", "pytester"]

# Steps run real threads and wait for them, so example time varies with the
# machine's load: no per-example deadline, and no "too slow" health check.
_THREADED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=300, stateful_step_count=40, **_THREADED)
settings.register_profile("stress", max_examples=3000, stateful_step_count=60, **_THREADED)
# bench/mutations.py: as ci, without an example database and without shrinking a failure.
settings.register_profile(
    "mutants",
    max_examples=300,
    stateful_step_count=40,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    **_THREADED,
)
settings.load_profile("ci")


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
