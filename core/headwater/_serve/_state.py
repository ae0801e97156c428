"""The files a server keeps beside the journal: its token and its state file.

- ``serve.token`` holds the API token, made on a server's first start (or by
  ``headwater token``). It is created with mode 0600 before a byte of it is
  written; a token file that others may read is refused.
- ``serve.json`` says that a server runs on this journal: its address, its
  process id and where its token is. The server writes it once it listens
  and removes it when it stops cleanly; a file whose process is gone is
  ignored (and removed by whoever finds it so).

Both live in the journal's folder, so the command line, which knows the
journal, finds them. Nothing here needs the ``serve`` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import attrs

from headwater import ServeError

TOKEN_NAME = "serve.token"
STATE_NAME = "serve.json"


def token_path(journal: Path) -> Path:
    """Where the token of a server on ``journal`` is kept."""
    return journal.with_name(TOKEN_NAME)


def state_path(journal: Path) -> Path:
    """Where a server on ``journal`` says that it runs."""
    return journal.with_name(STATE_NAME)


def read_token(path: Path) -> str | None:
    """The token in ``path``, or None if there is no such file.

    Raises ServeError for a file that group or others may read (the token
    would not be secret), or that is empty or unreadable.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServeError(f"cannot read the token file {path}: {exc}") from exc
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServeError(
            f"the token file {path} may be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` or delete it to have a new one made"
        )
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise ServeError(f"the token file {path} is empty; delete it to have a new one made")
    return token


def ensure_token(path: Path, *, new: bool = False) -> str:
    """The token in ``path``, made first if there is none (or replaced, with ``new``).

    A new token is 32 random bytes (43 URL-safe characters), written to a
    file created with mode 0600 (then moved into place), so no other user
    can ever read it. Raises ServeError when the file cannot be read or made.
    """
    if not new:
        token = read_token(path)
        if token is not None:
            return token
    import secrets  # here, not above: OpenSSL's hashes load with it; `status` needs no token made

    token = secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a 0600 file created empty, then renamed over ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ServeError(f"cannot write {path}: {exc}") from exc


@attrs.frozen
class ServerState:
    """What ``serve.json`` says about a running server.

    Attributes:
        url: the base URL it answers on (``http://127.0.0.1:8765``).
        pid: its process id.
        token_file: where its token is.
        journal: the journal it owns.
        dest_dir: where its downloads land.
    """

    url: str
    pid: int
    token_file: str
    journal: str
    dest_dir: str

    def token(self) -> str:
        """The server's token. Raises ServeError if its file is missing or unsafe."""
        token = read_token(Path(self.token_file))
        if token is None:
            raise ServeError(f"the token file {self.token_file} of the server at {self.url} is missing")
        return token


def write_state(journal: Path, state: ServerState) -> None:
    """Say that ``state``'s server runs on ``journal`` (replacing the file whole)."""
    _write_private(state_path(journal), json.dumps(attrs.asdict(state), indent=2) + "\n")


def remove_state(journal: Path, pid: int) -> None:
    """Remove the state file of ``journal`` if it is the one process ``pid`` wrote."""
    found = _read_state_file(state_path(journal))
    if found is not None and found.pid == pid:
        state_path(journal).unlink(missing_ok=True)


def running_server(journal: Path) -> ServerState | None:
    """The server running on ``journal``, or None.

    A state file whose process is gone is stale: it is removed and None is
    returned. So is one naming another journal (a copied folder). A state
    file that cannot be read counts as no server.
    """
    path = state_path(journal)
    found = _read_state_file(path)
    if found is None:
        return None
    if not _alive(found.pid) or Path(found.journal).resolve() != journal.resolve():
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return found


def _read_state_file(path: Path) -> ServerState | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerState(
            url=str(data["url"]),
            pid=int(data["pid"]),
            token_file=str(data["token_file"]),
            journal=str(data["journal"]),
            dest_dir=str(data["dest_dir"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True
