"""A hostile HTTP/1.1 server on 127.0.0.1 for the fault script: it lies in every way a table asks.

Each fault mounts its :class:`Served` URLs under a prefix of its own. Request
``n`` for a URL gets ``script[min(n, len(script) - 1)]``, a :class:`Reply`
saying how to misbehave (the last reply repeats forever). The server writes
raw bytes on raw sockets, so it can send what no well-behaved library would:
wrong lengths and ranges, broken framing, resets, stalls, slow or huge headers.

One thread accepts; each connection gets a daemon thread that serves its
requests one after another (keep-alive) until it closes. A stall waits on
its mount's ``released`` event, which :meth:`HostileServer.unmount` sets, so
no thread outlives its fault by more than a moment.
"""

from __future__ import annotations

import email.utils
import gzip
import socket
import struct
import threading
import time
from collections.abc import Sequence

import attrs

#: A Reply field left at this value keeps what the :class:`Served` resource says.
SAME = "\0same"

#: Body bytes written per send, and per ``pace`` sleep.
CHUNK = 16384


@attrs.frozen
class Reply:
    """How the server answers one request for a :class:`Served` URL. Defaults: an honest answer.

    Attributes:
        status: this status (no body unless ``body`` is given) instead of 200/206.
        headers: extra header lines, sent as given (a name may repeat).
        etag: announce this ETag instead of the resource's (None: no ETag); SAME keeps it.
        body: this resource instead of the served data (a changed resource).
        ranges: honour ``Range``; False answers 200 with everything.
        if_range: honour ``If-Range`` (a 200 when it names another version); False sends the range anyway.
        range_start: a 206's bytes start here instead of where the client asked.
        range_total: a 206's Content-Range announces this total, and its bytes stop there.
        content_range: send this Content-Range on a 206 instead of the true one.
        length: announce this Content-Length, whatever the body sent.
        no_length: send no Content-Length: the body ends when the connection closes.
        cut: send this many body bytes, then close the connection.
        reset: with ``cut``: close with a TCP reset instead of a FIN.
        stall: send this many body bytes, then nothing more until the fault ends.
        silent: read the request, then send nothing at all until the fault ends.
        pace: seconds to sleep between chunks of the body.
        head_pace: seconds to sleep between bytes of the status line and headers.
        raw: send exactly these bytes as the whole answer, then close.
        chunked: send the body with ``Transfer-Encoding: chunked``.
        gzip: gzip the body and say ``Content-Encoding: gzip`` (even though the client asked for identity).
        encoding_lie: say ``Content-Encoding: gzip`` over a body that is not gzip.
        retry_in: send ``Retry-After`` as an HTTP date this many seconds from the moment of answering.
        close: close the connection after the answer.
        trailing: bytes sent after the body on a kept-alive connection (poison for the next answer).
    """

    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    etag: str | None = SAME
    body: bytes | None = None
    ranges: bool = True
    if_range: bool = True
    range_start: int | None = None
    range_total: int | None = None
    content_range: str | None = None
    length: int | None = None
    no_length: bool = False
    cut: int | None = None
    reset: bool = False
    stall: int | None = None
    silent: bool = False
    pace: float = 0.0
    head_pace: float = 0.0
    raw: bytes | None = None
    chunked: bool = False
    gzip: bool = False
    encoding_lie: bool = False
    retry_in: float | None = None
    close: bool = False
    trailing: bytes = b""


@attrs.frozen
class Served:
    """One URL of a fault: the bytes it stands for and how each request for it is answered.

    Attributes:
        path: the URL path under the fault's prefix (may hold a query).
        data: the resource: the independent truth a completed download is checked against.
        script: the replies, one per request in order; the last one repeats.
        etag: the resource's ETag (None: none).
        headers: header lines sent with every reply (a Content-Disposition, say).
        fragment: appended to the URL given to headwater (``#sha256=...``).
        versions: the contents a completed download of it may hold; None means just ``data``.
        deliver: a correct client completes it (failing then counts as losing it);
            False: failing with a clear error is right too.
        url: give headwater this URL instead of the mounted one (a refused port, another scheme).
    """

    path: str
    data: bytes
    script: tuple[Reply, ...] = (Reply(),)
    etag: str | None = '"v1"'
    headers: tuple[tuple[str, str], ...] = ()
    fragment: str = ""
    versions: tuple[bytes, ...] | None = None
    deliver: bool = True
    url: str | None = None

    def contents(self) -> tuple[bytes, ...]:
        """The byte strings a completed download of this URL may hold."""
        return self.versions if self.versions is not None else (self.data,)


@attrs.define
class _Mount:
    served: Served
    released: threading.Event
    requests: int = 0


@attrs.frozen
class Request:
    """The parts of a request the server looks at."""

    method: str
    path: str
    headers: dict[str, str]


