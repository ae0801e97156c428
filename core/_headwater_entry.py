"""The ``headwater`` command's entry point: Ctrl-C and SIGTERM get one line from the first moment.

Importing :mod:`headwater.cli` (click and attrs with it) takes a tenth of a
second, and longer on a busy machine. A Ctrl-C then would end the command
with a Python traceback, and a SIGTERM without a word. So this module,
which is outside the ``headwater`` package and imports nothing of it first,
makes SIGTERM raise :class:`Terminated` (a KeyboardInterrupt, as Python's
Ctrl-C is), imports the command, and turns either signal during the import
into one line on stderr and exit status 130 (Ctrl-C) or 143 (SIGTERM);
nothing has been read or written by then. Once :mod:`headwater._status` is
imported, SIGTERM raises the command's own
:class:`headwater._status.Terminated`, which the command handles from there
on.

Before it imports the command line, it lets :func:`headwater._status.quick`
run the commonest forms of ``headwater status`` without click (the same
listing, the same output): a status of the latest 100 then runs less than
half the instructions it did (docs/benchmarks.md, Store).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM while the command is being imported."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main() -> None:
    """Run the ``headwater`` command (:func:`headwater.cli.main`) with the arguments in ``sys.argv``."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        from headwater import _status

        signal.signal(signal.SIGTERM, _status.raise_terminated)
        code = _status.quick(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        from headwater import cli
    except KeyboardInterrupt as exc:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second one must not cut the message short
        # The command's own handler may have raised it, right after the switch.
        terminated = (Terminated, getattr(sys.modules.get("headwater._status"), "Terminated", Terminated))
        word, code = ("terminated", 143) if isinstance(exc, terminated) else ("interrupted", 130)
        sys.stderr.write(f"Error: {word} while headwater was starting up; nothing was queued\n")
        sys.exit(code)
    cli.main()
