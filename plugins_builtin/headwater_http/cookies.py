"""An httpx client whose cookie jar reads only the responses that set a cookie.

httpx hands every response to its client's :meth:`httpx.Cookies.extract_cookies`,
which wraps the response and its request in urllib adaptors before the
standard library's :class:`http.cookiejar.CookieJar` looks for ``Set-Cookie``
and ``Set-Cookie2`` headers: about 13 us of CPU a response, for every small
file, though a download server rarely sets a cookie. Where neither header is
there the jar stores nothing, so :class:`Client` skips it: the cookies kept
and sent are exactly those of a plain :class:`httpx.Client`.
"""

from __future__ import annotations

from typing import Any

import httpx


class SetCookieOnlyJar(httpx.Cookies):
    """httpx's cookie jar, which reads a response only when it has a ``Set-Cookie`` or ``Set-Cookie2``."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class Client(httpx.Client):
    """An :class:`httpx.Client` (same arguments) whose ``cookies`` is a :class:`SetCookieOnlyJar`.

    Setting ``cookies`` replaces the jar with a :class:`SetCookieOnlyJar` of
    what is given, as httpx's own setter does with an :class:`httpx.Cookies`.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._jar = SetCookieOnlyJar(kwargs.get("cookies"))
        super().__init__(**kwargs)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._jar = SetCookieOnlyJar(cookies)
