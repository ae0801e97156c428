"""The secrets store: setting values kept out of headwater.toml, in a file only its owner can read.

``secrets.json`` in the headwater home folder (``$HEADWATER_HOME``, else the
user data folder), mode 0600, holding ``{"version": 1, "sources": {SOURCE:
{FIELD: VALUE}}}``. Every change rewrites the whole file atomically: a new
file created with mode 0600 before any byte is written, synced, then renamed
over the old one, so a crash leaves the old file or the new one, never a
half-written or briefly readable one. ``headwater keys`` manages it; an
engine reads it as one layer of each source's settings (see
:mod:`headwater._settings`).

Errors never quote the file's contents.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from headwater._errors import ConfigError
from headwater._paths import home

KEYSTORE_NAME = "secrets.json"
_FORMAT_VERSION = 1


def default_keystore() -> Path:
    """``secrets.json`` in :func:`headwater._paths.home`."""
    return home() / KEYSTORE_NAME


class KeyStore:
    """The secrets store at ``path`` (default: :func:`default_keystore`); a missing file is an empty store.

    Reads go to the file each time (no cache). Methods raise
    :class:`~headwater.ConfigError` naming the file when it cannot be
    read or written, is not a secrets file, or (on POSIX) can be read by
    anyone but its owner.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_keystore()

    def read(self) -> Mapping[str, Mapping[str, str]]:
        """Every stored value: source name -> field -> value."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return MappingProxyType({})
        except OSError as exc:
            raise ConfigError(f"cannot read secrets file {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(fd).st_mode
            if sys.platform != "win32" and mode & 0o077:
                raise ConfigError(
                    f"secrets file {self.path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
                    f"run: chmod 600 {self.path}"
                )
            data = handle.read()
        return _parse(self.path, data)

    def get(self, source: str) -> Mapping[str, str]:
        """The values stored for ``source`` (field -> value), empty if none."""
        return self.read().get(source, MappingProxyType({}))

    def names(self) -> list[tuple[str, str]]:
        """Every (source, field) that has a value, sorted; never the values."""
        return sorted((source, field) for source, fields in self.read().items() for field in fields)

    def set(self, source: str, field: str, value: str) -> None:
        """Store ``value`` for ``field`` of ``source``, replacing any value it had."""
        stored = {s: dict(f) for s, f in self.read().items()}
        stored.setdefault(source, {})[field] = value
        self._write(stored)

    def remove(self, source: str, field: str) -> bool:
        """Forget ``field`` of ``source``; False if it had no value."""
        stored = {s: dict(f) for s, f in self.read().items()}
        if field not in stored.get(source, {}):
            return False
        del stored[source][field]
        if not stored[source]:
            del stored[source]
        self._write(stored)
        return True

    def _write(self, stored: Mapping[str, Mapping[str, str]]) -> None:
        """Replace the file with ``stored``: written to a 0600 file beside it, synced, renamed over it."""
        body = json.dumps({"version": _FORMAT_VERSION, "sources": stored}, indent=2, sort_keys=True)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ConfigError(f"cannot write secrets file {self.path}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                if sys.platform != "win32":
                    os.fchmod(handle.fileno(), 0o600)  # mkstemp made it 0600 already; say so explicitly
                handle.write(body + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            _sync_folder(folder)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise ConfigError(f"cannot write secrets file {self.path}: {exc.strerror}") from None


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op on Windows)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(path: Path, data: bytes) -> Mapping[str, Mapping[str, str]]:
    """The stored values in a secrets file's bytes; ConfigError (never quoting the bytes) if malformed."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"secrets file {path} is not a headwater secrets file (not JSON)") from None
    sources = document.get("sources") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or document.get("version") != _FORMAT_VERSION
        or not isinstance(sources, dict)
        or not all(
            isinstance(fields, dict) and all(isinstance(v, str) for v in fields.values())
            for fields in sources.values()
        )
    ):
        raise ConfigError(
            f"secrets file {path} is not a headwater secrets file (version {_FORMAT_VERSION} expected)"
        )
    return MappingProxyType({s: MappingProxyType(dict(f)) for s, f in sources.items()})
