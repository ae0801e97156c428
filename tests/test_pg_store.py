"""A cluster's records in PostgreSQL (headwater._cluster._pgstore): the store contract, sessions, schema.

Against the real server on 127.0.0.1:5432 (skipped, saying so, when it is
not reachable), each test in a schema of its own. The read contract is the
one MemoryStore and SQLiteStore are held to (the tests of test_store_reads,
run here on a PostgresStore).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import attrs
import psycopg
import pytest
from instrumented import InstrumentedSource
from pg_server import rows, session_lock_held
from test_store_reads import (  # the read contract, run here against PostgreSQL
    test_a_page_before_an_unknown_record_is_refused,
    test_get_answers_for_ended_records_only,
    test_pages_at_a_place_walk_both_ways_from_any_place,
    test_pages_filter_by_state_and_source,
    test_pages_walk_every_ended_record_once_latest_first,
    test_scan_streams_everything_across_chunks,
)
from waiting import wait_until

from headwater import Engine, Record, State
from headwater._cluster._pgschema import SCHEMA_VERSION
from headwater._cluster._pgstore import PostgresStore, Start
from headwater._cluster._pgurl import masked, scrubbed
from headwater._errors import DownloadOwnedError, StoreError, UnknownDownloadError

pytest_plugins = ["pg_fixtures"]

__all__ = [
    "test_a_page_before_an_unknown_record_is_refused",
    "test_get_answers_for_ended_records_only",
    "test_pages_at_a_place_walk_both_ways_from_any_place",
    "test_pages_filter_by_state_and_source",
    "test_pages_walk_every_ended_record_once_latest_first",
    "test_scan_streams_everything_across_chunks",
]

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def store(pg_url: str, pg_schema: str) -> Iterator[PostgresStore]:
    made = PostgresStore(pg_url, schema=pg_schema)
    try:
        yield made
    finally:
        made.close()


def _record(
    name: str, state: State = State.QUEUED, *, source: str = "a", attempts: int = 0, at: float = 1.0
) -> Record:
    return Record(name, source, f"t-{name}", None, "u", state, at, at, attempts=attempts)


def _rows(url: str, schema: str, query: str) -> list[tuple[object, ...]]:
    """The rows of ``query``, its ``S.`` naming ``schema``."""
    return rows(url, query.replace("S.", f'"{schema}".'))


# -- writing -------------------------------------------------------------------------------


def test_an_added_record_is_durable_once_flushed_and_a_commit_writes_it_whole(
    store: PostgresStore, pg_url: str, pg_schema: str
) -> None:
    store.add(_record("a"))
    store.add(_record("b"))
    store.flush()
    assert _rows(pg_url, pg_schema, "SELECT id, state, attempts FROM S.records ORDER BY id") == [
        ("a", "queued", 0),
        ("b", "queued", 0),
    ]
    store.add(_record("c"))
    store.commit([_record("c", State.RUNNING, attempts=1)])  # its insert was still buffered
    store.flush()
    assert _rows(pg_url, pg_schema, "SELECT state, attempts, owner FROM S.records WHERE id = 'c'") == [
        ("running", 1, store.owner)
    ]
    store.delete("a")
    assert [row[0] for row in _rows(pg_url, pg_schema, "SELECT id FROM S.records ORDER BY id")] == ["b", "c"]


def test_a_record_postgres_cannot_hold_is_refused_naming_it_and_nothing_of_the_batch_is_written(
    store: PostgresStore, pg_url: str, pg_schema: str
) -> None:
    bad = attrs.evolve(_record("bad", State.COMPLETED), extra={"ratio": math.nan})
    with pytest.raises(StoreError, match="cannot store record bad"):
        store.commit([_record("good", State.COMPLETED), bad])
    assert _rows(pg_url, pg_schema, "SELECT id FROM S.records") == []
    # A string that merely says NaN is a string.
    said = attrs.evolve(_record("said", State.COMPLETED), extra={"word": "NaN Infinity"})
    store.commit([said])
    assert store.get("said") == said


def test_progress_is_written_only_onto_the_state_and_attempt_it_was_taken_in(
    pg_url: str, pg_schema: str
) -> None:
    store = PostgresStore(pg_url, schema=pg_schema, flush_interval=0.02)
    try:
        running = _record("a", State.RUNNING, attempts=1)
        store.commit([running])
        snapshot = attrs.evolve(running, transferred=500, size=1000, progress=50.0)
        store.attach(lambda: [snapshot])
        wait_until(
            lambda: _rows(pg_url, pg_schema, "SELECT data->>'transferred' FROM S.records")[0][0] == "500",
            10,
            "progress was never written",
            step=0.02,
        )
        done = attrs.evolve(running, state=State.COMPLETED, updated_at=2.0, transferred=1000)
        store.commit([done])
        snapshot = attrs.evolve(running, transferred=700)  # a snapshot taken before the end
        time.sleep(0.3)
        assert store.get("a") == done
        version = _rows(pg_url, pg_schema, "SELECT version FROM S.records")[0][0]
        assert version == 2, "progress counted as a visible change"
    finally:
        store.close()


def test_paused_sources_are_shared_by_the_stores_of_a_schema(
    store: PostgresStore, pg_url: str, pg_schema: str
) -> None:
    other = PostgresStore(pg_url, schema=pg_schema)
    try:
        store.set_paused("b", True)
        store.set_paused("a", True)
        store.set_paused("a", True)
        assert other.paused() == ["a", "b"]
        other.set_paused("a", False)
        assert store.paused() == ["b"]
    finally:
        other.close()


def test_after_close_writes_are_dropped_and_reads_refused(pg_url: str, pg_schema: str) -> None:
    store = PostgresStore(pg_url, schema=pg_schema)
    store.add(_record("a"))
    store.close()
    store.close()
    assert _rows(pg_url, pg_schema, "SELECT id FROM S.records") == [("a",)]  # close flushed it
    store.commit([_record("a", State.CANCELLED)])  # a plugin thread still running after close
    assert _rows(pg_url, pg_schema, "SELECT state FROM S.records") == [("queued",)]
    with pytest.raises(StoreError, match="closed"):
        store.get("a")


# -- sessions: takeover and cancel of what ended processes left ---------------------------------

_LEAVES = """
import json, sys, time
from headwater import Record, State
from headwater._cluster._pgstore import PostgresStore
from headwater._cluster._pgurl import masked, scrubbed

