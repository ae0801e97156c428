"""A TCP proxy on 127.0.0.1 in front of a server (PostgreSQL, Redis), that can hold back its replies and cut.

For the lost reply: a client's statement reaches the server and commits,
its reply never reaches the client (:meth:`Proxy.hold_replies`), and the
connection then breaks (:meth:`Proxy.cut`); what the client does next is
the test. For a server that hangs (or a network that drops its packets),
``cut(hold=True)``: every connection breaks, and those made later are
accepted but never answered. For a connection lost at one chosen moment, :meth:`Proxy.cut_at`
cuts when a client sends a given statement, before it reaches the server.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """Forwards every connection made to :attr:`port` to ``127.0.0.1:target``, byte for byte."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[tuple[socket.socket, socket.socket]] = []
        self._holding = False
        self._cut_at: bytes | None = None
        self.held = 0  # replies held back (and dropped) so far
        self.cuts = 0  # connections cut by cut_at so far
        self.accepted = 0  # connections accepted so far
        self._acceptor = threading.Thread(target=self._accept, name="pgproxy", daemon=True)
        self._acceptor.start()

    def hold_replies(self) -> None:
        """From now on, drop what the server sends instead of passing it on (counted in :attr:`held`)."""
        with self._lock:
            self._holding = True

    def cut_at(self, statement: bytes) -> None:
        """Cut every connection (see :meth:`cut`) the next time a client sends bytes holding ``statement``.

        What held it is not passed on. Once only: later sends pass.
        """
        with self._lock:
            self._cut_at = statement

    def cut(self, *, hold: bool = False) -> None:
        """Close every connection made so far, and pass replies on again (with ``hold``: hold them back)."""
        with self._lock:
            links, self._links = self._links, []
            self._holding = hold
        for pair in links:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        """Stop accepting and cut every connection.

        Closing a socket does not wake a thread blocked in its ``accept``
        (Linux keeps such a listener listening): shutting it down does.
        """
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(10)
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._links.append((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    drop = replies and self._holding
                    if drop:
                        self.held += 1
                    cutting = not replies and self._cut_at is not None and self._cut_at in data
                    if cutting:
                        self._cut_at = None
                        self.cuts += 1
                if cutting:
                    self.cut()
                    return
                if not drop:
                    sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