class HostileServer:
    """Serves mounted :class:`Served` URLs on 127.0.0.1 with their scripted faults, until :meth:`close`.

    Thread-safe: faults running in parallel mount and unmount their own
    prefixes. Paths not mounted get a 404.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self._listener.getsockname()[1]
        self._mounts: dict[str, _Mount] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._accepter = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self._accepter.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def mount(self, prefix: str, served: Sequence[Served]) -> list[str]:
        """Serve each of ``served`` at ``prefix + path``; return the targets to give headwater."""
        released = threading.Event()
        targets = []
        with self._lock:
            for item in served:
                self._mounts[prefix + item.path.split("?")[0]] = _Mount(item, released)
                targets.append((item.url or self.url(prefix + item.path)) + item.fragment)
        return targets

    def requests(self, prefix: str) -> int:
        """How many requests the URLs under ``prefix`` have had so far."""
        with self._lock:
            return sum(m.requests for path, m in self._mounts.items() if path.startswith(prefix))

    def unmount(self, prefix: str) -> None:
        """Stop serving ``prefix``: its stalled answers end, later requests get a 404."""
        with self._lock:
            for path in [p for p in self._mounts if p.startswith(prefix)]:
                self._mounts.pop(path).released.set()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for mount in self._mounts.values():
                mount.released.set()
        self._listener.close()

    # -- serving ---------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        buffered = b""
        try:
            while not self._closed.is_set():
                request, buffered = _read_request(conn, buffered)
                if request is None:
                    return
                with self._lock:
                    mount = self._mounts.get(request.path.split("?")[0])
                    if mount is not None:
                        reply = mount.served.script[min(mount.requests, len(mount.served.script) - 1)]
                        mount.requests += 1
                if mount is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                if not _answer(conn, request, mount, reply):
                    return
        except OSError:
            pass
        finally:
            conn.close()


def _read_request(conn: socket.socket, buffered: bytes) -> tuple[Request | None, bytes]:
    """The next request on ``conn`` and the bytes read past it; None when the client closed."""
    while b"\r\n\r\n" not in buffered:
        got = conn.recv(65536)
        if not got:
            return None, b""
        buffered += got
    head, _, rest = buffered.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    method, target, _ = line.split(" ", 2)
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers), rest


def _answer(conn: socket.socket, request: Request, mount: _Mount, reply: Reply) -> bool:
    """Write ``reply`` to ``request``; return whether the connection may carry another request."""
    served = mount.served
    if reply.raw is not None:
        conn.sendall(reply.raw)
        return False
    if reply.silent:
        mount.released.wait()
        return False
    etag = served.etag if reply.etag == SAME else reply.etag
    data = reply.body if reply.body is not None else served.data
    validators = {etag, *(value for name, value in served.headers if name.lower() == "last-modified")}
    status, lines, body = _status_and_body(request, reply, data, validators - {None})
    if reply.retry_in is not None:
        lines.append(("Retry-After", email.utils.formatdate(time.time() + reply.retry_in, usegmt=True)))
    if reply.gzip:
        body = gzip.compress(body, mtime=0)
        lines.append(("Content-Encoding", "gzip"))
    if reply.encoding_lie:
        lines.append(("Content-Encoding", "gzip"))
    if etag is not None:
        lines.append(("ETag", etag))
    lines += [("Accept-Ranges", "bytes"), *served.headers, *reply.headers]
    if reply.chunked:
        lines.append(("Transfer-Encoding", "chunked"))
    elif reply.length is not None:
        lines.append(("Content-Length", str(reply.length)))
    elif not reply.no_length:
        lines.append(("Content-Length", str(len(body))))
    if reply.close or reply.no_length:
        lines.append(("Connection", "close"))
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in lines) + "\r\n"
    _send_head(conn, head.encode("latin-1", errors="replace"), reply.head_pace)
    if request.method == "HEAD":
        return not reply.close
    if not _send_body(conn, mount, reply, body):
        return False
    if reply.trailing:
        conn.sendall(reply.trailing)
    return not (reply.close or reply.no_length or (reply.length is not None and reply.length > len(body)))


def _status_and_body(
    request: Request, reply: Reply, data: bytes, validators: set[str | None]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, the range header lines and the body bytes an answer carries.

    ``validators`` are the ETag and Last-Modified an ``If-Range`` must match.
    """
    if reply.status is not None:
        return reply.status, [], reply.body or b""
    wanted = request.headers.get("range", "")
    if_range = request.headers.get("if-range")
    current = if_range is None or if_range in validators or not reply.if_range
    if not (wanted.startswith("bytes=") and reply.ranges and current):
        return 200, [], data
    first = wanted.removeprefix("bytes=").split("-")[0]
    asked = int(first) if first.isdigit() else 0
    if asked >= len(data) > 0:
        return 416, [("Content-Range", f"bytes */{len(data)}")], b""
    start = reply.range_start if reply.range_start is not None else asked
    total = reply.range_total if reply.range_total is not None else len(data)
    body = data[start:total]
    content_range = reply.content_range or f"bytes {start}-{start + len(body) - 1}/{total}"
    return 206, [("Content-Range", content_range)], body


def _send_head(conn: socket.socket, head: bytes, pace: float) -> None:
    if not pace:
        conn.sendall(head)
        return
    for at in range(len(head)):
        conn.sendall(head[at : at + 1])
        time.sleep(pace)


def _send_body(conn: socket.socket, mount: _Mount, reply: Reply, body: bytes) -> bool:
    """Send ``body`` as ``reply`` says (cut, stall, pace, chunked); False once the connection is done."""
    stop = reply.cut if reply.cut is not None else reply.stall
    sent = 0
    for at in range(0, len(body), CHUNK):
        piece = body[at : at + CHUNK]
        if stop is not None and sent + len(piece) > stop:
            piece = piece[: stop - sent]
            _send_piece(conn, piece, reply.chunked)
            if reply.stall is not None:
                mount.released.wait()
            elif reply.reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        _send_piece(conn, piece, reply.chunked)
        sent += len(piece)
        if reply.pace:
            mount.released.wait(reply.pace)
        if mount.released.is_set():
            return False
    if reply.chunked:
        conn.sendall(b"0\r\n\r\n")
    return True


def _send_piece(conn: socket.socket, piece: bytes, chunked: bool) -> None:
    if chunked:
        conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    else:
        conn.sendall(piece)


_REASONS = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    401: "Unauthorized",
    404: "Not Found",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
