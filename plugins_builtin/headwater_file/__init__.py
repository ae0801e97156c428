"""The builtin ``file`` source: copies a local file into the destination folder.

Targets are a local path (``~`` is expanded) or a ``file://`` URL naming this
host. Only regular files are copied (a symbolic link to one is followed);
a directory, device, pipe or socket is refused with
:class:`~headwater.InvalidTargetError`. The name goes through
:func:`headwater.destination`, and the copy is written to ``<name>.part``
beside its final path, fsynced, then landed through :func:`headwater.land`
under ``ctx.existing``, so a file at its final path is always complete and
a file already there is never replaced unless the choice is ``overwrite``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from headwater import (
    DownloadCancelled,
    DownloadContext,
    IntegrityError,
    InvalidTargetError,
    Job,
    PartFile,
    destination,
    hookimpl,
)

CHUNK_SIZE = 1 << 20


def source_path(target: str) -> Path:
    """The local path a target names: a plain path or a ``file://`` URL.

    Raises :class:`InvalidTargetError` for a ``file://`` URL naming another host.
    """
    if target.startswith("file:"):
        parts = urlsplit(target)
        if parts.netloc not in ("", "localhost"):
            raise InvalidTargetError(
                f"file URL {target!r} names host {parts.netloc!r}; only local files can be copied"
            )
        return Path(unquote(parts.path))
    return Path(target).expanduser()


def open_regular(src: Path) -> int:
    """An open read-only descriptor of ``src``, which must be a regular file.

    Opened non-blocking so a FIFO cannot hang the worker, then checked with
    ``fstat`` on the open descriptor (no window for a swap). Raises
    FileNotFoundError, or :class:`InvalidTargetError` for a directory or a
    special file.
    """
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {str(src)!r}") from None
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: a socket, or a device with no driver
            raise
        mode = 0
    else:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            if hasattr(os, "O_NONBLOCK"):
                os.set_blocking(fd, True)
            return fd
        os.close(fd)
    if stat.S_ISDIR(mode):
        raise InvalidTargetError(f"{str(src)!r} is a directory; the file source copies single files")
    raise InvalidTargetError(f"{str(src)!r} is not a regular file (a device, pipe or socket)")


@hookimpl
def download_impl(job: Job, ctx: DownloadContext) -> Path:
    """Copy ``job.target`` into ``ctx.dest_dir`` with progress; stop within one chunk of a cancel.

    Raises FileNotFoundError, InvalidTargetError, UnsafePathError (a name
    that would land outside the destination), ExistingFileKept (under
    ``skip``, a file already has the name: nothing is copied),
    IntegrityError (the source file changed size while being copied) or
    DownloadCancelled; the ``.part`` is removed in every case.
    """
    src = source_path(job.target)
    fd = open_regular(src)
    with os.fdopen(fd, "rb") as reader:
        total = os.fstat(reader.fileno()).st_size
        part = PartFile(ctx.dest_dir, destination(ctx.dest_dir, src.name), existing=ctx.existing)
        done = 0
        ctx.progress(0, total)
        try:
            while chunk := reader.read(CHUNK_SIZE):
                if ctx.cancelled.is_set():
                    raise DownloadCancelled(f"cancelled after {done} of {total} bytes")
                part.write(chunk)
                done += len(chunk)
                ctx.progress(done, max(total, done))
            if done != total:
                raise IntegrityError(
                    f"{str(src)!r} changed size while being copied: {total} bytes when opened, {done} read"
                )
            return part.land()
        except BaseException:
            part.discard()
            raise
