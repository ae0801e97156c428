"""A Python client of a running ``headwater serve``, with the method names of :class:`headwater.Engine`.

::

    from headwater.client import Client

    with Client("http://127.0.0.1:8765", token) as client:
        ids = client.submit_many("http", ["https://example.org/a.iso"])
        records = client.wait(ids, timeout=600)

It needs nothing beyond headwater's own dependencies (httpx). Errors: an
unknown id raises :class:`~headwater.UnknownDownloadError` as the
engine does; every other error answer, and a server that cannot be
reached, raises :class:`~headwater.ServerError` with the status and
the error's code. :meth:`Client.wait` and :class:`Watch` follow the event
stream (no polling).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import attrs
import httpx

from headwater import RatePolicy, Record, ServerError, SourceInfo, State, Tried, UnknownDownloadError

API = "/api/v1"

#: A download's choice for a final name already taken (see ``headwater.land``).
Existing = Literal["rename", "skip", "overwrite"]

#: The most targets the server takes in one submit.
MAX_TARGETS = 10_000


def record_from_json(data: Mapping[str, Any]) -> Record:
    """A :class:`~headwater.Record` from its JSON form; fields this version does not know are ignored."""
    known = {a.name for a in attrs.fields(Record)}
    fields = {k: v for k, v in data.items() if k in known}
    fields["state"] = State(fields["state"])
    fields["tried"] = tuple(Tried(t["source"], t["error"]) for t in fields.get("tried", ()))
    fields["fallbacks"] = tuple(fields.get("fallbacks", ()))
    fields["extra"] = MappingProxyType(dict(fields.get("extra", {})))
    return Record(**fields)


@attrs.frozen
class Event:
    """One server-sent event.

    Attributes:
        kind: ``snapshot``, ``download``, ``removed``, ``source``,
            ``progress`` (see docs/serve.md), or ``keepalive`` for the
            server's keep-alive comment (data None).
        data: the event's JSON data, decoded.
        id: its id (None for progress and keep-alives).
    """

    kind: str
    data: Any
    id: str | None


class Client:
    """Talks to the headwater server at ``url`` with ``token``.

    Args:
        url: the server's base URL (``http://127.0.0.1:8765``).
        token: the API token (``headwater token`` prints it).
        timeout: seconds to wait for each answer.

    Thread-safe (one httpx connection pool). Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=self.url + API, headers=self._headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the headwater server at {self.url}: {exc}") from exc
        if response.is_success:
            return response.json() if response.content else None
        raise _error(response)

    # -- the server and its sources --------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's health answer: version, pid, dest_dir, active downloads."""
        answer: dict[str, Any] = self._call("GET", "/health")
        return answer

    def sources(self, include_broken: bool = False) -> list[SourceInfo]:
        """The server's sources, as :meth:`headwater.Engine.sources` gives them."""
        infos = []
        for view in self._call("GET", "/sources"):
            if view["status"] != "ok" and not include_broken:
                continue
            policy = RatePolicy(**view["policy"]) if view["policy"] else None
            infos.append(
                SourceInfo(
                    view["name"],
                    tuple(view["aliases"]),
                    policy,
                    view["distribution"],
                    view["version"],
                    view["error"],
                )
            )
        return infos

    def paused(self) -> list[str]:
        """The names of the paused sources, sorted."""
        return sorted(v["name"] for v in self._call("GET", "/sources") if v["paused"])

    def pause(self, source: str | None = None) -> None:
        """Pause ``source`` (a name or alias), or every source."""
        self._call("POST", f"/sources/{source}/pause" if source else "/sources/pause")

    def resume(self, source: str | None = None) -> None:
        """Resume ``source``, or every source."""
        self._call("POST", f"/sources/{source}/resume" if source else "/sources/resume")

    def set_policy(self, source: str, policy: RatePolicy | Mapping[str, object]) -> None:
        """Put ``policy`` (whole, or some of its fields) in force for ``source``."""
        fields = attrs.asdict(policy) if isinstance(policy, RatePolicy) else dict(policy)
        self._call("PATCH", f"/sources/{source}/policy", json=fields)

    # -- downloads ---------------------------------------------------------------------------

    def submit(
        self,
        source: str | Sequence[str],
        target: str,
        *,
        display_name: str | None = None,
        existing: Existing | None = None,
    ) -> str:
        """Queue one download; its id. ``source`` is a name or alias, or a fallback chain."""
        body: dict[str, Any] = {"source": _chain(source), "targets": [target], "existing": existing}
        if display_name is not None:
            body["display_name"] = display_name
        ids: list[str] = self._call("POST", "/downloads", json=body)["ids"]
        return ids[0]

    def submit_many(
        self, source: str | Sequence[str], targets: Sequence[str], *, existing: Existing | None = None
    ) -> list[str]:
        """Queue one download per target, in one request per 10,000; their ids, in order.

        If the server rejects one target, the ServerError's message says
        which; the downloads of the targets before it stay queued.
        """
        ids: list[str] = []
        for at in range(0, len(targets), MAX_TARGETS):
            body = {
                "source": _chain(source),
                "targets": list(targets[at : at + MAX_TARGETS]),
                "existing": existing,
            }
            ids += self._call("POST", "/downloads", json=body)["ids"]
        return ids

    def get(self, download_id: str) -> Record:
        """One download's record (live progress if running). Raises UnknownDownloadError."""
        return record_from_json(self._call("GET", f"/downloads/{download_id}"))

    def page(
        self,
        *,
        states: Iterable[State | str] = (),
        source: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> tuple[list[Record], str | None]:
        """One page of downloads and the cursor of the next (None on the last)."""
        params: list[tuple[str, str | int]] = [
            ("limit", limit),
            ("order", "newest" if newest_first else "oldest"),
        ]
        params += [("state", s.value if isinstance(s, State) else s) for s in states]
        if source is not None:
            params.append(("source", source))
        if cursor is not None:
            params.append(("cursor", cursor))
        answer = self._call("GET", "/downloads", params=params)
        return [record_from_json(r) for r in answer["downloads"]], answer["next"]

    def match(self, key: str, limit: int = 2) -> list[Record]:
        """The downloads ``key`` names, as :meth:`Engine.match`: the one whose id is ``key``, else up to
        ``limit`` whose id starts or ends with it, newest first."""
        answer = self._call("GET", "/downloads", params={"match": key, "limit": limit})
        return [record_from_json(r) for r in answer["downloads"]]

    def records(self, source: str | None = None, *, states: Iterable[State | str] = ()) -> list[Record]:
        """Every download (of one source, in some states), oldest first, as :meth:`Engine.records`."""
        wanted = list(states)
        found: list[Record] = []
        cursor: str | None = None
        while True:
            records, cursor = self.page(
                states=wanted, source=source, limit=1000, cursor=cursor, newest_first=False
            )
            found += records
            if cursor is None:
                return found

    def cancel(self, download_id: str) -> bool:
        """Cancel a download; True if this call cancelled it, False if it had already ended."""
        cancelled: bool = self._call("POST", f"/downloads/{download_id}/cancel")["cancelled"]
        return cancelled

    def remove(self, download_id: str) -> Record:
        """Forget a download (cancelled first if it has not ended); its last record."""
        return record_from_json(self._call("DELETE", f"/downloads/{download_id}"))

    def clear(self) -> list[Record]:
        """Remove every ended download (files stay); the last records of those removed."""
        return [record_from_json(r) for r in self._call("POST", "/downloads/clear")["removed"]]

    def wait(self, ids: Iterable[str], timeout: float | None = None) -> list[Record]:
        """Block until every download in ``ids`` has ended; their records in order.

        Follows the event stream. Raises TimeoutError if ``timeout`` seconds
        pass first, UnknownDownloadError for an unknown (or removed) id.
        """
        order = list(ids)
        with Watch(self, order) as watch:
            return watch.wait(timeout)

    # -- events -------------------------------------------------------------------------------

    def events(
        self, last_event_id: str | None = None, *, keepalive: float = 15.0
    ) -> Generator[Event, None, None]:
        """The server's events as they come (see docs/serve.md); ends when the server ends the stream.

        Raises ServerError when the stream cannot be opened or breaks.
        """
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=keepalive * 3)
        try:
            with self._http.stream(
                "GET", "/events", params={"keepalive": keepalive}, headers=headers, timeout=timeout
            ) as response:
                if not response.is_success:
                    response.read()
                    raise _error(response)
                yield from parse_events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise ServerError(f"the event stream of {self.url} broke: {exc}") from exc


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Server-sent events from the lines of a stream; a comment is a ``keepalive`` event."""
    kind, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(kind, json.loads("\n".join(data)), event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            yield Event("keepalive", None, None)
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def _chain(source: str | Sequence[str]) -> str | list[str]:
    return source if isinstance(source, str) else list(source)


def _error(response: httpx.Response) -> Exception:
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = None, f"{response.status_code} {response.reason_phrase}: {response.text[:200]}"
    if code == "unknown_download":
        return UnknownDownloadError(response.url.path.split("/downloads/")[-1].split("/")[0])
    return ServerError(message, response.status_code, code)


class Watch:
    """The latest records of some downloads, kept up to date from the event stream on a thread.

    ``get(id)`` answers from memory, so a display may ask it as often as it
    likes. :meth:`start` (or entering it) opens the stream and waits for the first snapshot;
    downloads the snapshot does not hold (they ended earlier) are read once.
    A broken stream is reopened with ``Last-Event-ID``, so nothing is missed.

    Args:
        client: the client to follow the server with.
        ids: the downloads to watch.
        keepalive: seconds between the server's keep-alives; also how soon
            the thread notices :meth:`close`.
        timeout: seconds to wait for the first snapshot.
    """

    def __init__(
        self, client: Client, ids: Sequence[str], *, keepalive: float = 1.0, timeout: float = 30.0
    ) -> None:
        self._client = client
        self._wanted = list(ids)
        self._ids = set(ids)
        self._timeout = timeout
        self._keepalive = keepalive
        self._records: dict[str, Record] = {}
        self._missing: set[str] = set()  # removed, or unknown to the server
        self._changed = threading.Condition()
        self._closed = False
        self._failure: BaseException | None = None
        self._last_id: str | None = None
        self._started = False
        self._thread = threading.Thread(target=self._follow, name="headwater-watch", daemon=True)

    def start(self) -> Watch:
        """Open the stream and wait for the first snapshot (once; later calls return at once).

        Raises ServerError if the stream cannot be followed.
        """
        if self._started:
            return self
        self._started = True
        self._thread.start()
        with self._changed:
            ready = self._changed.wait_for(
                lambda: self._failure is not None or self._ids <= self._records.keys() | self._missing,
                self._timeout,
            )
        if self._failure is not None or not ready:
            self.close()
            raise self._failure or ServerError(f"no answer on the event stream of {self._client.url}")
        return self

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop following; the thread ends at the next event or keep-alive."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def get(self, download_id: str) -> Record:
        """The latest record of a watched download.

        Raises UnknownDownloadError if it is gone, and the ServerError that
        broke the stream for good.
        """
        with self._changed:
            if self._failure is not None:
                raise self._failure
            record = self._records.get(download_id)
            if record is None or download_id in self._missing:
                raise UnknownDownloadError(download_id)
        return record

    def wait(self, timeout: float | None = None) -> list[Record]:
        """Block until every watched download has ended; their records in the order given.

        Raises TimeoutError, UnknownDownloadError for one removed, or the
        ServerError that broke the stream for good.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def done() -> bool:
            return (
                self._failure is not None
                or bool(self._missing)
                or all(self._records[i].state.terminal for i in self._ids if i in self._records)
            )

        with self._changed:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    going = sum(1 for r in self._records.values() if not r.state.terminal)
                    raise TimeoutError(f"{going} of {len(self._ids)} downloads still going after {timeout} s")
                self._changed.wait(left)
            if self._failure is not None:
                raise self._failure
            if self._missing:
                raise UnknownDownloadError(sorted(self._missing)[0])
            return [self._records[i] for i in self._wanted]

    # -- the thread ----------------------------------------------------------------------------

    def _follow(self) -> None:
        failures = 0
        while not self._closed:
            stream = self._client.events(self._last_id, keepalive=self._keepalive)
            try:
                for event in stream:
                    failures = 0
                    self._take(event)
                    if self._closed:
                        return
            except (ServerError, ValueError) as exc:
                failures += 1
                if failures >= 3:
                    with self._changed:
                        self._failure = exc
                        self._changed.notify_all()
                    return
                time.sleep(0.2 * failures)
            finally:
                stream.close()

    def _take(self, event: Event) -> None:
        if event.kind == "keepalive":
            return
        if event.id is not None:
            self._last_id = event.id
        if event.kind == "snapshot":
            shown = {r["id"]: r for r in event.data["downloads"] if r["id"] in self._ids}
            records = {i: record_from_json(r) for i, r in shown.items()}
            for download_id in self._ids - records.keys():
                try:
                    records[download_id] = self._client.get(download_id)
                except UnknownDownloadError:
                    self._missing.add(download_id)
            self._update(records.values())
        elif event.kind == "download" and event.data["id"] in self._ids:
            self._update([record_from_json(event.data)])
        elif event.kind == "removed" and event.data["id"] in self._ids:
            with self._changed:
                self._missing.add(event.data["id"])
                self._changed.notify_all()
        elif event.kind == "progress":
            with self._changed:
                for figures in event.data["downloads"]:
                    known = self._records.get(figures["id"])
                    if known is not None and known.state is State.RUNNING:
                        self._records[known.id] = attrs.evolve(
                            known, **{k: v for k, v in figures.items() if k != "id"}
                        )
                self._changed.notify_all()

    def _update(self, records: Iterable[Record]) -> None:
        with self._changed:
            for record in records:
                known = self._records.get(record.id)
                if known is None or record.updated_at >= known.updated_at:
                    self._records[record.id] = record
            self._changed.notify_all()