store = PostgresStore(sys.argv[1], schema=sys.argv[2])
for i in range(30):
    store.add(Record(f"r{i:02d}", "a", "t", None, "u", State.QUEUED, 1.0 + i, 1.0 + i))
store.commit([Record("r00", "a", "t", None, "u", State.RUNNING, 1.0, 2.0, attempts=1)])
store.add(Record("other", "b", "t", None, "u", State.QUEUED, 50.0, 50.0))
store.commit([Record("done", "a", "t", None, "u", State.COMPLETED, 60.0, 60.0)])
store.flush()
print(json.dumps(store.owner), flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(90)
def test_a_dead_process_records_are_taken_over_exactly_once_and_a_live_one_is_left_alone(
    pg_url: str, pg_schema: str
) -> None:
    leaver = subprocess.Popen(
        [sys.executable, "-c", _LEAVES, pg_url, pg_schema], stdout=subprocess.PIPE, text=True
    )
    try:
        assert leaver.stdout is not None
        owner = json.loads(leaver.stdout.readline())
        alive = PostgresStore(pg_url, schema=pg_schema)
        try:
            assert alive.take_over({"a", "b"}) == []  # a live session's records are its own
            with pytest.raises(DownloadOwnedError, match=f"headwater process {leaver.pid} on "):
                alive.cancel_left("r05")
            assert [r.id for r in alive.load()] == ["done"]
        finally:
            alive.close()
    finally:
        leaver.kill()
        leaver.wait(10)
    wait_until(  # the server lets the lock go when it sees the connection closed
        lambda: not session_lock_held(pg_url, owner),
        20,
        "the dead process's session lock was never released",
        step=0.05,
    )

    stores = [PostgresStore(pg_url, schema=pg_schema), PostgresStore(pg_url, schema=pg_schema)]
    barrier = threading.Barrier(2)
    taken: list[list[Record]] = [[], []]

    def take(i: int) -> None:
        barrier.wait()
        taken[i] = stores[i].take_over({"a"})

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        ids = [[r.id for r in records] for records in taken]
        assert sorted(len(i) for i in ids) == [0, 30]  # all to one, none to the other
        assert max(ids, key=len) == [f"r{i:02d}" for i in range(30)]  # oldest first
        assert max(taken, key=len)[0].state is State.RUNNING
        winner = stores[0] if ids[0] else stores[1]
        assert _rows(
            pg_url, pg_schema, "SELECT DISTINCT owner FROM S.records WHERE source = 'a' AND id <> 'done'"
        ) == [(winner.owner,)]
        # The record of the source no one took stays with the dead session; anyone may cancel it.
        loser = stores[1] if winner is stores[0] else stores[0]
        record, cancelled = loser.cancel_left("other")
        assert (record.state, cancelled) == (State.CANCELLED, True)
        assert loser.cancel_left("other")[1] is False  # it had ended
        with pytest.raises(DownloadOwnedError, match="this engine"):
            winner.cancel_left("r01")
        with pytest.raises(DownloadOwnedError, match="headwater process"):
            loser.cancel_left("r01")  # the winner's now, and it lives
        with pytest.raises(UnknownDownloadError):
            loser.cancel_left("nosuch")
    finally:
        for store in stores:
            store.close()


def test_an_engine_runs_on_postgres_and_another_takes_over_what_it_left(
    tmp_path: Path, pg_url: str, pg_schema: str
) -> None:
    src = InstrumentedSource("a")
    first = PostgresStore(pg_url, schema=pg_schema)
    engine = Engine(tmp_path / "dest", plugins={"a": src}, store=first)
    done, failed, running, queued = (engine.submit("a", t) for t in ("ok:x", "raise", "block:k", "block:q"))
    assert [r.state for r in engine.wait([done, failed], timeout=20)] == [State.COMPLETED, State.FAILED]
    src.wait_started(3)
    first.close()  # as if the process died: its session ends, its records stay as they are
    engine.close(timeout=0.1)
    src.release_all()

    src2 = InstrumentedSource("a")
    src2.release("k")
    src2.release("q")
    again = Engine(tmp_path / "dest", plugins={"a": src2}, store=PostgresStore(pg_url, schema=pg_schema))
    try:
        finished = again.wait([running, queued], timeout=20)
        assert [r.state for r in finished] == [State.COMPLETED, State.COMPLETED]
        assert finished[0].attempts == 2  # it had started once before
        assert {r.id: r.state for r in again.records()}[done] is State.COMPLETED
    finally:
        again.close()


# -- the schema ------------------------------------------------------------------------------


def _open_and_close(url: str, schema: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    PostgresStore(url, schema=schema).close()


@pytest.mark.timeout(120)
def test_many_processes_opening_a_new_schema_at_once_all_succeed(pg_url: str, pg_schema: str) -> None:
    barrier = SPAWN.Barrier(4)
    processes = [SPAWN.Process(target=_open_and_close, args=(pg_url, pg_schema, barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(90)
    assert [p.exitcode for p in processes] == [
        0
    ] * 4  # exactly one created it; the others waited and found it
    assert _rows(pg_url, pg_schema, "SELECT value FROM S.meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]


def test_a_schema_holding_another_programs_tables_is_refused_and_left_alone(
    pg_url: str, pg_schema: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'CREATE TABLE "{pg_schema}".records (id int)')
    with pytest.raises(StoreError, match="holds tables of another program"):
        PostgresStore(pg_url, schema=pg_schema)
    tables = _rows(pg_url, pg_schema, f"SELECT tablename FROM pg_tables WHERE schemaname = '{pg_schema}'")
    assert tables == [("records",)]


def test_a_schema_a_newer_headwater_wrote_is_refused_and_left_alone(pg_url: str, pg_schema: str) -> None:
    PostgresStore(pg_url, schema=pg_schema).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{pg_schema}\".meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer headwater \\(schema 99"):
        PostgresStore(pg_url, schema=pg_schema)
    assert _rows(pg_url, pg_schema, "SELECT value FROM S.meta WHERE key = 'schema_version'") == [("99",)]


def test_a_schema_name_that_cannot_be_used_is_refused(pg_url: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        PostgresStore(pg_url, schema="x" * 60)


# -- the password is never shown --------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://postgres:{pw}@127.0.0.1:{port}/test",
        "postgresql://postgres@127.0.0.1:{port}/test?password={pw}",
        "host=127.0.0.1 port={port} user=postgres dbname=test password={pw}",
    ],
)
def test_the_password_of_the_url_is_never_shown(
    template: str, pg_url: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = PostgresStore(
        template.format(pw=SECRET, port=5432), schema=pg_schema
    )  # trust auth: it is not asked
    try:
        assert SECRET not in repr(store) and "***" in repr(store)
        assert SECRET not in store.where
    finally:
        store.close()
    with pytest.raises(StoreError) as caught:  # nothing listens there
        PostgresStore(template.format(pw=SECRET, port=1), schema=pg_schema, retry_for=0.5)
    shown = "".join(traceback.format_exception(caught.value))
    assert "cannot connect to the records at" in shown and "***" in shown
    assert SECRET not in shown
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        (
            "postgresql://u:p%40ss@h:5432/db?sslmode=require",
            "postgresql://u:***@h:5432/db?sslmode=require",
            "p@ss",
        ),
        (
            "postgresql://u@h/db?sslmode=require&password=p@ss",
            "postgresql://u@h/db?sslmode=require&password=***",
            "p@ss",
        ),
        ("postgres://h/db", "postgres://h/db", None),
        ("host=h password='p@ss word' user=u", "host=h password=*** user=u", "p@ss word"),
        ("host=h password = p@ss dbname=d", "host=h password = *** dbname=d", "p@ss"),
    ],
)
def test_a_url_is_shown_with_its_password_masked_in_any_form_libpq_takes(
    url: str, shown: str, secret: str | None
) -> None:
    assert masked(url) == shown
    if secret is not None:
        said = f"failed: {secret!r}, {quote(secret)!r}, {quote_plus(secret)!r}"
        assert secret not in scrubbed(said, url) and quote(secret) not in scrubbed(said, url)
        assert scrubbed(said, url).count("***") == 3


# -- status: every record, unfinished ones too ---------------------------------------------


def test_records_streams_every_record_latest_first_for_status(store: PostgresStore) -> None:
    made = [
        _record(f"r{i:04d}", [State.QUEUED, State.RUNNING, State.COMPLETED][i % 3], at=float(i))
        for i in range(2500)
    ]
    for record in made:
        store.add(attrs.evolve(record, state=State.QUEUED))
    store.commit([r for r in made if r.state is not State.QUEUED])
    latest = list(reversed(made))
    assert list(store.records()) == latest  # across chunks of 1000
    assert list(store.records(states={State.RUNNING})) == [r for r in latest if r.state is State.RUNNING]
    assert list(store.records(before=made[10].id)) == latest[-10:]
    assert list(store.records(sources={"nosuch"})) == []
    with pytest.raises(UnknownDownloadError):
        store.records(before="nosuch")


def test_states_reads_the_state_of_each_id_as_the_server_holds_it_leaving_out_unknown_ids(
    store: PostgresStore,
) -> None:
    store.add(_record("q"))
    store.add(_record("r"))
    store.flush()
    assert store.states(["q", "r", "nosuch"]) == {"q": State.QUEUED, "r": State.QUEUED}
    store.commit([_record("r", State.COMPLETED, attempts=1)])
    assert store.states(["r", "q"]) == {"q": State.QUEUED, "r": State.COMPLETED}
    assert store.states([]) == {}


def test_start_if_marks_queued_downloads_running_at_the_next_attempt_and_returns_them(
    store: PostgresStore,
) -> None:
    store.add(_record("q", attempts=1))
    store.add(attrs.evolve(_record("named"), dest_dir="/elsewhere"))
    store.add(_record("moved", attempts=2))
    store.add(_record("cancelled"))
    store.flush()
    store.commit([_record("cancelled", State.CANCELLED)])
    starts = [
        Start("q", 1, "/dest", 5.0),
        Start("named", 0, "/dest", 6.0),
        Start("moved", 1, "/dest", 7.0),  # its attempt moved on: stale
        Start("cancelled", 0, "/dest", 8.0),
        Start("nosuch", 0, "/dest", 9.0),
    ]
    started = store.start_if(starts)
    assert started[2:] == [None, None, None]
    assert started[0] == attrs.evolve(
        _record("q"), state=State.RUNNING, attempts=2, started_at=5.0, updated_at=5.0, dest_dir="/dest"
    )
    assert started[1] == attrs.evolve(
        _record("named"),
        state=State.RUNNING,
        attempts=1,
        started_at=6.0,
        updated_at=6.0,
        dest_dir="/elsewhere",
    )
    assert store.fetch(["q", "named", "moved"]) == {
        "q": started[0],
        "named": started[1],
        "moved": _record("moved", attempts=2),
    }
    assert store.start_if([Start("q", 1, "/dest", 10.0)]) == [None]  # once RUNNING, a second start is refused
    assert store.start_if([]) == []
    store.add(_record("again"))
    store.flush()
    with pytest.raises(ValueError, match="id was given twice"):  # else both would be told they started it
        store.start_if([Start("again", 0, "/dest", 11.0), Start("again", 0, "/dest", 11.0)])
    assert store.fetch(["again"])["again"].state is State.QUEUED


def test_matching_names_ended_records_by_id_or_its_start_or_end(store: PostgresStore) -> None:
    made = [_record(f"r{i:04d}", [State.QUEUED, State.COMPLETED][i % 2], at=float(i)) for i in range(30)]
    for record in made:
        store.add(attrs.evolve(record, state=State.QUEUED))
    store.commit([r for r in made if r.state is not State.QUEUED])
    ended = [r for r in reversed(made) if r.state.terminal]
    assert store.matching("r0003") == [made[3]]
    assert store.matching("0003") == [made[3]]  # an end
    assert store.matching("r001", limit=100) == [r for r in ended if r.id.startswith("r001")]
    assert store.matching("r") == ended[:2]
    assert store.matching("r0002") == [] and store.matching("nosuch") == []
