"""The change feed of cluster records (headwater._cluster._pgfeed): NOTIFY, and the resync after reconnects.

A writer and a listener in two processes on the real server on
127.0.0.1:5432 (skipped, saying so, when it is not reachable); the test
ends the listener's connection from the server's side
(``pg_terminate_backend``) again and again while the writer writes, and
the listener must still hand on every change, once, in order per download.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import attrs
import psycopg
import pytest
from pgproxy import Proxy

from headwater import Change, ChangeKind, Record, State, Swap
from headwater._cluster._pgfeed import RecordListener
from headwater._cluster._pgstore import PostgresStore
from headwater._errors import StoreError

pytest_plugins = ["pg_fixtures"]

SPAWN = multiprocessing.get_context("spawn")

#: What the test compares of a change: kind, id, state, attempts, updated_at.
Seen = tuple[str, str, str, int, float]

DOWNLOADS = 40
SENTINEL = "zz-the-end"


def _seen(change: Change) -> Seen:
    r = change.record
    return (change.kind.value, r.id, r.state.value, r.attempts, r.updated_at)


def _listen(url: str, schema: str, name: str, ready: Event, stop: Event, out: str) -> None:
    """The listener's process: every change it is handed, in order, written to ``out`` at the end."""
    got: list[Seen] = []
    ended = threading.Event()

    def publish(changes: list[Change]) -> None:
        got.extend(_seen(c) for c in changes)
        if any(c.record.id == SENTINEL for c in changes):
            ended.set()

    listener = RecordListener(url, publish, schema=schema, name=name)
    listener.start()
    ready.set()
    ended.wait(120)
    stop.wait(120)
    listener.close()
    Path(out).write_text(
        json.dumps({"got": got, "resynced": listener.resynced, "reconnects": listener.reconnects})
    )


def _write(url: str, schema: str, out: str) -> None:
    """The writer's process: downloads through two attempts each, some removed; what it did, to ``out``."""
    store = PostgresStore(url, schema=schema)
    made: list[Seen] = []

    def record(change: ChangeKind, r: Record) -> None:
        made.append((change.value, r.id, r.state.value, r.attempts, r.updated_at))

    now = 1.0
    rows = []
    for n in range(DOWNLOADS):
        extra = {"big": "x" * 9000} if n == 7 else {}  # too big for a notification: read from the table
        rows.append(Record(f"d{n:02d}", "a", "t", None, "u", State.QUEUED, now, now, extra=extra))
    for r in rows:
        store.add(r)
        record(ChangeKind.RECORD, r)
    store.flush()
    steps = [State.RUNNING, State.QUEUED, State.RUNNING, State.COMPLETED]
    for step in steps:
        for n, r in enumerate(rows):
            now += 0.001
            new = attrs.evolve(r, state=step, updated_at=now, attempts=r.attempts + (step is State.RUNNING))
            assert store.commit_if([Swap.over(r, new)]) == [True]
            record(ChangeKind.RECORD, new)
            rows[n] = new
            time.sleep(0.002)
    for r in rows[:5]:
        store.delete(r.id)
        record(ChangeKind.REMOVED, r)
    end = Record(SENTINEL, "a", "t", None, "u", State.COMPLETED, now, now)
    store.commit([end])
    record(ChangeKind.RECORD, end)
    store.close()
    Path(out).write_text(json.dumps(made))


def _backends(url: str, name: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
        return [int(r[0]) for r in rows]


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _per_download(changes: list[Seen]) -> dict[str, list[Seen]]:
    by: dict[str, list[Seen]] = {}
    for change in changes:
        by.setdefault(change[1], []).append(change)
    return by


@pytest.mark.timeout(240)
def test_a_listener_in_another_process_gets_every_change_in_order_across_forced_disconnects(
    tmp_path: Path, pg_url: str, pg_schema: str
) -> None:
    PostgresStore(pg_url, schema=pg_schema).close()  # the schema, before the listener looks
    name = f"hwfeed-{pg_schema}"
    ready, stop = SPAWN.Event(), SPAWN.Event()
    heard, written = tmp_path / "heard.json", tmp_path / "written.json"
    listener = SPAWN.Process(target=_listen, args=(pg_url, pg_schema, name, ready, stop, str(heard)))
    listener.start()
    writer = None
    try:
        assert ready.wait(60), "the listener never started"
        writer = SPAWN.Process(target=_write, args=(pg_url, pg_schema, str(written)))
        writer.start()
        kills = 0
        while writer.is_alive():
            # Whenever the listener is connected, cut it off from the server's side.
            for pid in _backends(pg_url, name):
                _terminate(pg_url, pid)
                kills += 1
            time.sleep(0.15)
        writer.join(30)
        assert writer.exitcode == 0
        stop.set()
        listener.join(150)
        assert listener.exitcode == 0
    finally:
        stop.set()
        for process in (listener, writer):
            if process is not None and process.is_alive():
                process.kill()
    report = json.loads(heard.read_text())
    made = [tuple(c) for c in json.loads(written.read_text())]
    got = [tuple(c) for c in report["got"]]
    # Every change once, in the order it was made, per download; nothing else.
    assert _per_download(got) == _per_download(made)  # type: ignore[arg-type]
    assert len(got) == len(made) == DOWNLOADS * 5 + 5 + 1
    assert kills >= 3 and report["reconnects"] >= 3, (kills, report["reconnects"])
    assert report["resynced"] > 0, "no change was missed while disconnected: the resync was not tested"


@pytest.mark.timeout(60)
def test_a_change_too_big_for_its_notification_is_handed_on_when_the_connection_breaks_while_reading_it(
    pg_url: str, pg_schema: str
) -> None:
    """The listener reads such a change from the table: a cut then loses neither it nor one before it."""
    PostgresStore(pg_url, schema=pg_schema).close()
    proxy = Proxy(5432)
    heard: list[Change] = []
    both = threading.Event()

    def publish(changes: list[Change]) -> None:
        heard.extend(changes)
        if {c.record.id for c in heard} >= {"small", "big"}:
            both.set()

    listener = RecordListener(pg_url.replace(":5432/", f":{proxy.port}/"), publish, schema=pg_schema)
    store = PostgresStore(pg_url, schema=pg_schema)
    try:
        listener.start()
        proxy.cut_at(b"SELECT data::text FROM")  # the listener's read of a change too big to notify
        small = Record("small", "a", "t", None, "u", State.QUEUED, 1.0, 1.0)
        big = Record("big", "a", "t", None, "u", State.QUEUED, 1.0, 1.0, extra={"big": "x" * 9000})
        store.commit([small, big])  # one transaction: both notifications come in one batch
        assert both.wait(30), f"handed on: {[c.record.id for c in heard]}"
    finally:
        listener.close()
        store.close()
        proxy.close()
    assert proxy.cuts == 1 and listener.reconnects >= 1, (proxy.cuts, listener.reconnects)
    assert sorted(c.record.id for c in heard) == ["big", "small"]
    assert [c.record.extra for c in heard if c.record.id == "big"] == [{"big": "x" * 9000}]


def test_a_listener_that_cannot_connect_says_so_with_the_password_masked(pg_schema: str) -> None:
    listener = RecordListener(
        "postgresql://postgres:hunter2-pw@127.0.0.1:1/test",
        lambda changes: None,
        schema=pg_schema,
        retry_for=0.3,
    )
    with pytest.raises(StoreError, match="cannot listen to the records at") as caught:
        listener.start()
    assert "hunter2-pw" not in str(caught.value) and "hunter2-pw" not in repr(listener)
