"""Refusing network use on one thread for a while: the kit's check that ``record_fields`` does no I/O.

:func:`no_network` installs, the first time it is used, an audit hook
(:func:`sys.addaudithook`, which stays for the life of the process) that
looks at the socket events every network call raises: a connect, a send to
an address, a name lookup. On a thread inside :func:`no_network` such a call
is listed and fails with :class:`~headwater._errors.NetworkBlockedError`
before it reaches the network; on every other thread the hook does nothing
(a test's own server keeps serving).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from headwater._errors import NetworkBlockedError

#: The audit events of a call that reaches the network (or a resolver, which may).
NETWORK_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
    }
)

_guarded = threading.local()
_install_lock = threading.Lock()
_installed = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event not in NETWORK_EVENTS:
        return
    calls: list[str] | None = getattr(_guarded, "calls", None)
    if calls is None:
        return
    call = f"{event} {_where(event, args)}"
    calls.append(call)
    raise NetworkBlockedError(f"no network use here: {call} refused")


def _where(event: str, args: tuple[object, ...]) -> str:
    """The address a network event is about, as text (the socket itself left out)."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        return repr(args[1]) if len(args) > 1 else ""
    if event == "socket.getaddrinfo":
        return repr(args[:2])  # (host, port)
    return repr(args[0]) if args else ""


@contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse network use on the calling thread inside the block; yield the list of calls refused.

    A refused call raises NetworkBlockedError (a ConnectionError) where it
    is made; the code under test may catch it, but the call stays listed.
    Nests: an inner block lists its own calls.
    """
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)
            _installed = True
    outer = getattr(_guarded, "calls", None)
    calls: list[str] = []
    _guarded.calls = calls
    try:
        yield calls
    finally:
        _guarded.calls = outer
