"""`headwater serve` on a long journal: it lists the history a page at a time, never all of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from instrumented import InstrumentedSource
from served import TOKEN
from test_engine_history import CountingStore, _ended, _seed

from headwater import Engine, State

pytest.importorskip("litestar")

from headwater._serve.run import BackgroundServer  # noqa: E402
from headwater.client import Client  # noqa: E402


def test_the_server_pages_the_journal_and_clears_it_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    history = [_ended(i, state=(State.COMPLETED, State.FAILED)[i % 2]) for i in range(250)]
    _seed(path, history)
    store = CountingStore(path)
    engine = Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=store)
    try:
        with BackgroundServer(engine, TOKEN) as server, Client(server.url, TOKEN, timeout=10) as client:
            engine.pause("a")
            queued = engine.submit("a", "ok:new")
            ids = [r.id for r in history] + [queued]
            for newest_first, expected in [(True, ids[::-1]), (False, ids)]:
                walked: list[str] = []
                cursor = None
                while True:
                    page, cursor = client.page(limit=60, cursor=cursor, newest_first=newest_first)
                    walked += [r.id for r in page]
                    if cursor is None:
                        break
                assert walked == expected
            failed, _ = client.page(states=[State.FAILED], limit=3)
            assert [r.id for r in failed] == [r.id for r in history if r.state is State.FAILED][:-4:-1]
            assert sorted(r.id for r in client.clear()) == sorted(r.id for r in history)
            assert [r.id for r in client.records()] == [queued]
        assert "scan" not in store.reads and "load" not in store.reads
    finally:
        engine.close()
