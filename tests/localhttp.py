"""A real HTTP/1.1 server on 127.0.0.1 whose misbehaviour each test scripts.

A :class:`Resource` is served at a path. Each request takes the next
:class:`Step` of the resource's script (when the script runs out, requests
are served normally), and every request's headers are logged so tests can
assert on what the client sent.

Served plain by default; given a server :class:`ssl.SSLContext` (see
:func:`tls_contexts`), the same server speaks HTTPS.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import trustme


@attrs.define
class Step:
    """What the server does for one request.

    Attributes:
        status: answer with this status and no body (e.g. 429) instead of the data.
        headers: extra response headers for this request.
        drop_after: send this many body bytes, then close the connection.
        stall_after: send this many body bytes, then wait for ``release`` (or 10 s).
        ignore_range: send the whole resource with 200 even if a Range was asked.
        range_from: answer with a 206 starting here, whatever Range was asked or none (a server that
            misreads Range).
        length: announce this Content-Length instead of the true one (body still cut to it or the data).
        data: serve these bytes instead of the resource's data (a changed resource).
        etag: announce this ETag instead of the resource's.
        ignore_if_range: answer a Range with a 206 even when If-Range does not match the ETag.
        content_range: send this Content-Range with a 206 instead of the true one.
        unframed: send no Content-Length: the body ends when the connection closes.
        ungated: send the body without waiting on the resource's gate.
    """

    status: int | None = None
    headers: dict[str, str] = attrs.Factory(dict)
    drop_after: int | None = None
    stall_after: int | None = None
    ignore_range: bool = False
    range_from: int | None = None
    length: int | None = None
    data: bytes | None = None
    etag: str | None = None
    ignore_if_range: bool = False
    content_range: str | None = None
    unframed: bool = False
    ungated: bool = False


@attrs.define
class Resource:
    data: bytes
    etag: str | None = '"v1"'
    headers: dict[str, str] = attrs.Factory(dict)
    script: list[Step] = attrs.Factory(list)
    chunk: int = 16384
    gate: threading.Semaphore | None = None  # when set: send one chunk per gate.release()
    requests: list[dict[str, str]] = attrs.Factory(list)
    peers: list[int] = attrs.Factory(list)  # the client's port of each request: a new port, a new connection
    release: threading.Event = attrs.Factory(threading.Event)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Serve one connection (on its own thread); a TLS one shakes hands here first.

        The listening socket of a TLS server hands out connections that have
        not shaken hands yet, so one slow or refusing client holds up only its
        own thread, never the accept loop.
        """
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet about connections the client dropped: they are part of the tests.

        That is resets and broken pipes, and TLS handshakes the client refused.
        """
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@attrs.frozen
class TLSContexts:
    """A matching pair of SSL contexts from one throwaway trustme CA.

    Attributes:
        server: presents a certificate for 127.0.0.1 signed by the CA; hand it to :class:`LocalServer`.
        client: trusts that CA (and nothing else); hand it to the client under test.
        ca: the CA itself (``ca.cert_pem.write_to_path(...)`` for a CA file).
    """

    server: ssl.SSLContext
    client: ssl.SSLContext
    ca: trustme.CA


def tls_contexts() -> TLSContexts:
    """A new CA, a server context with its certificate for ``127.0.0.1``, and a client context trusting it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    ca.configure_trust(client)
    return TLSContexts(server, client, ca)


class LocalServer:
    """Serves :class:`Resource` objects at paths on 127.0.0.1, in a daemon thread.

    Args:
        ssl_context: when given, a server context (see :func:`tls_contexts`):
            the listening socket is wrapped with it, so every connection is
            TLS and :meth:`url` gives ``https://`` URLs. None serves plain HTTP.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.resources: dict[str, Resource] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

            def do_HEAD(self) -> None:
                server.handle(self, head=True)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def add(self, path: str, resource: Resource) -> str:
        """Serve ``resource`` at ``path``; return its URL."""
        self.resources[path.split("?")[0]] = resource
        return self.url(path)

    def handle(self, req: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = req.path.split("?")[0]
        res = self.resources.get(path)
        if res is None:
            req.send_response(404)
            req.send_header("content-length", "0")
            req.end_headers()
            return
        with self.lock:
            res.requests.append({k.lower(): v for k, v in req.headers.items()})
            res.peers.append(req.client_address[1])
            step = res.script.pop(0) if res.script else Step()
        if step.status is not None:
            req.send_response(step.status)
            for key, value in step.headers.items():
                req.send_header(key, value)
            req.send_header("content-length", "0")
            req.end_headers()
            return
        data = step.data if step.data is not None else res.data
        etag = step.etag if step.etag is not None else res.etag
        start = 0
        wanted = req.headers.get("range")
        if_range = req.headers.get("if-range")
        matches = if_range is None or if_range == etag or step.ignore_if_range
        if wanted and not step.ignore_range and matches:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        if step.range_from is not None:
            start = step.range_from
        if start >= len(data) > 0:
            req.send_response(416)
            req.send_header("content-range", f"bytes */{len(data)}")
            req.send_header("content-length", "0")
            req.end_headers()
            return
        body = data[start:]
        req.send_response(206 if start else 200)
        if start:
            true_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
            req.send_header("content-range", step.content_range or true_range)
        if not step.unframed:
            req.send_header("content-length", str(step.length if step.length is not None else len(body)))
        req.send_header("accept-ranges", "bytes")
        if etag is not None:
            req.send_header("etag", etag)
        for key, value in {**res.headers, **step.headers}.items():
            req.send_header(key, value)
        req.end_headers()
        if head:
            return
        if step.length is not None:
            body = body[: step.length]
        self._send_body(req, res, step, body)

    def _send_body(self, req: BaseHTTPRequestHandler, res: Resource, step: Step, body: bytes) -> None:
        limit = step.drop_after if step.drop_after is not None else step.stall_after
        sent = 0
        for at in range(0, len(body), res.chunk):
            piece = body[at : at + res.chunk]
            if limit is not None and sent + len(piece) > limit:
                piece = piece[: limit - sent]
                req.wfile.write(piece)
                req.wfile.flush()
                if step.stall_after is not None:
                    res.release.wait(10)
                req.close_connection = True
                req.connection.shutdown(socket.SHUT_RDWR)
                return
            if res.gate is not None and not step.ungated and not res.gate.acquire(timeout=10):
                return
            req.wfile.write(piece)
            sent += len(piece)
        req.wfile.flush()
        if step.unframed or (step.length is not None and step.length > len(body)):
            req.close_connection = True
            req.connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def serving(ssl_context: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    """A started :class:`LocalServer` (over TLS when given a server ``ssl_context``), shut down on exit."""
    server = LocalServer(ssl_context)
    server.thread.start()
    try:
        yield server
    finally:
        for res in server.resources.values():
            res.release.set()
            if res.gate is not None:
                res.gate.release(1000)
        server.httpd.shutdown()
        server.httpd.server_close()
