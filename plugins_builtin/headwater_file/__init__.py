"""The builtin ``file`` source: copies a local file into the destination folder.

Targets are a local path (``~`` is expanded) or a ``file://`` URL. The copy is
written to ``<name>.part`` beside its final path, flushed to disk, then
renamed, so a file at its final path is always complete.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from headwater import DownloadCancelled, DownloadContext, Job, hookimpl, safe_filename

CHUNK_SIZE = 1 << 20


def source_path(target: str) -> Path:
    """The local path a target names: a plain path or a ``file://`` URL."""
    if target.startswith("file:"):
        parts = urlsplit(target)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"file URL {target!r} names host {parts.netloc!r}; only local files can be copied"
            )
        return Path(unquote(parts.path))
    return Path(target).expanduser()


@hookimpl
def download_impl(job: Job, ctx: DownloadContext) -> Path:
    """Copy ``job.target`` into ``ctx.dest_dir`` with progress; stop within one chunk of a cancel."""
    src = source_path(job.target)
    try:
        info = src.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {str(src)!r}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{str(src)!r} is a directory; the file source copies single files")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{str(src)!r} is not a regular file (a device, pipe or socket)")
    final = ctx.dest_dir / safe_filename(src.name)
    part = final.with_name(final.name + ".part")
    total = info.st_size
    done = 0
    ctx.progress(0, total)
    try:
        with src.open("rb") as reader, part.open("wb") as writer:
            while chunk := reader.read(CHUNK_SIZE):
                if ctx.cancelled.is_set():
                    raise DownloadCancelled(f"cancelled after {done} of {total} bytes")
                writer.write(chunk)
                done += len(chunk)
                ctx.progress(done, max(total, done))
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(part, final)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return final
