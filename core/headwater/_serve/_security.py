"""Safe defaults: which binds are allowed, and the ASGI guard in front of every request.

The guard (:func:`guard`) checks, in this order, and answers with a JSON
error body (``{"error": {"code", "message"}}``) when a check fails:

1. **Host**: the ``Host`` header must be one of :attr:`Security.hosts`
   (400 ``bad_host``). A page on another site whose name resolves to
   127.0.0.1 (DNS rebinding) sends its own name and is refused.
2. **CORS preflight**: an ``OPTIONS`` request from an origin in
   :attr:`Security.cors_origins` is answered here; there is no CORS at all
   unless origins are listed, and ``*`` is never accepted.
3. **Origin**: on every state-changing request (any method but GET, HEAD
   and OPTIONS) and on the event stream, an ``Origin`` header must be this
   server's own origin or a listed CORS origin (403 ``forbidden_origin``).
   Requests without one (scripts, curl, same-origin page loads) pass.
4. **Token**: everything but the page's files and the login needs
   ``Authorization: Bearer <token>`` or the page's session cookie (401
   ``unauthorized``). Both are compared in constant time.

Every response gets ``Content-Security-Policy`` and the usual hardening
headers; responses to a listed CORS origin get ``Access-Control-Allow-Origin``
with that origin (never ``*``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import attrs

from headwater import ServeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The page's session cookie.
SESSION_COOKIE = "headwater_session"
SESSION_MAX_AGE = 30 * 24 * 3600

API_PREFIX = "/api/v1"
EVENTS_PATH = f"{API_PREFIX}/events"
LOGIN_PATH = f"{API_PREFIX}/session"

#: The page may load its own files and talk to its own server, nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HARDENING = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only (127.0.0.0/8, ::1, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def check_bind(host: str, token_configured: bool, token_file: str) -> None:
    """Refuse a bind on a non-loopback address unless a token was configured before this start.

    ``token_configured``: the token file existed before the server started
    (``headwater token`` made it, or an earlier start). Raises ServeError.
    """
    if is_loopback(host) or token_configured:
        return
    raise ServeError(
        f"refusing to listen on {host}, which other machines can reach, without a token configured: "
        f"run `headwater token` first (it makes {token_file}), give that token to the API's clients, "
        "then start the server again"
    )


def host_allow_list(host: str, port: int, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The ``Host`` values a server bound to ``host``:``port`` answers: loopback names, the bind, ``extra``.

    An ``extra`` name without a port matches any port (a reverse proxy on 443
    forwards ``Host: name``). A wildcard bind (0.0.0.0, ::) adds nothing: the
    names others reach it by must be listed.
    """
    names = [f"{name}:{port}" for name in _LOOPBACK_NAMES]
    if host not in ("0.0.0.0", "::", ""):
        bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
        names.append(f"{bound.lower()}:{port}")
    names.extend(name.strip().lower() for name in extra if name.strip())
    return tuple(dict.fromkeys(names))


def check_cors_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """The CORS allow-list as given, each an exact ``scheme://host[:port]``; ServeError for ``*`` or junk."""
    checked = []
    for origin in origins:
        value = origin.strip().rstrip("/")
        if value == "*" or "*" in value:
            raise ServeError(
                "a CORS origin of '*' would let every web site drive this server; list each origin "
                "(for example https://dashboard.example)"
            )
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ServeError(f"a CORS origin must look like https://host[:port], got {origin!r}")
        checked.append(value.lower())
    return tuple(checked)


def session_value(token: str) -> str:
    """The page's session cookie for ``token``: a MAC of it, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"headwater page session v1", hashlib.sha256).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Whether ``given`` equals ``expected``, compared in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


@attrs.frozen
class Security:
    """What the guard enforces.

    Attributes:
        token: the API token.
        hosts: the ``Host`` values answered (see :func:`host_allow_list`).
        cors_origins: origins other than the server's own that may call the
            API from a browser (empty: none).
    """

    token: str
    hosts: tuple[str, ...]
    cors_origins: tuple[str, ...] = ()

    def host_allowed(self, host: str) -> bool:
        host = host.lower()
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return host in self.hosts or bare in self.hosts

    def authorized(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the token (bearer) or the page's session cookie."""
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credential:
            return same_secret(credential.strip(), self.token)
        cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
        return cookie is not None and same_secret(cookie, session_value(self.token))


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _is_public(method: str, path: str) -> bool:
    """The page's own files and the login need no token."""
    if path == LOGIN_PATH:
        return True
    return method in ("GET", "HEAD") and not path.startswith(API_PREFIX)


def guard(app: ASGIApp, security: Security) -> ASGIApp:
    """``app`` behind the checks of this module (see the module docstring)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets are served
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method: str = scope.get("method", "GET")
        path: str = scope.get("path", "/")
        host = headers.get("host", "")
        if not security.host_allowed(host):
            await _refuse(send, 400, "bad_host", f"this server does not answer to the host {host!r}")
            return
        origin = headers.get("origin")
        cors = origin is not None and origin.lower() in security.cors_origins
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            if cors:
                await _preflight(send, origin)
            else:
                await _refuse(send, 403, "forbidden_origin", f"no cross-origin requests from {origin!r}")
            return
        own = f"{'https' if scope.get('scheme') == 'https' else 'http'}://{host}".lower()
        checked = method not in _SAFE_METHODS or path == EVENTS_PATH
        if checked and origin is not None and origin.lower() != own and not cors:
            await _refuse(send, 403, "forbidden_origin", f"requests from the origin {origin!r} are refused")
            return
        if not _is_public(method, path) and not security.authorized(headers):
            await _refuse(
                send,
                401,
                "unauthorized",
                "a token is needed: send 'Authorization: Bearer <token>' (`headwater token` prints it)",
                [(b"www-authenticate", b'Bearer realm="headwater"')],
            )
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(_HARDENING)
                if cors and origin is not None:
                    extra += [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await app(scope, receive, send_hardened)

    return guarded


async def _preflight(send: Send, origin: str) -> None:
    headers = [
        (b"access-control-allow-origin", origin.encode()),
        (b"access-control-allow-methods", b"GET, POST, PATCH, DELETE"),
        (b"access-control-allow-headers", b"authorization, content-type, last-event-id"),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
        *_HARDENING,
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(
    send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
        *_HARDENING,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
