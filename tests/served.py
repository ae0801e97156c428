"""An engine served over real HTTP on 127.0.0.1 and a random port, for the serve tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx

from headwater import Engine
from headwater._serve.run import BackgroundServer
from headwater.client import Client

TOKEN = "test-token-0123456789abcdefghijklmnopqrstuv"


@attrs.frozen
class Served:
    """A running server: its URL, its engine, an httpx client with the token, and a headwater Client."""

    url: str
    engine: Engine
    http: httpx.Client
    client: Client

    def anonymous(self) -> httpx.Client:
        """An httpx client without the token (close it after use)."""
        return httpx.Client(base_url=self.url, timeout=10)


@contextmanager
def serving(dest: Path, plugins: Mapping[str, object], **options: Any) -> Iterator[Served]:
    """Serve a new in-memory engine over ``plugins`` until the block ends; ``options`` go to the server."""
    engine = Engine(dest, plugins=plugins, idle_timeout=0.5)
    try:
        with BackgroundServer(engine, TOKEN, **options) as server:
            headers = {"authorization": f"Bearer {TOKEN}"}
            http = httpx.Client(base_url=server.url, headers=headers, timeout=10)
            with http, Client(server.url, TOKEN, timeout=10) as client:
                yield Served(server.url, engine, http, client)
    finally:
        engine.close(timeout=5)
