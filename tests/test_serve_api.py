"""The JSON API and the event stream, over real HTTP against uvicorn on 127.0.0.1.

One server for the module, with real plugins: the builtin file and http
sources (the http one against tests/localhttp.py) and instrumented sources
whose downloads the tests hold and release. Each test uses its own source
or its own downloads, so they do not see each other's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from instrumented import InstrumentedSource
from localhttp import LocalServer, Resource
from localhttp import serving as serving_http
from served import Served, serving

import headwater_file
import headwater_http
from headwater import RatePolicy, ServerError, State, UnknownDownloadError
from headwater.client import Event, Watch

pytestmark = pytest.mark.timeout(60)

SOURCES = ("inst", "pages", "slow")


@pytest.fixture(scope="module")
def inst() -> InstrumentedSource:
    return InstrumentedSource("inst", RatePolicy(concurrency=4))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, inst: InstrumentedSource) -> Iterator[Served]:
    plugins = {
        "file": headwater_file,
        "http": headwater_http.source,
        "inst": inst,
        "pages": InstrumentedSource("pages"),
        "slow": InstrumentedSource("slow"),
    }
    with serving(tmp_path_factory.mktemp("dest"), plugins, tick=0.05) as server:
        yield server
    inst.release_all()


@pytest.fixture(scope="module")
def web() -> Iterator[LocalServer]:
    with serving_http() as server:
        yield server


def error_of(response: object) -> tuple[int, str]:
    status = response.status_code  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and body["error"]["message"], body
    return status, body["error"]["code"]


def test_health_and_sources(served: Served) -> None:
    health = served.http.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["dest_dir"] == str(served.engine.dest_dir)
    views = {v["name"]: v for v in served.http.get("/api/v1/sources").json()}
    assert set(views) == {"file", "http", *SOURCES}
    assert views["inst"]["policy"]["concurrency"] == 4 and views["inst"]["paused"] is False
    assert views["http"]["aliases"] == ["https"] and views["http"]["status"] == "ok"
    assert [s.name for s in served.client.sources()] == sorted(views)


def test_submit_wait_get_and_the_file_landed(served: Served, tmp_path: Path) -> None:
    source = tmp_path / "hello.txt"
    source.write_text("hello")
    answer = served.http.post("/api/v1/downloads", json={"source": "file", "targets": [str(source)]})
    assert answer.status_code == 201
    (download_id,) = answer.json()["ids"]
    (record,) = served.client.wait([download_id], timeout=20)
    assert record.state is State.COMPLETED
    assert Path(record.file_path or "").read_text() == "hello"
    assert served.http.get(f"/api/v1/downloads/{download_id}").json()["state"] == "completed"
    assert served.client.get(download_id) == served.engine.get(download_id)


def test_errors_have_the_right_status_and_a_json_body(served: Served, tmp_path: Path) -> None:
    post = served.http.post
    assert error_of(post("/api/v1/downloads", json={"source": "nosuch", "targets": ["x"]})) == (
        400,
        "unknown_source",
    )
    assert error_of(post("/api/v1/downloads", json={"source": ["file", "nosuch"], "targets": ["x"]})) == (
        400,
        "unknown_source",
    )
    assert error_of(post("/api/v1/downloads", json={"source": "file", "targets": []})) == (400, "bad_target")
    assert error_of(post("/api/v1/downloads", json={"source": "file", "targets": ["ok", ""]})) == (
        400,
        "bad_target",
    )
    assert error_of(post("/api/v1/downloads", json={"source": "file", "targets": [3]})) == (
        400,
        "bad_request",
    )
    assert (
        error_of(
            post("/api/v1/downloads", content=b"{not json", headers={"content-type": "application/json"})
        )[0]
        == 400
    )
    for method, path in (("GET", ""), ("POST", "/cancel"), ("DELETE", "")):
        response = served.http.request(method, f"/api/v1/downloads/0123456789abcdef{path}")
        assert error_of(response) == (404, "unknown_download")
    assert error_of(post("/api/v1/sources/nosuch/pause")) == (404, "unknown_source")
    assert error_of(served.http.get("/api/v1/nothing/here")) == (404, "not_found")
    assert error_of(served.http.get("/api/v1/downloads", params={"limit": 0}))[0] == 400
    with pytest.raises(UnknownDownloadError):
        served.client.get("0123456789abcdef")
    # Nothing of the refused submits was queued.
    assert served.client.records(source="file", states=[State.QUEUED]) == []


def test_pages_with_a_cursor_newest_first_and_filters(served: Served) -> None:
    served.client.pause("pages")  # nothing of it starts: the 25 stay queued
    ids = served.client.submit_many("pages", [f"ok:{n}" for n in range(25)])
    assert len(set(ids)) == 25
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        params = {"source": "pages", "limit": 10, **({"cursor": cursor} if cursor else {})}
        page = served.http.get("/api/v1/downloads", params=params).json()
        sizes.append(len(page["downloads"]))
        seen += [r["id"] for r in page["downloads"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sizes == [10, 10, 5]
    assert seen == ids[::-1]
    oldest, _ = served.client.page(source="pages", limit=100, newest_first=False)
    assert [r.id for r in oldest] == ids
    queued = served.http.get("/api/v1/downloads", params={"source": "pages", "state": ["queued", "running"]})
    assert len(queued.json()["downloads"]) == 25
    done = served.http.get("/api/v1/downloads", params={"source": "pages", "state": "completed"})
    assert done.json() == {"downloads": [], "next": None}
    gone = served.http.get("/api/v1/downloads", params={"source": "nosuch"})
    assert gone.json() == {"downloads": [], "next": None}
    for download_id in ids:
        served.client.remove(download_id)
    assert served.client.records(source="pages") == []


def test_match_names_downloads_by_id_or_its_start_or_end(served: Served) -> None:
    served.client.pause("pages")  # nothing of it starts: queued ones stay in the engine
    ids = served.client.submit_many("pages", ["ok:m1", "ok:m2", "ok:m3"])
    try:
        assert served.client.cancel(ids[0])  # ended: read from the store
        for download_id in ids:
            for key in (download_id, download_id[-12:], download_id[:20]):
                assert [r.id for r in served.client.match(key)] == [download_id], key
        made = ids[0][:6]  # the first 12 characters are the time it was made: these share a start
        named = served.client.match(made, limit=1000)
        assert set(ids) <= {r.id for r in named}
        assert named == sorted(named, key=lambda r: (r.created_at, r.id), reverse=True)
        assert served.client.match(made) == named[:2]
        assert served.client.match("nosuch") == []

        def listed(**params: object) -> list[str]:
            page = served.http.get("/api/v1/downloads", params={"match": ids[1][-12:], **params}).json()
            assert page["next"] is None
            return [r["id"] for r in page["downloads"]]

        assert listed(state="queued") == [ids[1]] and listed(state="cancelled") == []
        assert listed(source="pages") == [ids[1]] and listed(source="inst") == []
        refused = served.http.get("/api/v1/downloads", params={"match": "x", "cursor": "y"})
        assert error_of(refused) == (400, "bad_request")
    finally:
        for download_id in ids:
            served.client.remove(download_id)


def test_cancel_a_running_download(served: Served, inst: InstrumentedSource) -> None:
    started = inst.starts()
    (download_id,) = served.client.submit_many("inst", ["block:cancel-me"])
    inst.wait_started(started + 1)
    answer = served.http.post(f"/api/v1/downloads/{download_id}/cancel").json()
    assert answer["cancelled"] is True and answer["download"]["state"] == "cancelled"
    assert served.client.cancel(download_id) is False  # already ended
    # The plugin saw the cancel and returned: its download_impl ended.
    with inst.lock:
        ended = [e for e in inst.events if e.job_id == download_id and e.kind == "end"]
    deadline = threading.Event()
    for _ in range(200):
        if ended:
            break
        deadline.wait(0.05)
        with inst.lock:
            ended = [e for e in inst.events if e.job_id == download_id and e.kind == "end"]
    assert ended, "download_impl did not return after the cancel"


def test_pause_and_resume_a_source(served: Served) -> None:
    view = served.http.post("/api/v1/sources/slow/pause").json()
    assert view["name"] == "slow" and view["paused"] is True
    assert "slow" in served.engine.paused() and "slow" in served.client.paused()
    (download_id,) = served.client.submit_many("slow", ["ok:paused"])
    assert served.client.get(download_id).state is State.QUEUED
    assert served.http.post("/api/v1/sources/slow/resume").json()["paused"] is False
    (record,) = served.client.wait([download_id], timeout=20)
    assert record.state is State.COMPLETED
    every = served.http.post("/api/v1/sources/pause").json()
    assert {v["name"] for v in every if v["paused"]} == {"file", "http", *SOURCES}
    served.http.post("/api/v1/sources/resume")
    assert served.engine.paused() == ["pages"] or served.engine.paused() == []


def test_set_a_policy(served: Served) -> None:
    view = served.http.patch("/api/v1/sources/slow/policy", json={"concurrency": 3, "delay": 0.5}).json()
    assert view["policy"]["concurrency"] == 3 and view["policy"]["delay"] == 0.5
    assert error_of(served.http.patch("/api/v1/sources/slow/policy", json={"concurrency": 0})) == (
        400,
        "bad_policy",
    )
    assert error_of(served.http.patch("/api/v1/sources/slow/policy", json={"speed": 1})) == (
        400,
        "bad_policy",
    )
    assert error_of(served.http.patch("/api/v1/sources/nosuch/policy", json={})) == (404, "unknown_source")
    served.client.set_policy("slow", RatePolicy())


def test_a_chain_falls_back_to_the_next_source(served: Served, web: LocalServer) -> None:
    url = web.add("/chain.bin", Resource(b"chained" * 100))
    answer = served.http.post("/api/v1/downloads", json={"source": ["file", "http"], "targets": [url]})
    (download_id,) = answer.json()["ids"]
    (record,) = served.client.wait([download_id], timeout=20)
    assert record.state is State.COMPLETED and record.source == "http"
    assert [t.source for t in record.tried] == ["file"]
    assert Path(record.file_path or "").read_bytes() == b"chained" * 100


def test_remove_and_clear(served: Served, inst: InstrumentedSource) -> None:
    ended = served.client.submit_many("inst", ["ok:a", "ok:b"])
    (running,) = served.client.submit_many("inst", ["block:stays"])
    served.client.wait(ended, timeout=20)
    last = served.http.delete(f"/api/v1/downloads/{ended[0]}").json()
    assert last["id"] == ended[0] and last["state"] == "completed"
    assert served.http.get(f"/api/v1/downloads/{ended[0]}").status_code == 404
    removed = [r.id for r in served.client.clear()]
    assert ended[1] in removed and running not in removed
    assert served.client.get(running).state in (State.QUEUED, State.RUNNING)
    inst.release("stays")
    served.client.wait([running], timeout=20)


def follow_events(served: Served, found: queue.Queue[Event], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        try:
            for event in served.client.events(keepalive=1):
                found.put(event)
                if stop.is_set():
                    return
        except ServerError:
            if not stop.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_event_stream_shows_queued_running_progress_completed_in_order(
    served: Served, web: LocalServer
) -> None:
    gate = threading.Semaphore(0)
    url = web.add("/events.bin", Resource(b"x" * 40_000, gate=gate, chunk=10_000))
    found: queue.Queue[Event] = queue.Queue()
    stop = threading.Event()
    thread = follow_events(served, found, stop)
    assert found.get(timeout=10).kind == "snapshot"
    (download_id,) = served.client.submit_many("http", [url])
    seen: list[tuple[str, object]] = []

    def until(wanted: tuple[str, object]) -> None:
        while wanted not in seen:
            event = found.get(timeout=10)
            if event.kind == "download" and event.data["id"] == download_id:
                seen.append(("download", event.data["state"]))
            elif event.kind == "progress":
                seen.extend(
                    ("progress", f["transferred"]) for f in event.data["downloads"] if f["id"] == download_id
                )

    until(("download", "running"))
    gate.release(1)
    until(("progress", 10_000))
    gate.release(3)
    until(("download", "completed"))
    stop.set()
    states = [s for kind, s in seen if kind == "download"]
    assert states == ["queued", "running", "completed"]
    first_progress = seen.index(("progress", 10_000))
    assert seen.index(("download", "running")) < first_progress < seen.index(("download", "completed"))
    thread.join(5)


def test_a_reconnect_with_last_event_id_misses_nothing(served: Served, tmp_path: Path) -> None:
    stream = served.client.events(keepalive=1)
    snapshot = next(stream)
    assert snapshot.kind == "snapshot" and snapshot.id is not None
    stream.close()  # disconnected
    files = []
    for n in range(3):
        files.append(tmp_path / f"{n}.txt")
        files[-1].write_text(str(n))
    ids = served.client.submit_many("file", [str(f) for f in files])
    served.client.wait(ids, timeout=20)
    stream = served.client.events(snapshot.id, keepalive=1)
    replayed: dict[str, list[str]] = {i: [] for i in ids}
    for event in stream:
        assert event.kind != "snapshot", (
            "a reconnect within the log gets the events it missed, not a snapshot"
        )
        if event.kind == "download" and event.data["id"] in replayed:
            replayed[event.data["id"]].append(event.data["state"])
        if all(states[-1:] == ["completed"] for states in replayed.values()):
            break
    stream.close()
    assert replayed == {i: ["queued", "running", "completed"] for i in ids}
    stale = served.client.events("00000000-1", keepalive=1)
    assert next(stale).kind == "snapshot"  # an id of another run: start over from a snapshot
    stale.close()


def test_watch_follows_progress_without_polling(served: Served, web: LocalServer) -> None:
    gate = threading.Semaphore(0)
    url = web.add("/watch.bin", Resource(b"y" * 30_000, gate=gate, chunk=10_000))
    (download_id,) = served.client.submit_many("http", [url])
    with Watch(served.client, [download_id]) as watch:
        gate.release(1)
        for _ in range(400):
            if watch.get(download_id).transferred == 10_000:
                break
            threading.Event().wait(0.025)
        assert watch.get(download_id).transferred == 10_000
        gate.release(2)
        (record,) = watch.wait(timeout=20)
    assert record.state is State.COMPLETED and record.transferred == 30_000
