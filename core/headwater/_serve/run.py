"""Running the API on uvicorn: in the foreground (``headwater serve``) or on a thread.

The socket is bound (and the bind checked) before uvicorn starts, so the
address is known, and written to the state file, before the first request.
On SIGINT or SIGTERM, or :meth:`BackgroundServer.stop`, the event streams
end first, then uvicorn finishes the requests in flight; the engine is the
caller's to close afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from headwater import ServeError
from headwater._engine import Engine
from headwater._serve._api import Service, make_app
from headwater._serve._live import Live
from headwater._serve._security import ASGIApp, Security, check_bind, guard, host_allow_list

#: Seconds uvicorn gives requests in flight at shutdown before it cancels them.
GRACE = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port). Raises ServeError if it cannot bind."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The ``http://host:port`` base URL of a bound socket (a wildcard bind is reached on 127.0.0.1)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def build(
    engine: Engine,
    security: Security,
    config: Mapping[str, Mapping[str, object]] | None = None,
    **live_options: Any,
) -> tuple[ASGIApp, Live]:
    """The guarded ASGI application serving ``engine``, and its live view.

    ``live_options`` go to :class:`~headwater._serve._live.Live` (``tick``,
    ``keepalive``...); ``config`` is headwater.toml's ``[sources]`` tables.
    """
    live = Live(engine, lambda: service.sources(), **live_options)
    service = Service(engine, live, security.token, config or {})
    litestar: ASGIApp = make_app(service)  # type: ignore[assignment]  # Litestar's scope types are narrower
    return guard(litestar, security), live


class _Uvicorn(uvicorn.Server):
    """uvicorn, ending the event streams before it waits for open connections.

    Its signal handling stops the server without raising the signal again
    afterwards, so the caller's clean-up runs.
    """

    def __init__(self, config: uvicorn.Config, live: Live) -> None:
        super().__init__(config)
        self._live = live

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._live.stop()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            self.should_exit = True

        kept = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in kept.items():
                signal.signal(sig, handler)


def _config(app: ASGIApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE,
        server_header=False,
    )


def serve_forever(app: ASGIApp, live: Live, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` on this thread until SIGINT or SIGTERM."""
    _Uvicorn(_config(app), live).run(sockets=[sock])


class BackgroundServer:
    """Serves an engine on a thread: for tests, benchmarks and programs that embed headwater.

    Args:
        engine: the engine to serve (still the caller's to close, after :meth:`stop`).
        token: the API token.
        host: where to listen; loopback unless ``token_configured``.
        port: 0 for a free port.
        allow_hosts: more ``Host`` names to answer (see :func:`~headwater._serve._security.host_allow_list`).
        cors_origins: origins allowed to call the API from a browser.
        live_options: for :class:`~headwater._serve._live.Live` (``tick``, ``keepalive``...).

    ``url`` is the base URL once constructed. Raises ServeError for an unsafe bind.
    """

    def __init__(
        self,
        engine: Engine,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_hosts: Sequence[str] = (),
        cors_origins: Sequence[str] = (),
        config: Mapping[str, Mapping[str, object]] | None = None,
        token_configured: bool = True,
        **live_options: Any,
    ) -> None:
        check_bind(host, token_configured, "the token file")
        self._sock = bind(host, port)
        self.url = url_of(self._sock)
        self.port: int = self._sock.getsockname()[1]
        security = Security(token, host_allow_list(host, self.port, allow_hosts), tuple(cors_origins))
        app, live = build(engine, security, config, **live_options)
        self._server = _Uvicorn(_config(app), live)
        self._thread = threading.Thread(target=self._run, name="headwater-serve", daemon=True)
        self._failed: BaseException | None = None

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start()
            self._failed = exc

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; return once requests are answered. Raises ServeError if it did not start."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.stop()
            raise ServeError(f"the server at {self.url} did not start: {self._failed!r}")
        return self

    def stop(self, timeout: float = GRACE + 5) -> None:
        """Stop serving and wait for the thread (event streams end first)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
