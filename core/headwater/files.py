"""Where downloads may land: the one check that a path lies inside the destination."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from headwater.errors import UnsafePathError

log = logging.getLogger("headwater")


def landed_file(dest_dir: Path, returned: str | os.PathLike[str]) -> Path:
    """The resolved file that ``download_impl`` returned, checked to lie inside ``dest_dir``.

    ``dest_dir`` must already be resolved. A relative path is taken relative
    to ``dest_dir``; symbolic links are followed before the check. Raises
    :class:`UnsafePathError` for a path outside ``dest_dir`` and
    FileNotFoundError when no regular file is there.
    """
    if not isinstance(returned, (str, os.PathLike)):
        raise TypeError(f"download_impl must return a str or os.PathLike, got {type(returned).__name__}")
    path = Path(returned)
    resolved = (path if path.is_absolute() else dest_dir / path).resolve()
    if resolved == dest_dir or not resolved.is_relative_to(dest_dir):
        raise UnsafePathError(
            f"download_impl returned {str(path)!r}, which is outside the destination folder {str(dest_dir)!r}"
        )
    if not resolved.is_file():
        raise FileNotFoundError(f"download_impl returned {str(path)!r}, but no file is there")
    return resolved


def discard_landed(dest_dir: Path, returned: str | os.PathLike[str]) -> None:
    """Delete a file a plugin landed after its download was cancelled.

    Only a regular file inside ``dest_dir`` is ever deleted; anything else is
    left alone and logged.
    """
    try:
        path = landed_file(dest_dir, returned)
    except (OSError, TypeError, UnsafePathError) as exc:
        log.debug("not deleting %r after cancel: %s", returned, exc)
        return
    path.unlink(missing_ok=True)
    log.debug("deleted %s, landed after its download was cancelled", path)


_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
_FORBIDDEN = frozenset('/\\:*?"<>|')
MAX_NAME_BYTES = 200


def safe_filename(name: str, default: str = "download") -> str:
    """``name`` made safe to use as one file name inside a destination folder.

    Path separators and characters Windows forbids become ``_``; NUL and other
    control characters are dropped; leading and trailing dots and spaces are
    stripped (so ``..`` cannot survive); reserved device names such as ``CON``
    get a leading ``_``; the result is cut to 200 UTF-8 bytes keeping the
    extension. An empty result becomes ``default``.
    """
    cleaned = "".join("_" if ch in _FORBIDDEN else ch for ch in name if ch.isprintable() or ch == " ").strip(
        ". "
    )
    if not cleaned:
        cleaned = default
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    if stem.split(".")[0].upper() in _RESERVED or cleaned.upper() in _RESERVED:
        cleaned = "_" + cleaned
        stem = "_" + stem if dot else cleaned
    if len(cleaned.encode()) > MAX_NAME_BYTES:
        suffix = f".{ext}" if dot and len(ext.encode()) <= 16 else ""
        budget = MAX_NAME_BYTES - len(suffix.encode())
        head = (stem if suffix else cleaned).encode()[:budget].decode(errors="ignore")
        cleaned = head.rstrip(". ") + suffix
    return cleaned
