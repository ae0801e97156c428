"""Where downloads may land: the one check that a path lies inside the destination."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from headwater.errors import UnsafePathError

log = logging.getLogger("headwater")


def landed_file(dest_dir: Path, returned: str | os.PathLike[str]) -> tuple[Path, int]:
    """The resolved file ``download_impl`` returned and its size, checked to lie inside ``dest_dir``.

    ``dest_dir`` must already be resolved. A relative path is taken relative
    to ``dest_dir``; symbolic links are followed before the check. Raises
    :class:`UnsafePathError` for a path outside ``dest_dir``,
    FileNotFoundError when no regular file is there and TypeError for a value
    that is not a path.
    """
    if not isinstance(returned, (str, os.PathLike)):
        raise TypeError(f"download_impl must return a str or os.PathLike, got {type(returned).__name__}")
    given = os.fspath(returned)
    if not isinstance(given, str):
        raise TypeError(f"download_impl must return a text path, got {given!r}")
    base = str(dest_dir)
    joined = os.path.normpath(os.path.join(base, given))
    if os.path.dirname(joined) == base and not os.path.islink(joined):
        resolved = joined  # the common case: a plain file right in dest_dir, no links to follow
    else:
        resolved = os.path.realpath(joined)
    if not resolved.startswith(base.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"download_impl returned {given!r}, which is outside the destination folder {base!r}"
        )
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise FileNotFoundError(f"download_impl returned {given!r}, but no regular file is there")
    return Path(resolved), info.st_size


def discard_landed(dest_dir: Path, returned: str | os.PathLike[str]) -> None:
    """Delete a file a plugin landed after its download was cancelled.

    Only a regular file inside ``dest_dir`` is ever deleted; anything else is
    left alone and logged.
    """
    try:
        path, _ = landed_file(dest_dir, returned)
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
