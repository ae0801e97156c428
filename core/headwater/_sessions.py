"""Sessions on a journal: which engines, in which processes, are alive.

Each :class:`~headwater.SQLiteStore` is a session: it holds an exclusive lock
on ``<journal>.sessions/<id>.lock``, which the operating system releases when
the process ends, however it ends. A session whose file someone else can
lock is dead, and the unfinished records it wrote may be taken over.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO


class Session:
    """One engine's claim on a journal: an exclusive lock on ``<journal>.sessions/<id>.lock``.

    Making one creates the folder and the lock file; raises OSError if it cannot.
    """

    def __init__(self, journal: Path) -> None:
        self.folder = journal.with_name(journal.name + ".sessions")
        self.id = uuid.uuid4().hex
        self.folder.mkdir(exist_ok=True)
        # Locked under a name no one scans, then renamed: no one can see it unlocked.
        starting = self.folder / f"{self.id}.starting"
        self._file: IO[str] | None = open(starting, "w")  # noqa: SIM115 (held open for the session)
        _lock_file(self._file)
        self._file.write(str(os.getpid()))
        self._file.flush()
        starting.replace(self.folder / f"{self.id}.lock")

    def scan(self) -> tuple[list[str], list[str]]:
        """(live, dead): ids of the other sessions whose lock is held, and of those whose is free."""
        live, dead = [], []
        for path in self.folder.glob("*.lock"):
            if path.stem == self.id:
                continue
            try:
                with open(path, "a") as handle:
                    _lock_file(handle)  # released again when the handle closes
            except OSError:
                live.append(path.stem)
            else:
                dead.append(path.stem)
        return live, dead

    def describe(self, session_id: str) -> str:
        """Who runs session ``session_id``, for a message: ``"headwater process 1234"`` or the like."""
        try:
            pid = int((self.folder / f"{session_id}.lock").read_text())
        except (OSError, ValueError):
            return "another headwater process"
        return "another engine in this process" if pid == os.getpid() else f"headwater process {pid}"

    def forget(self, session_ids: Iterable[str]) -> None:
        """Remove the lock files of the (dead) sessions ``session_ids``."""
        for session_id in session_ids:
            (self.folder / f"{session_id}.lock").unlink(missing_ok=True)

    def end(self) -> None:
        """Release the lock and remove its file; later calls do nothing."""
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None
            self.forget([self.id])


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_file(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock_file(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
