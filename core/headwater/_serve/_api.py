"""The JSON API (``/api/v1``), the event stream and the page, as one Litestar application.

:func:`make_app` builds it around an engine. Handlers that call the engine
are plain functions Litestar runs on a worker thread (``sync_to_thread``),
so the event loop never waits for the engine; none of them calls
``Engine.wait``. Errors answer with :class:`~headwater._serve._views.ErrorBody`
and the status codes listed in ``docs/serve.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import attrs
from litestar import Litestar, Request, Response, delete, get, patch, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import File, Stream
from litestar.static_files import create_static_files_router

from headwater import (
    ConfigError,
    EngineClosedError,
    HeadwaterError,
    InvalidPolicyError,
    PluginError,
    PolicyOverride,
    Record,
    State,
    UnknownDownloadError,
    UnknownSourceError,
    __version__,
)
from headwater._engine import Engine
from headwater._serve._live import Live, Query
from headwater._serve._security import (
    API_PREFIX,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    same_secret,
    session_value,
)
from headwater._serve._views import (
    TYPE_ENCODERS,
    Cancelled,
    Cleared,
    DownloadPage,
    ErrorBody,
    ErrorDetail,
    Health,
    Login,
    Session,
    SourceView,
    SubmitBody,
    Submitted,
    source_views,
)
from headwater.client import MAX_TARGETS

log = logging.getLogger("headwater._serve")

PAGE_DIR = Path(__file__).with_name("page")


@attrs.define
class Service:
    """What every handler shares: the engine, its live view, the token, the config's policy fields."""

    engine: Engine
    live: Live
    token: str
    config: Mapping[str, Mapping[str, object]]
    started_at: float = attrs.Factory(time.time)

    def sources(self) -> list[SourceView]:
        return source_views(self.engine, self.config)

    def source(self, name: str) -> SourceView:
        """The source ``name`` (a name or alias) names; 404 if none does."""
        for view in self.sources():
            if view.status == "ok" and (view.name == name or name in view.aliases):
                return view
        raise _problem(
            404, "unknown_source", f"no source named {name!r}; GET {API_PREFIX}/sources lists them"
        )


def _problem(status: int, code: str, message: str, queued: list[str] | None = None) -> HTTPException:
    """An error answer with :class:`ErrorBody` (see :func:`_error_response`)."""
    return HTTPException(status_code=status, detail=message, extra={"code": code, "queued": queued})


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _error_response(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """Every error as ``{"error": {"code", "message"}}`` with its status."""
    if isinstance(exc, HTTPException):
        status = exc.status_code
        extra = exc.extra if isinstance(exc.extra, dict) else {}
        code = str(extra.get("code") or _CODES.get(status, "error"))
        message = str(exc.detail)
        if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
            reasons = "; ".join(
                f"{e.get('key') or e.get('source') or ''}: {e.get('message')}".lstrip(": ")
                for e in exc.extra
                if isinstance(e, dict)
            )
            message = f"{message}: {reasons}" if reasons else message
        queued = extra.get("queued")
        return Response(ErrorBody(ErrorDetail(code, message, queued)), status_code=status)
    log.error("request failed", exc_info=exc)
    return Response(ErrorBody(ErrorDetail("internal", f"internal error: {exc}")), status_code=500)


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        s: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS.get(s, "an error"))
        for s in (400, *statuses)
    }


_DESCRIPTIONS = {
    400: "the request is malformed or names something invalid",
    404: "no such download or source",
    409: "a cluster's policies are set in its processes' configuration",
    502: "the source's plugin misbehaved",
    503: "the server is shutting down",
}

# -- health and sources -------------------------------------------------------------


@get("/health", sync_to_thread=True, responses=_errors())
def health(service: NamedDependency[Service]) -> Health:
    """The server is up; what it runs."""
    return Health(
        status="ok",
        version=__version__,
        pid=os.getpid(),
        dest_dir=str(service.engine.dest_dir),
        started_at=service.started_at,
        active=service.live.active_count(),
    )


