"""PostgreSQL fixtures of the cluster's tests (their ``pytest_plugins``): the shared server, a schema each.

The shared server is the one on 127.0.0.1:5432 (trust auth, database
``test``); every test gets a schema of its own there (``pg_schema``),
dropped afterwards, so tests never meet each other or other runs. Private
servers, for tests that stop or restart theirs, are in ``pg_server``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pg_server import PG_URL, drop, reachable


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The shared server's URL; the test is skipped, saying so, if it is not reachable."""
    why = reachable(PG_URL)
    if why is not None:
        pytest.skip(
            f"PostgreSQL is not reachable on 127.0.0.1:5432 ({why}); the cluster keeps its records there"
        )
    return PG_URL


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A schema name no other test uses; the schema is dropped afterwards."""
    name = f"hwtest_{uuid.uuid4().hex[:12]}"
    yield name
    drop(pg_url, name)
