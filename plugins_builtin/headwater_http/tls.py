"""The SSL context that all of the http source's worker threads share."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

import certifi

#: What the source offers in ALPN: httpx's clients here speak HTTP/1.1 only.
ALPN = ["http/1.1"]


class SharedSSLContext(ssl.SSLContext):
    """An SSL context whose ALPN protocols, once set, stay put, so threads can share it.

    httpcore sets the ALPN protocols on its context before every new TLS
    connection, from the thread that opens it. OpenSSL then frees and
    replaces the protocol list, which another thread's handshake may be
    copying at that moment (``SSL_new`` runs without the GIL). Here a call
    that sets the protocols already in force does nothing, so once they are
    set (by :func:`default_context`, before any thread sees the context) the
    context is only read.
    """

    _alpn: list[str] | None = None

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        protocols = list(alpn_protocols)
        if protocols != self._alpn:
            super().set_alpn_protocols(protocols)
            self._alpn = protocols


def default_context() -> SharedSSLContext:
    """A new context verifying as httpx does by default, with :data:`ALPN` already set.

    It trusts the CA certificates in ``$SSL_CERT_FILE`` or ``$SSL_CERT_DIR``
    when either is set, else certifi's, and checks host names. Loading the
    certificates takes tens of milliseconds of CPU: make one and share it.
    """
    context = SharedSSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    if os.environ.get("SSL_CERT_FILE"):
        context.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
    elif os.environ.get("SSL_CERT_DIR"):
        context.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
    else:
        context.load_verify_locations(cafile=certifi.where())
    context.set_alpn_protocols(ALPN)
    return context