@get("/sources", sync_to_thread=True, responses=_errors())
def list_sources(service: NamedDependency[Service]) -> list[SourceView]:
    """Every source: loaded ones with their policy and pause state, broken ones with their error."""
    return service.sources()


@patch("/sources/{name:str}/policy", sync_to_thread=True, responses=_errors(404, 409))
def set_policy(
    name: FromPath[str], data: JSONBody[dict[str, Any]], service: NamedDependency[Service]
) -> SourceView:
    """Change some fields of a source's rate policy (the others stay); in force from its next start."""
    view = service.source(name)
    assert view.policy is not None
    try:
        policy = PolicyOverride(data).apply(view.policy)
    except (TypeError, InvalidPolicyError) as exc:
        raise _problem(400, "bad_policy", str(exc)) from None
    try:
        service.engine.set_policy(view.name, policy)
    except ConfigError as exc:  # a cluster's policies are its processes' configuration
        raise _problem(409, "policy_fixed", str(exc)) from None
    service.live.source_changed([view.name])
    return service.source(view.name)


@post("/sources/{name:str}/pause", status_code=200, sync_to_thread=True, responses=_errors(404))
def pause_source(name: FromPath[str], service: NamedDependency[Service]) -> SourceView:
    """Start no more downloads of this source; running ones finish. Kept across restarts."""
    return _set_paused(service, name, True)


@post("/sources/{name:str}/resume", status_code=200, sync_to_thread=True, responses=_errors(404))
def resume_source(name: FromPath[str], service: NamedDependency[Service]) -> SourceView:
    """Start this source's queued downloads again."""
    return _set_paused(service, name, False)


def _set_paused(service: Service, name: str, paused: bool) -> SourceView:
    view = service.source(name)
    (service.engine.pause if paused else service.engine.resume)(view.name)
    service.live.source_changed([view.name])
    return service.source(view.name)


@post("/sources/pause", status_code=200, sync_to_thread=True, responses=_errors())
def pause_all(service: NamedDependency[Service]) -> list[SourceView]:
    """Pause every source."""
    return _set_all_paused(service, True)


@post("/sources/resume", status_code=200, sync_to_thread=True, responses=_errors())
def resume_all(service: NamedDependency[Service]) -> list[SourceView]:
    """Resume every source."""
    return _set_all_paused(service, False)


def _set_all_paused(service: Service, paused: bool) -> list[SourceView]:
    (service.engine.pause if paused else service.engine.resume)()
    views = service.sources()
    service.live.source_changed(v.name for v in views)
    return views


# -- downloads ---------------------------------------------------------------------


@post("/downloads", status_code=201, sync_to_thread=True, responses=_errors(502, 503))
def submit(data: JSONBody[SubmitBody], service: NamedDependency[Service]) -> Submitted:
    """Queue one download per target, on a source or a fallback chain; 201 with their ids.

    Every target is checked before any is queued; if a source's plugin
    rejects one target, the ones before it stay queued and the error lists
    their ids in ``queued``.
    """
    chain: str | list[str] = data.source
    if isinstance(chain, list) and not chain:
        raise _problem(400, "unknown_source", "source is an empty chain: name at least one source")
    if not data.targets:
        raise _problem(400, "bad_target", "targets is empty: give at least one target")
    if len(data.targets) > MAX_TARGETS:
        raise _problem(400, "bad_target", f"{len(data.targets)} targets; at most {MAX_TARGETS} per request")
    empty = [i for i, t in enumerate(data.targets) if not t]
    if empty:
        raise _problem(
            400, "bad_target", f"target {empty[0]} is empty; every target must be a non-empty string"
        )
    if data.display_name is not None and len(data.targets) > 1:
        raise _problem(400, "bad_request", "display_name names one download: give one target with it")
    ids: list[str] = []
    try:
        for at, target in enumerate(data.targets):
            try:
                ids.append(
                    service.engine.submit(
                        chain, target, display_name=data.display_name, existing=data.existing
                    )
                )
            except UnknownSourceError as exc:
                raise _problem(400, "unknown_source", str(exc), ids or None) from None
            except (ValueError, HeadwaterError) as exc:
                raise _submit_problem(exc, at, target, ids) from None
    finally:
        service.live.catch_up()
    return Submitted(ids)


