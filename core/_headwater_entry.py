"""The ``headwater`` command's entry point: Ctrl-C and SIGTERM get one line from the first moment.

Importing :mod:`headwater.cli` (the engine, click, rich and httpx with it)
takes a quarter of a second, and longer on a busy machine. A Ctrl-C then
would end the command with a Python traceback, and a SIGTERM without a word.
So this module, which is outside the ``headwater`` package and imports
nothing of it first, makes SIGTERM raise :class:`Terminated` (a
KeyboardInterrupt, as Python's Ctrl-C is), imports the command, and turns
either signal during the import into one line on stderr and exit status 130
(Ctrl-C) or 143 (SIGTERM); nothing has been read or written by then. Once
the import is done, SIGTERM raises the command's own
:class:`headwater.cli.Terminated`, which the command handles from there on.
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
        from headwater import cli

        signal.signal(signal.SIGTERM, cli.raise_terminated)
    except KeyboardInterrupt as exc:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second one must not cut the message short
        # The command's own handler may have raised it, right after the switch.
        terminated = (Terminated, getattr(sys.modules.get("headwater.cli"), "Terminated", Terminated))
        word, code = ("terminated", 143) if isinstance(exc, terminated) else ("interrupted", 130)
        sys.stderr.write(f"Error: {word} while headwater was starting up; nothing was queued\n")
        sys.exit(code)
    cli.main()
