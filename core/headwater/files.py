"""Where downloads may land: the one check that a path lies inside the destination."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import sys
import unicodedata
from pathlib import Path

from headwater.errors import UnsafePathError

if sys.platform != "win32":
    import fcntl

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
    info: os.stat_result | None = None
    if os.path.dirname(joined) == base:
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(joined)
    if info is not None and not stat.S_ISLNK(info.st_mode):
        resolved = joined  # the common case: a plain file right in dest_dir, no links to follow
    else:
        resolved = os.path.realpath(joined)
        info = None
    if not resolved.startswith(base.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"download_impl returned {given!r}, which is outside the destination folder {base!r}"
        )
    if info is None:
        try:
            info = os.stat(resolved)
        except FileNotFoundError:
            info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise FileNotFoundError(f"download_impl returned {given!r}, but no regular file is there")
    return Path(resolved), info.st_size


def discard_landed(dest_dir: Path, returned: str | os.PathLike[str]) -> None:
    """Delete a file a plugin landed after its download was cancelled.

    Only a regular file inside ``dest_dir`` is ever deleted; anything else
    (whatever the plugin returned: a path with a NUL byte, an object whose
    ``__fspath__`` raises) is left alone and logged. Never raises but for a
    failed delete.
    """
    try:
        path, _ = landed_file(dest_dir, returned)
    except Exception as exc:  # what a plugin returned: any value at all
        log.debug("not deleting what download_impl returned after cancel: %s", exc)
        return
    path.unlink(missing_ok=True)
    log.debug("deleted %s, landed after its download was cancelled", path)


_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"]
    + [f"COM{i}" for i in range(10)]
    + [f"LPT{i}" for i in range(10)]
)
# Path separators, what Windows forbids, and look-alikes of "/" and "\\" that
# survive NFKC (division slash, fraction slash, big solidus, set minus, ...).
_FORBIDDEN = frozenset('/\\:*?"<>|\u2215\u2044\u29f8\u2216\u29f5\u29f9')
MAX_NAME_BYTES = 200
MAX_EXTENSION_BYTES = 16


def safe_filename(name: str, default: str = "download") -> str:
    """``name`` made safe to use as one file name inside a destination folder.

    The one sanitiser every builtin source uses. In order: Unicode NFKC
    normalisation (so a fullwidth solidus becomes ``/`` before the next
    step); path separators, characters Windows forbids and slash look-alikes
    become ``_``; NUL, other control characters, format characters (such as
    the right-to-left override), lone surrogates and line separators are
    dropped; leading and trailing dots and spaces are stripped (so ``..`` and
    hidden names cannot survive); reserved device names such as ``CON`` or
    ``com1.txt`` get a leading ``_``; the result is cut to 200 UTF-8 bytes
    keeping an extension of up to 16 bytes. An empty result becomes
    ``default`` (itself sanitised; ``"download"`` if that is empty too).

    Pure and total: never raises for any ``str``; the result is never empty,
    never ``.`` or ``..``, and contains no separator.
    """
    normal = unicodedata.normalize("NFKC", name)
    kept = "".join(
        "_" if ch in _FORBIDDEN else ch
        for ch in normal
        if ch == " " or (ch.isprintable() and unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    )
    cleaned = kept.strip(". ")
    if not cleaned:
        return "download" if default == "download" else safe_filename(default)
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    if cleaned.split(".")[0].rstrip(" ").upper() in _RESERVED:
        cleaned = "_" + cleaned
        stem = "_" + stem if dot else cleaned
    if len(cleaned.encode()) > MAX_NAME_BYTES:
        suffix = f".{ext}" if dot and len(ext.encode()) <= MAX_EXTENSION_BYTES else ""
        budget = MAX_NAME_BYTES - len(suffix.encode())
        head = (stem if suffix else cleaned).encode()[:budget].decode(errors="ignore").rstrip(". ")
        cleaned = (head or "download") + suffix
    return cleaned


_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def destination(dest_dir: Path, name: str) -> Path:
    """The path inside ``dest_dir`` where a file called ``name`` lands, checked.

    ``name`` goes through :func:`safe_filename`; ``dest_dir`` must be
    resolved. Raises :class:`UnsafePathError` when the resolved result (after
    following any symbolic link already sitting at that name) would not lie
    directly inside ``dest_dir``. Does no other I/O and creates nothing.
    """
    path = dest_dir / safe_filename(name)
    resolve_inside(dest_dir, str(path), f"file name {name!r}")
    return path


def resolve_inside(dest_dir: Path, path: str, what: str | None = None) -> str:
    """``path`` (relative to ``dest_dir``) resolved, following links; raise if outside ``dest_dir``.

    For sources that are handed a path by a library (yt-dlp) and must check
    it before touching it.

    ``dest_dir`` must be resolved. ``what`` starts the error message
    (default: the quoted path). Raises :class:`UnsafePathError`.
    """
    base = str(dest_dir)
    joined = os.path.normpath(os.path.join(base, path))
    if os.path.dirname(joined) == base and not os.path.islink(joined):
        return joined  # the common case: a plain name right in dest_dir, no link to follow
    resolved = os.path.realpath(joined)
    if not resolved.startswith(base.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"{what if what is not None else repr(path)} resolves to {resolved!r}, "
            f"outside the destination folder {base!r}"
        )
    return resolved


class PartFile:
    """``<final>.part`` beside ``final``, open for appending and locked, until it is landed or discarded.

    A file at its final path is always complete: bytes go to the ``.part``,
    and :meth:`land` fsyncs and renames it in one atomic step. The ``.part``
    is opened without following a symbolic link and is checked to lie
    inside ``dest_dir`` (resolved). An existing ``.part`` (left by a killed
    process, say) is emptied, unless ``keep`` is true: a source that resumes
    keeps its bytes and checks them itself. An exclusive advisory lock is
    held while it is open, so a second download of the same name fails with
    :class:`FileExistsError` instead of interleaving its bytes. Used by the
    worker thread that runs one download; not shared between threads.

    Attributes:
        final: where the file lands.
        path: the ``.part``.
        stream: the open ``.part``, unbuffered (:class:`io.FileIO`) and in
            append mode: every write goes to its end at once, whatever the
            position; seek to read it back, ``truncate(n)`` to drop bytes.
    """

    def __init__(self, dest_dir: Path, final: Path, keep: bool = False) -> None:
        self.final = final
        path = f"{final}.part"
        if os.path.dirname(path) != str(dest_dir) or os.sep in final.name:
            raise UnsafePathError(f"{path!r} is not directly inside {str(dest_dir)!r}")
        self.path = Path(path)
        # O_NOFOLLOW: a link planted at the .part name fails the open (ELOOP) instead of
        # sending the bytes elsewhere, so no realpath check is needed here.
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        flags |= getattr(os, "O_BINARY", 0)  # Windows: no newline translation
        fd = os.open(path, flags, 0o644)
        try:
            if sys.platform != "win32":  # Windows has no flock; there a second writer is not refused
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise FileExistsError(f"another download is already writing {path!r}") from None
            if not keep:
                os.ftruncate(fd, 0)  # only once the lock is ours: never cut another download's bytes
        except BaseException:
            os.close(fd)
            raise
        # Unbuffered, so no buffer position has to be kept in step with the file by lseek(2).
        self.stream = io.FileIO(fd, "r+")

    def write(self, data: bytes | memoryview) -> None:
        """Append all of ``data`` to the ``.part``."""
        view = memoryview(data).cast("B")
        while view:
            view = view[self.stream.write(view) :]

    def size(self) -> int:
        """Bytes in the ``.part`` so far."""
        return os.fstat(self.stream.fileno()).st_size

    def land(self) -> Path:
        """Fsync and rename the ``.part`` onto the final path; return that path."""
        os.fsync(self.stream.fileno())
        os.replace(self.path, self.final)
        self.stream.close()
        return self.final

    def close(self) -> None:
        """Close the ``.part`` and leave it for a later resume."""
        self.stream.close()

    def discard(self) -> None:
        """Close and delete the ``.part``."""
        self.stream.close()
        self.path.unlink(missing_ok=True)