def _submit_problem(exc: Exception, at: int, target: str, ids: list[str]) -> HTTPException:
    where = f"target {at} ({target!r})" if at or ids else f"target {target!r}"
    if isinstance(exc, EngineClosedError):
        return _problem(503, "closed", "the server is shutting down", ids or None)
    if isinstance(exc, PluginError):
        return _problem(502, "plugin_error", f"{where}: {exc}", ids or None)
    return _problem(400, "bad_target", f"{where}: {exc}", ids or None)


@get("/downloads", sync_to_thread=True, responses=_errors())
def list_downloads(
    service: NamedDependency[Service],
    states: Annotated[list[State] | None, QueryParameter(name="state")] = None,
    source: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    cursor: FromQuery[str | None] = None,
    order: FromQuery[Literal["newest", "oldest"]] = "newest",
    match: Annotated[str | None, QueryParameter(min_length=1)] = None,
) -> DownloadPage:
    """A page of downloads, newest first (``order=oldest``: oldest first), filtered by state and source.

    ``source`` is a name or alias (records of a source no longer loaded are
    found by its name).

    ``match`` names downloads as ``headwater status IDS`` does: the one
    whose id it is, else up to ``limit`` whose id starts or ends with it
    (newest first); of those, the page holds the ones the other filters let
    through, and ``next`` is None. No cursor with it.

    ``next`` is the cursor for the following page (None on the last).
    """
    sources: tuple[str, ...] = ()
    if source is not None:  # an alias means its source; any other name is taken as it is
        try:
            sources = (service.source(source).name,)
        except HTTPException:
            sources = (source,)
    if match is not None:
        if cursor is not None:
            raise _problem(400, "bad_request", "match names the downloads: leave out cursor")
        named = [
            r
            for r in service.engine.match(match, limit)
            if (not states or r.state in states) and (not sources or r.source in sources)
        ]
        return DownloadPage(named if order == "newest" else named[::-1], None)
    query = Query(
        states=tuple(states or ()),
        sources=sources,
        limit=limit,
        cursor=cursor,
        newest_first=order == "newest",
    )
    try:
        records, after = service.live.page(query)
    except ValueError as exc:
        raise _problem(400, "bad_request", str(exc)) from None
    return DownloadPage(records, after)


@get("/downloads/{download_id:str}", sync_to_thread=True, responses=_errors(404))
def get_download(download_id: FromPath[str], service: NamedDependency[Service]) -> Record:
    """One download's record, with live progress if it is running."""
    try:
        return service.engine.get(download_id)
    except UnknownDownloadError as exc:
        raise _problem(404, "unknown_download", str(exc)) from None


@post("/downloads/{download_id:str}/cancel", status_code=200, sync_to_thread=True, responses=_errors(404))
def cancel_download(download_id: FromPath[str], service: NamedDependency[Service]) -> Cancelled:
    """Cancel a download: a queued one never starts, a running one is stopped."""
    try:
        cancelled = service.engine.cancel(download_id)
        record = service.engine.get(download_id)
    except UnknownDownloadError as exc:
        raise _problem(404, "unknown_download", str(exc)) from None
    service.live.catch_up()
    return Cancelled(cancelled, record)


@delete("/downloads/{download_id:str}", status_code=200, sync_to_thread=True, responses=_errors(404))
def remove_download(download_id: FromPath[str], service: NamedDependency[Service]) -> Record:
    """Forget a download (cancelling it first if it has not ended); its file stays. Its last record."""
    try:
        record = service.engine.remove(download_id)
    except UnknownDownloadError as exc:
        raise _problem(404, "unknown_download", str(exc)) from None
    service.live.catch_up()
    return record


