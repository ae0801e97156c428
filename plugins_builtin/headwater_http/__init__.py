"""The builtin ``http`` source (alias ``https``): downloads a URL with httpx.

Targets are ``http://`` or ``https://`` URLs, optionally ending in
``#sha256=<64 hex digits>``; a malformed URL is refused at submit. See docs/sources.md for naming, resume and
errors. The entry point object is :data:`source`, an :class:`HttpSource`
with default settings; build your own instance to change timeouts or the
SSL context::

    Engine(dest, plugins={"http": HttpSource(read_timeout=5)})
"""

from __future__ import annotations

import ssl
import threading
import weakref
from pathlib import Path

import httpx

from headwater import DownloadContext, Job, RatePolicy, hookimpl
from headwater_http.cookies import Client
from headwater_http.naming import parse_target, refuse_malformed
from headwater_http.tls import default_context
from headwater_http.transfer import Settings, Transfer

__all__ = ["HttpSource", "source"]


class HttpSource:
    """The http source's hooks with their settings.

    Args:
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds without a byte arriving before a read counts as
            stalled; a stall after data arrived is resumed like a broken
            connection.
        stall_timeout: the most seconds one download spends, in total, in
            stalled reads (summed over its resumes; no read waits longer than
            what is left); then it fails as stalled, keeping its ``.part`` for
            a later call. With the defaults, a body that stops fails within a
            minute.
        max_resumes: how often one download continues after its connection
            breaks mid-body, or starts over because the answer to a resume
            was not the rest of the same resource (the two share the count).
        max_retry_after: the longest Retry-After (seconds) the engine waits
            out, pausing the source, before it tries again; a longer one fails
            the download with the time to retry in its error.
        concurrency: the default number of simultaneous downloads.
        user_agent: the User-Agent header sent.
        ssl_context: the SSL context every https connection verifies the
            server with (``verify=`` of each thread's client), for example
            one that trusts a private CA or presents a client certificate.
            It is shared by all threads and must not be changed once
            downloads have started. httpcore sets its ALPN protocols before
            each new connection, which on a plain :class:`ssl.SSLContext`
            replaces what other threads' handshakes may be reading: build it
            as a :class:`~headwater_http.tls.SharedSSLContext` and set
            :data:`~headwater_http.tls.ALPN` on it, and it stays as it is
            (docs/sources.md has an example). None (the
            default) means httpx's default verification: certifi's CA
            certificates (or those that the ``SSL_CERT_FILE`` or
            ``SSL_CERT_DIR`` environment variable names), with host names
            checked; see :func:`~headwater_http.tls.default_context`.

    Each engine worker thread gets its own :class:`httpx.Client` (a
    connection pool; a :class:`~headwater_http.cookies.Client`, whose
    cookie jar reads only the responses that set a cookie), created on its
    first download and closed when the thread ends: with one pool shared by all threads, each request and each
    response close waited for the pool's lock, which httpcore holds while it
    checks every pooled connection, and 16 concurrent small downloads spent
    most of their time there. The clients share one SSL context: the
    ``ssl_context`` given, or else one made on the first download (loading
    the CA certificates takes tens of milliseconds of CPU).
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        stall_timeout: float = 60.0,
        max_resumes: int = 5,
        max_retry_after: float = 60.0,
        concurrency: int = 4,
        user_agent: str = "headwater",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not 0 < stall_timeout < float("inf"):
            raise ValueError(f"stall_timeout must be a finite number of seconds > 0, got {stall_timeout!r}")
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._settings = Settings(max_resumes=max_resumes, stall_timeout=stall_timeout)
        self._policy = RatePolicy(concurrency=concurrency, max_retry_after=max_retry_after)
        self._user_agent = user_agent
        self._clients = threading.local()
        self._ssl_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = ssl_context  # None: made on first use

    def client(self) -> httpx.Client:
        """The calling thread's client, created on its first call and closed when the thread ends."""
        client: httpx.Client | None = getattr(self._clients, "client", None)
        if client is None:
            client = Client(
                verify=self._shared_ssl_context(),
                timeout=self._timeout,
                follow_redirects=True,
                headers={"user-agent": self._user_agent},
            )
            self._clients.client = client
            weakref.finalize(threading.current_thread(), client.close)
        return client

    def _shared_ssl_context(self) -> ssl.SSLContext:
        """The context all clients verify with: the one given, else :func:`default_context` made once, now."""
        with self._ssl_lock:
            if self._ssl_context is None:
                self._ssl_context = default_context()
            return self._ssl_context

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        """Download ``job.target`` into ``ctx.dest_dir``; see :meth:`Transfer.run` for what raises."""
        return Transfer(self.client(), parse_target(job.target), ctx, self._settings).run()

    @hookimpl
    def record_fields(self, job: Job) -> None:
        """Refuse a malformed http(s) URL at submit (see :func:`refuse_malformed`)."""
        refuse_malformed(job.target)

    @hookimpl
    def aliases(self) -> tuple[str, ...]:
        return ("https",)

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        return self._policy


#: The instance the ``headwater.sources`` entry point names.
source = HttpSource()
