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


@pytest.mark.parametrize("window", [4096, 30], ids=["all kept", "a window of 30"])
def test_the_server_pages_the_journal_and_clears_it_without_reading_it_whole(
    tmp_path: Path, window: int
) -> None:
    path = tmp_path / "j.sqlite3"
    history = [_ended(i, state=(State.COMPLETED, State.FAILED)[i % 2]) for i in range(250)]
    _seed(path, history)
    store = CountingStore(path)
    engine = Engine(tmp_path / "d", plugins={"a": InstrumentedSource("a")}, store=store)
    try:
        served = BackgroundServer(engine, TOKEN, window=window)
        with served as server, Client(server.url, TOKEN, timeout=10) as client:
            engine.pause("a")
            queued = engine.submit("a", "ok:new")
            ids = [r.id for r in history] + [queued]
            store.reads.clear()
            for newest_first, expected in [(True, ids[::-1]), (False, ids)]:
                walked: list[str] = []
                cursor = None
                while True:
                    page, cursor = client.page(limit=60, cursor=cursor, newest_first=newest_first)
                    walked += [r.id for r in page]
                    if cursor is None:
                        break
                assert walked == expected
            # The pages the newest records answer are read from the server's window, the others
            # from the journal, a page at a time.
            assert ("page_at" in store.reads) is (window < len(ids))
            failed = [r.id for r in history if r.state is State.FAILED]
            page, cursor = client.page(states=[State.FAILED], limit=3)
            assert [r.id for r in page] == failed[:-4:-1]
            page, cursor = client.page(states=[State.FAILED], limit=100, cursor=cursor)
            assert [r.id for r in page] == failed[-4:-104:-1]
            removed = client.remove(history[-1].id)  # the newest ended one: in any window
            assert removed.id == history[-1].id
            newest, _ = client.page(limit=2)
            assert [r.id for r in newest] == [queued, history[-2].id]
            history.pop()
            assert sorted(r.id for r in client.clear()) == sorted(r.id for r in history)
            assert [r.id for r in client.records()] == [queued]
        assert "scan" not in store.reads and "load" not in store.reads
    finally:
        engine.close()