@post("/downloads/clear", status_code=200, sync_to_thread=True, responses=_errors())
def clear_downloads(service: NamedDependency[Service]) -> Cleared:
    """Remove every ended download (completed, failed, cancelled); files stay."""
    removed = []
    ended = (State.COMPLETED, State.FAILED, State.CANCELLED)
    cursor: str | None = None
    while True:
        records, cursor = service.live.page(Query(states=ended, limit=1000, cursor=cursor))
        for record in records:
            try:
                removed.append(service.engine.remove(record.id))
            except UnknownDownloadError:
                continue
        if cursor is None:
            break
    service.live.catch_up()
    return Cleared(removed)


# -- the event stream ------------------------------------------------------------------


@get(
    "/events",
    media_type="text/event-stream",
    responses=_errors(),
    description="Server-sent events: snapshot, download, removed, source, progress (see docs/serve.md).",
)
async def events(
    service: NamedDependency[Service],
    last_event_id: Annotated[str | None, HeaderParameter(name="last-event-id")] = None,
    keepalive: Annotated[float, QueryParameter(ge=1, le=300)] = 15.0,
) -> Stream:
    """The live event stream (``text/event-stream``); ``keepalive``: seconds between keep-alive comments."""
    stream, first = await anyio.to_thread.run_sync(service.live.open_stream, last_event_id)
    return Stream(
        service.live.events(stream, first, keepalive),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


# -- the page's session ------------------------------------------------------------------


@post(
    "/session",
    status_code=200,
    sync_to_thread=False,
    security=[{}],
    responses={401: ResponseSpec(ErrorBody, description="wrong token")},
)
def login(data: JSONBody[Login], service: NamedDependency[Service]) -> Response[Session]:
    """Log the page in: give the token once, get an HttpOnly SameSite=Strict session cookie."""
    if not same_secret(data.token, service.token):
        raise _problem(401, "unauthorized", "wrong token; `headwater token` prints the right one")
    return Response(Session(True), cookies=[_session_cookie(session_value(service.token), SESSION_MAX_AGE)])


@delete("/session", status_code=200, sync_to_thread=False, security=[{}])
def logout() -> Response[Session]:
    """Log the page out (the session cookie is cleared)."""
    return Response(Session(False), cookies=[_session_cookie("", 0)])


def _session_cookie(value: str, max_age: int) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE, value=value, path="/", max_age=max_age, httponly=True, samesite="strict"
    )


# -- the page ------------------------------------------------------------------------------


@get("/", include_in_schema=False, sync_to_thread=False)
def page() -> File:
    """The web page."""
    return File(
        PAGE_DIR / "index.html", media_type="text/html; charset=utf-8", content_disposition_type="inline"
    )


_API = [
    health,
    list_sources,
    set_policy,
    pause_source,
    resume_source,
    pause_all,
    resume_all,
    submit,
    list_downloads,
    get_download,
    cancel_download,
    remove_download,
    clear_downloads,
    events,
    login,
    logout,
]


def make_app(service: NamedDependency[Service]) -> Litestar:
    """The Litestar application serving ``service`` (wrap it with :func:`headwater._serve._security.guard`).

    Its startup starts ``service.live`` on the server's event loop, its
    shutdown stops it; the engine is the caller's to close.
    """
    from litestar import Router

    async def started() -> None:
        import asyncio

        service.live.start(asyncio.get_running_loop())

    def stopped() -> None:
        service.live.stop()

    openapi = OpenAPIConfig(
        title="headwater",
        version=__version__,
        description="One download engine, every source a plugin. See docs/serve.md.",
        path=f"{API_PREFIX}/schema",
        render_plugins=[JsonRenderPlugin()],
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")},
        ),
        security=[{"bearer": []}],
    )
    return Litestar(
        route_handlers=[
            Router(API_PREFIX, route_handlers=_API),
            page,
            create_static_files_router("/static", directories=[PAGE_DIR], include_in_schema=False),
        ],
        dependencies={"service": Provide(lambda: service, use_cache=True, sync_to_thread=False)},
        exception_handlers={Exception: _error_response},
        openapi_config=openapi,
        type_encoders=dict(TYPE_ENCODERS),
        on_startup=[started],
        on_shutdown=[stopped],
        logging_config=None,
    )
