"""Reading the rest of a large plain HTTP/1.1 body straight from the socket, past h11.

httpcore reads a response in 64 KiB pieces and h11 copies each into its
buffer and out again; for a large body that copying, not the network, limits
a download. A body framed only by its Content-Length and carried over plain
TCP is just the next Content-Length bytes on the socket, so once httpx has
handed out what h11 had already buffered, :func:`read_body` reads the rest
with ``recv_into`` into one reused buffer.

Afterwards h11 still counts the message as unfinished, so the caller must
close the response: the connection is dropped, never returned to the pool.
That costs one new connection per large body, which is why only bodies of at
least :data:`DIRECT_MIN_BYTES` take this path.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import httpx

#: Bodies at least this large are read past h11; smaller ones keep their connection for reuse.
DIRECT_MIN_BYTES = 4 << 20

#: The most one ``recv_into`` asks for.
BUFFER_BYTES = 1 << 20


def body_socket(response: httpx.Response) -> socket.socket | None:
    """The plain TCP socket the rest of ``response``'s body can be read from, or None.

    None unless the response is HTTP/1.1, has neither Transfer-Encoding nor a
    Content-Encoding other than identity, announces a Content-Length of at
    least :data:`DIRECT_MIN_BYTES`, and came over a connection whose stream
    (httpcore's ``network_stream`` extension) is a socket without TLS. Reads
    nothing.
    """
    headers = response.headers
    length = headers.get("content-length", "")
    if (
        not length.isdigit()
        or int(length) < DIRECT_MIN_BYTES  # the common case for small files: decided on one header
        or response.http_version != "HTTP/1.1"
        or "transfer-encoding" in headers
        or headers.get("content-encoding", "identity").strip().lower() != "identity"
    ):
        return None
    stream = response.extensions.get("network_stream")
    if stream is None or stream.get_extra_info("ssl_object") is not None:
        return None
    sock = stream.get_extra_info("socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    return sock


def read_body(sock: socket.socket, response: httpx.Response, received: int) -> Iterator[memoryview]:
    """Yield the rest of ``response``'s body from ``sock``, after the ``received`` bytes already taken.

    Each item is a view into one reused buffer, valid only until the next is
    asked for. Reads exactly up to the Content-Length, never past it. The
    socket's timeout becomes the request's read timeout, so a stall raises
    :class:`httpx.ReadTimeout` as httpx would; other socket errors raise
    :class:`httpx.ReadError`, and an end of stream before the Content-Length
    raises :class:`httpx.RemoteProtocolError` with h11's wording.
    """
    length = int(response.headers["content-length"])
    request = response.request
    sock.settimeout(request.extensions.get("timeout", {}).get("read"))
    buffer = memoryview(bytearray(BUFFER_BYTES))
    while received < length:
        try:
            got = sock.recv_into(buffer, min(length - received, BUFFER_BYTES))
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        if got == 0:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                f"received {received} bytes, expected {length}",
                request=request,
            )
        received += got
        yield buffer[:got]
