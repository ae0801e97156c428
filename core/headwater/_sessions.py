"""Sessions on a journal: which engines, in which processes, are alive.

Each :class:`~headwater.SQLiteStore` is a session: it holds an exclusive lock
on ``<journal>.sessions/<id>.lock``, which the operating system releases when
the process ends, however it ends. A session whose file someone else can
lock is dead, and the unfinished records it wrote may be taken over.

The sessions also spare a journal's integrity check on every opening (it
reads the whole file): the last session to close a journal cleanly seals
it, writing the file's (inode, size, mtime) to ``<journal>.sessions/sealed``,
and the next opening checks only a journal that is not as sealed (a crash,
a write by another program, a file put in its place) while no other
session has it open. A session that has it open opened it checked, or
sealed, itself.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from headwater._schema import at_rest


class Session:
    """One engine's claim on a journal: an exclusive lock on ``<journal>.sessions/<id>.lock``.

    Making one creates the folder and the lock file, locked under a name no
    one scans (``<id>.starting``) until :meth:`publish`, so that no one can
    see it unlocked, nor count it before its journal is open; raises OSError
    if it cannot.
    """

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.folder = journal.with_name(journal.name + ".sessions")
        self.id = uuid.uuid4().hex
        self.folder.mkdir(exist_ok=True)
        self._starting = self.folder / f"{self.id}.starting"
        self._file: IO[str] | None = open(self._starting, "w")  # noqa: SIM115 (held open for the session)
        _lock_file(self._file)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def publish(self) -> None:
        """Make the session visible to others (once its journal is open): they see it alive from now on."""
        self._starting.replace(self.folder / f"{self.id}.lock")

    def vouched(self) -> bool:
        """Whether the journal needs no integrity check: another session has it open, or it is as sealed."""
        live, _ = self.scan()
        if live:
            return True
        now = at_rest(self.journal)
        return now is not None and self._sealed() == now

    def seal(self) -> None:
        """Record the journal file as it is, if it holds every commit and no other session has it open.

        Call it after closing the journal, before :meth:`end`. A seal that
        cannot be written is no error: the next opening checks the file.
        """
        now = at_rest(self.journal)
        if now is None or self.scan()[0]:
            return
        sealing = self.folder / f"{self.id}.sealing"
        try:
            sealing.write_text(json.dumps(now))
            sealing.replace(self.folder / _SEALED)
        except OSError:
            sealing.unlink(missing_ok=True)

    def _sealed(self) -> tuple[int, int, int] | None:
        try:
            ino, size, mtime = json.loads((self.folder / _SEALED).read_text())
        except (OSError, ValueError, TypeError):
            return None
        return (ino, size, mtime)

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
            self._starting.unlink(missing_ok=True)  # a session that never published


_SEALED = "sealed"


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock_file(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock_file(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
