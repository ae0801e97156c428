"""When PostgreSQL goes away: writes retry within a bound, none is applied twice, the feed loses nothing.

The restarts are of a private server (tests/pg_fixtures.py: initdb and
pg_ctl in a temporary folder, skipped, saying why, where that cannot be
done); the lost reply goes through a proxy in front of the shared server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import attrs
import pytest
from pg_server import PrivateServer, private_postgres, rows, session_lock_held
from pgproxy import Proxy
from waiting import wait_until

from headwater import Change, Record, State, Swap
from headwater._cluster._pgfeed import RecordListener
from headwater._cluster._pgstore import PostgresStore
from headwater._errors import StoreError

pytest_plugins = ["pg_fixtures"]


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    with private_postgres() as made:
        yield made


def _record(name: str) -> Record:
    return Record(name, "a", "t", None, "u", State.QUEUED, 1.0, 1.0)


def _step(record: Record, state: State) -> Record:
    attempts = record.attempts + (state is State.RUNNING)
    return attrs.evolve(record, state=state, updated_at=record.updated_at + 1, attempts=attempts)


@pytest.mark.timeout(180)
def test_a_restart_mid_run_loses_no_write_applies_none_twice_and_the_feed_catches_up(
    server: PrivateServer,
) -> None:
    schema = "restart"
    store = PostgresStore(server.url, schema=schema, retry_for=60)
    heard: list[Change] = []
    listener = RecordListener(server.url, heard.extend, schema=schema)
    listener.start()
    made: list[Record] = []
    answers: list[bool] = []
    progress = threading.Semaphore(0)
    try:
        records = [_record(f"d{n:02d}") for n in range(30)]
        for r in records:
            store.add(r)
            made.append(r)
        store.flush()

        def write() -> None:
            for state in (State.RUNNING, State.QUEUED, State.RUNNING, State.COMPLETED):
                for n, r in enumerate(records):
                    new = _step(r, state)
                    answers.extend(store.commit_if([Swap.over(r, new)]))
                    made.append(new)
                    records[n] = new
                    progress.release()
                    time.sleep(0.005)

        writer = threading.Thread(target=write)
        writer.start()
        for _ in range(40):
            assert progress.acquire(timeout=30)
        server.ctl("restart")  # fast: the server ends every connection and transaction in flight
        writer.join(120)
        assert not writer.is_alive()
        # Every write answered True (the one writer), and was applied once: the insert and four changes.
        assert answers == [True] * 120
        versions = rows(server.url, f"SELECT DISTINCT version, state FROM {schema}.records")
        assert versions == [(5, "completed")]
        wait_until(
            lambda: len(heard) >= len(made),
            30,
            lambda: f"the feed has {len(heard)} of {len(made)} changes",
            step=0.05,
        )
        assert listener.reconnects >= 1
        by_id: dict[str, list[Record]] = {}
        for change in heard:
            by_id.setdefault(change.record.id, []).append(change.record)
        expected: dict[str, list[Record]] = {}
        for record in made:
            expected.setdefault(record.id, []).append(record)
        assert by_id == expected  # every change, once, in order, across the restart
        # The store's session holds its lock again (its thread took it after the restart).
        wait_until(
            lambda: session_lock_held(server.url, store.owner),
            15,
            "the session lock was not taken again after the restart",
            step=0.1,
        )
    finally:
        listener.close()
        store.close()


@pytest.mark.timeout(120)
def test_with_the_server_down_a_write_gives_up_after_retry_for_saying_so_and_works_once_it_is_back(
    server: PrivateServer,
) -> None:
    url = server.url.replace("postgres@", "postgres:pw-never-shown@")
    store = PostgresStore(url, schema="down", retry_for=1.5)
    try:
        store.add(_record("a"))
        store.flush()
        server.ctl("stop")
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            store.commit_if([Swap.over(_record("a"), _step(_record("a"), State.RUNNING))])
        took = time.monotonic() - started
        assert 1.5 <= took < 10, took
        message = str(caught.value)
        assert message.startswith("cannot write the records at postgresql://postgres:***@127.0.0.1:")
        assert "pw-never-shown" not in message
        time.sleep(max(0.0, 5 - (time.monotonic() - started)))  # an outage of 5 s
        server.ctl("start")
        # Back within retry_for of its return (the pool's own backoff would be seconds by now).
        assert store.commit_if([Swap.over(_record("a"), _step(_record("a"), State.RUNNING))]) == [True]
    finally:
        server.ctl("start", check=False)  # if the test stopped before starting it again
        store.close()


# -- a reply lost after the commit --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_write_whose_reply_was_lost_after_its_commit_is_not_applied_twice_and_answers_true(
    pg_url: str, pg_schema: str
) -> None:
    proxy = Proxy(5432)
    through = pg_url.replace(":5432/", f":{proxy.port}/")
    store = PostgresStore(
        through, schema=pg_schema, pool_size=1, flush_interval=600
    )  # its thread stays quiet
    table = f'"{pg_schema}".records'
    try:
        queued = _record("a")
        store.add(queued)
        store.flush()
        running = _step(queued, State.RUNNING)
        described = attrs.evolve(running, extra={"note": "same state, new fields"})
        for seen, new, version in ((queued, running, 2), (running, described, 3)):
            proxy.hold_replies()
            answer: list[bool] = []
            swap = Swap.over(seen, new)
            writer = threading.Thread(
                target=lambda into=answer, swap=swap: into.extend(store.commit_if([swap]))
            )
            writer.start()
            # The write has committed (seen from outside the proxy) and its reply is held back.
            wait_until(
                lambda version=version: (
                    rows(pg_url, f"SELECT version FROM {table}") == [(version,)] and proxy.held
                ),
                20,
                "the write never committed",
                step=0.01,
            )
            proxy.cut()  # the reply is lost with the connection; the store tries again on a new one
            writer.join(30)
            assert answer == [True]
            assert rows(pg_url, f"SELECT version FROM {table}") == [(version,)]  # applied once
        changes = rows(pg_url, f'SELECT count(*) FROM "{pg_schema}".changes')
        assert changes == [(3,)]  # the insert and two changes: no change twice in the feed either
    finally:
        store.close()
        proxy.close()
