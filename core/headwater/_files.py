"""Where downloads may land: the check that a path lies inside the destination, and the landing rule."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from headwater._errors import ExistingFileKept, UnsafePathError
from headwater._landmark import is_own, mark, taken_over

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
    head, _, name = given.rpartition(os.sep)
    if head == base and name not in ("", ".", "..") and (os.altsep is None or os.altsep not in name):
        joined, direct = given, True  # the common case: a plain name right in dest_dir, already normal
    else:
        joined = os.path.normpath(os.path.join(base, given))
        direct = os.path.dirname(joined) == base
    info: os.stat_result | None = None
    if direct:
        try:
            info = os.lstat(joined)
        except FileNotFoundError:
            info = None
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
    if isinstance(returned, Path) and given == resolved:
        return returned, info.st_size  # already the resolved path: no second Path built
    return Path(resolved), info.st_size


def discard_landed(
    dest_dir: Path, returned: str | os.PathLike[str], by: tuple[str, int] | None = None
) -> None:
    """Delete a file a plugin landed after its download was cancelled (or its attempt's end refused).

    ``by`` is the (download id, attempt) that landed it: a file a later
    attempt of that download has taken as its own
    (:func:`~headwater._landmark.taken_over`) is that attempt's, and stays
    (the check and the delete are two steps: a file taken between them is
    deleted all the same).
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
    if by is not None and taken_over(path, *by):
        log.debug("not deleting %s: a later attempt of its download took it", path)
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
    if _PLAIN.fullmatch(name) is not None and name.split(".")[0].rstrip(" ").upper() not in _RESERVED:
        return name  # the common case: printable ASCII that no step above would change
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

#: Names :func:`safe_filename` keeps as they are, if not reserved: 1 to 200 printable ASCII
#: characters (which NFKC leaves alone) but those of ``_FORBIDDEN``, no dot or space at either end.
_PLAIN = re.compile(r"(?![. ])[ !#-)+-.0-9;=@-\[\]-{}~]{1,200}(?<![. ])")


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


#: What a landing does when a file (or anything else) already has its final name:
#: ``"rename"`` lands under the first free ``name (1).ext``, ``name (2).ext``, ...;
#: ``"skip"`` lands nothing and keeps what is there (:class:`ExistingFileKept`);
#: ``"overwrite"`` replaces it.
Existing = Literal["rename", "skip", "overwrite"]

#: Every value of :data:`Existing`, the default first.
EXISTING_CHOICES: tuple[Existing, ...] = ("rename", "skip", "overwrite")


def existing_choice(value: object, what: str = "existing") -> Existing:
    """``value``, checked to be one of :data:`EXISTING_CHOICES`; else ValueError naming them and ``what``."""
    if value not in EXISTING_CHOICES:
        choices = ", ".join(map(repr, EXISTING_CHOICES))
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


#: The highest number a renamed landing tries: ``name (9999).ext``.
MAX_NUMBER = 9999

#: Compression suffixes that keep a short extension before them in a numbered name:
#: ``archive (1).tar.gz``, ``data (1).csv.xz``.
_COMPRESSIONS = frozenset({"br", "bz", "bz2", "gz", "lz", "lz4", "lzma", "lzo", "xz", "z", "zst"})


def split_extension(name: str) -> tuple[str, str]:
    """``name`` as (stem, extension), the extension with its dot, or ``""`` if it has none.

    An extension is the text after the last dot: at most
    :data:`MAX_EXTENSION_BYTES` UTF-8 bytes, without spaces, after a
    non-empty stem. A compression suffix (``.gz``, ``.xz``, ``.zst``, ...)
    takes the extension of up to 4 letters or digits before it along:
    ``("archive", ".tar.gz")``. Pure.
    """
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or not ext or " " in ext or len(ext.encode()) > MAX_EXTENSION_BYTES:
        return name, ""
    if ext.lower() in _COMPRESSIONS:
        inner_stem, inner_dot, inner = stem.rpartition(".")
        if inner_dot and inner_stem and len(inner) <= 4 and inner.isascii() and inner.isalnum():
            return inner_stem, f".{inner}.{ext}"
    return stem, f".{ext}"


def numbered(final: Path, number: int) -> Path:
    """``final`` with `` (number)`` before its extension: ``a.txt`` -> ``a (2).txt``.

    The stem is cut (at a character boundary, trailing dots and spaces
    dropped) so that the name stays within :data:`MAX_NAME_BYTES` UTF-8
    bytes, like every name :func:`safe_filename` makes. Pure.
    """
    stem, ext = split_extension(final.name)
    tail = f" ({number}){ext}"
    budget = MAX_NAME_BYTES - len(tail.encode())
    if len(stem.encode()) > budget:
        stem = stem.encode()[:budget].decode(errors="ignore").rstrip(". ") or "download"
    return final.with_name(stem + tail)


def _names(final: Path) -> Iterator[Path]:
    """``final``, then ``numbered(final, 1)`` up to ``numbered(final, MAX_NUMBER)``."""
    yield final
    for number in range(1, MAX_NUMBER + 1):
        yield numbered(final, number)


def _taken(final: Path) -> ExistingFileKept | FileExistsError:
    """The error for ``final`` being taken under ``skip``: kept if a regular file is there."""
    if os.path.isfile(final):
        return ExistingFileKept(final)
    return FileExistsError(f"{str(final)!r} is taken by something that is not a regular file; nothing landed")


def check_existing(final: Path, existing: Existing) -> None:
    """Under ``skip``, raise before fetching when ``final`` is already taken; otherwise do nothing.

    For a source that knows its final name before it downloads: it saves
    the transfer. :class:`PartFile` calls it when it is opened.
    :func:`land` checks again, atomically. Raises
    :class:`ExistingFileKept` for a regular file at ``final`` (a link to
    one counts), FileExistsError for anything else there; a file this
    download landed on an earlier attempt (:func:`~headwater._landmark.is_own`)
    does not count.
    """
    if existing == "skip" and os.path.lexists(final) and not is_own(final):
        raise _taken(final)


def land(part: Path, final: Path, existing: Existing = "rename") -> Path:
    """Move the complete file ``part`` to ``final`` or a free name beside it; return where it landed.

    The one rule every landing of the builtin sources goes through, so a
    file headwater did not write for this download is never replaced
    (except under ``overwrite``):

    - ``rename`` (the default): the first free name of ``final``,
      ``name (1).ext``, ``name (2).ext``, ... (:func:`numbered`), up to
      :data:`MAX_NUMBER`. Each name is claimed atomically, so concurrent
      landings, in this process or another, never take the same one: a
      hard link from ``part`` that fails if the name exists, then ``part``
      is unlinked. Where the filesystem has no hard links, an empty
      placeholder is created with ``O_EXCL`` and ``part`` renamed onto it
      (an empty file shows at the name for that moment, and stays if the
      process is killed right then).
    - ``skip``: ``final`` only, claimed the same way. If it is taken,
      ``part`` is deleted and :class:`ExistingFileKept` raised (or
      FileExistsError when what is there is not a regular file).
    - ``overwrite``: ``part`` is renamed over ``final`` in one atomic step.

    Before it takes a name, ``part`` is marked with the download and
    attempt running on this thread (:mod:`headwater._landmark`). Under
    ``rename`` and ``skip``, a name taken by a file marked by an earlier
    attempt of the same download is this download's own, landed by an
    attempt killed before its end was written: ``part`` is deleted, the
    file marked as this attempt's and its name returned, so a download run
    again completes with one file, not two.

    ``part`` and ``final`` must be in the same folder; the caller has
    fsynced ``part`` and checked ``final`` (:func:`destination`). A symbolic
    link at a name counts as taken and is never followed. Raises
    FileExistsError when all the names are taken, ValueError for an unknown
    ``existing``, and OSError from the filesystem; ``part`` then stays.
    """
    existing_choice(existing)
    mark(part)
    if existing == "overwrite":
        os.replace(part, final)
        return final
    if existing == "skip":
        if _claim(part, final):
            return final
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        if is_own(final):
            return _own(final)
        raise _taken(final)
    for candidate in _names(final):
        if _claim(part, candidate):
            if candidate != final:
                log.info("%s was taken; landed as %s", final.name, candidate.name)
            return candidate
        if is_own(candidate):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            return _own(candidate)
    last = numbered(final, MAX_NUMBER).name
    raise FileExistsError(f"no free name for {final.name!r}: it and every number up to {last!r} are taken")


def _own(landed: Path) -> Path:
    """``landed``, this download's file from an earlier attempt, marked as this attempt's and returned."""
    mark(landed)
    log.info("%s was landed by an earlier attempt of this download; not landing it again", landed.name)
    return landed


def _claim(part: Path, candidate: Path) -> bool:
    """Move ``part`` to ``candidate`` unless something has that name; whether it did.

    A hard link, which fails if ``candidate`` exists, then ``part`` is
    unlinked. Where linking fails for another reason (a filesystem without
    hard links: FAT, some network and FUSE filesystems), see
    :func:`_claim_by_placeholder`.
    """
    try:
        os.link(part, candidate)
    except FileExistsError:
        return False
    except OSError as exc:
        log.debug("cannot hard-link %s (%s); claiming %s with a placeholder", part, exc, candidate.name)
        return _claim_by_placeholder(part, candidate)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
    return True


def _claim_by_placeholder(part: Path, candidate: Path) -> bool:
    """Create ``candidate`` empty with ``O_EXCL`` (False if it exists), then rename ``part`` onto it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(candidate, flags, 0o644))
    except FileExistsError:
        return False
    try:
        os.replace(part, candidate)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(candidate)
        raise
    return True


class PartFile:
    """``<final>.part`` beside ``final``, open for appending and locked, until it is landed or discarded.

    A file at its final path is always complete: bytes go to the ``.part``,
    and :meth:`land` fsyncs it and lands it through :func:`land` under the
    ``existing`` choice (pass ``ctx.existing``): by default a file already
    at ``final`` is kept and this one lands as ``name (1).ext``. Under
    ``skip``, a file already at ``final`` raises :class:`ExistingFileKept`
    here, before anything is written.

    The ``.part`` is opened without following a symbolic link and is checked
    to lie inside ``dest_dir`` (resolved). An exclusive advisory lock is
    held while it is open. When another download holds the lock on
    ``<final>.part`` (the same name downloading at the same time), the
    ``.part`` of ``numbered(final, 1)`` is tried, and so on: each download
    writes its own. An existing ``.part`` (left by a killed process, say) is
    emptied, unless ``keep`` is true: a source that resumes keeps its bytes
    and checks them itself; ``mine``, if given, is then asked about a
    non-empty one and False leaves it for the download it belongs to (the
    next name is tried). A ``.part`` that is a second link to a landed file
    (left by a process killed while landing) is unlinked, never written.
    Used by the worker thread that runs one download; not shared between
    threads.

    Raises :class:`UnsafePathError`, :class:`ExistingFileKept` (``skip``),
    FileExistsError when every ``.part`` name is taken, ValueError for an
    unknown ``existing``, and OSError.

    Attributes:
        final: where the file is meant to land; after :meth:`land`, where it landed.
        path: the ``.part``.
        existing: what :meth:`land` does when ``final`` is taken.
        stream: the open ``.part``, unbuffered (:class:`io.FileIO`) and in
            append mode: every write goes to its end at once, whatever the
            position; seek to read it back, ``truncate(n)`` to drop bytes.
        opened_size: bytes in the ``.part`` once opened: what a resume
            continues from with ``keep``, else 0 (:meth:`size` asks the file again).
    """

    def __init__(
        self,
        dest_dir: Path,
        final: Path,
        keep: bool = False,
        existing: Existing = "rename",
        *,
        mine: Callable[[Path], bool] | None = None,
    ) -> None:
        if os.path.dirname(f"{final}.part") != str(dest_dir) or os.sep in final.name:
            raise UnsafePathError(f"{str(final) + '.part'!r} is not directly inside {str(dest_dir)!r}")
        self.existing = existing_choice(existing)
        check_existing(final, existing)
        self.final = final
        for candidate in _names(final):
            path = Path(f"{candidate}.part")
            opened = _open_locked(path)
            if opened is None:
                continue  # another download is writing this name right now
            fd, size = opened
            if keep and mine is not None and size > 0 and not mine(path):
                os.close(fd)
                continue
            break
        else:
            raise FileExistsError(f"every .part name for {final.name!r} is being written by another download")
        try:
            if not keep:
                os.ftruncate(fd, 0)  # only once the lock is ours: never cut another download's bytes
                size = 0
        except BaseException:
            os.close(fd)
            raise
        self.path = path
        self.opened_size = size
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
        """Fsync and land the ``.part`` (see :func:`land`); return where it landed.

        Raises :class:`ExistingFileKept` under ``skip`` when ``final`` was
        taken meanwhile (the ``.part`` is deleted and closed). On any other
        error (no free name left, say) the ``.part`` stays open: close or
        discard it.
        """
        os.fsync(self.stream.fileno())
        try:
            self.final = land(self.path, self.final, self.existing)
        except ExistingFileKept:
            self.stream.close()
            raise
        self.stream.close()
        return self.final

    def close(self) -> None:
        """Close the ``.part`` and leave it for a later resume."""
        self.stream.close()

    def discard(self) -> None:
        """Close and delete the ``.part``."""
        self.stream.close()
        self.path.unlink(missing_ok=True)


def _open_locked(path: Path) -> tuple[int, int] | None:
    """(fd, size) of ``path`` opened (created if missing) to append and locked; None if another has the lock.

    O_NOFOLLOW: a link planted at the name fails the open (ELOOP) instead of
    sending the bytes elsewhere. A file with a second link (a landed file
    whose ``.part`` name a killed landing left) is unlinked and a new one
    created. Windows has no flock: there a second writer is not refused.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0)  # Windows: no newline translation
    while True:
        fd = os.open(path, flags, 0o644)
        try:
            if sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return None
            info = os.fstat(fd)
            if info.st_nlink <= 1:
                return fd, info.st_size
            log.info("%s is a second name of a landed file; removing that name", path)
            path.unlink()
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
