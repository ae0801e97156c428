"""One HTTP download: stream to ``<name>.part``, resume, verify, fsync, rename.

Runs on the engine's worker thread that called ``download_impl``; nothing
here starts a thread. The ``.part`` file is locked for the whole transfer so
two downloads of the same name cannot interleave their bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import ssl
from pathlib import Path

import attrs
import httpx

from headwater import (
    DownloadCancelled,
    DownloadContext,
    IntegrityError,
    PartFile,
    RetryAfter,
    TransferError,
    destination,
    resolve_inside,
)
from headwater_http.direct import body_socket, read_body
from headwater_http.naming import Target, disposition_name, retry_after_seconds, url_name


@attrs.frozen
class Settings:
    """How patient a transfer is.

    Attributes:
        max_resumes: how many times a transfer whose connection broke after
            data arrived is continued from where it stopped, within one call.
    """

    max_resumes: int = 5


#: Bodies at least this large (or of unknown size) get their resume record
#: written before the first byte, so a resume survives even a killed process;
#: smaller ones write it only when a transfer breaks off.
EARLY_META_BYTES = 8 << 20

#: Every this many bytes written, the body so far is handed to the disk early (see :func:`_write_back`).
WRITEBACK_BYTES = 8 << 20


@attrs.define
class _Part:
    """The locked ``.part`` of one transfer and its resume record ``<name>.part.json``."""

    file: PartFile
    meta: Path
    url: str
    size: int  # bytes in the .part, kept by the transfer as it writes
    validator: str | None = None  # a strong ETag or a Last-Modified date
    total: int | None = None
    meta_written: bool = False

    def save_meta(self) -> None:
        """Write the resume record (URL, validator, total); remove it when there is no validator."""
        if self.validator is None:
            self.forget_meta()
            return
        resolve_inside(self.meta.parent, self.meta.name)  # never write through a link planted there
        self.meta.write_text(json.dumps({"url": self.url, "validator": self.validator, "total": self.total}))
        self.meta_written = True

    def forget_meta(self) -> None:
        if self.meta_written:
            self.meta.unlink(missing_ok=True)
            self.meta_written = False

    def saved_validator(self) -> str | None:
        """The validator a previous call saved for this same URL, or None."""
        try:
            saved = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return None
        self.meta_written = True  # whatever is there is ours to replace or remove
        if not isinstance(saved, dict) or saved.get("url") != self.url:
            return None
        validator = saved.get("validator")
        return validator if isinstance(validator, str) else None

    def discard(self) -> None:
        self.file.discard()
        self.forget_meta()


def validator_of(response: httpx.Response) -> str | None:
    """The value to send in If-Range: a strong ETag, else Last-Modified, else None (no safe resume)."""
    etag: str | None = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    modified: str | None = response.headers.get("last-modified")
    return modified


def raise_for_status(response: httpx.Response) -> None:
    """Raise for a response that carries no body to save.

    429 and 503 with a usable Retry-After raise :class:`RetryAfter`; any
    other status from 400 up raises :class:`TransferError` with the status.
    """
    status = response.status_code
    if status < 400:
        return
    reason = f"HTTP {status} {response.reason_phrase} from {response.url}"
    if status in (429, 503):
        seconds = retry_after_seconds(response.headers.get("retry-after"))
        if seconds is not None:
            raise RetryAfter(seconds, reason)
    raise TransferError(reason, status)


def total_size(response: httpx.Response, offset: int) -> int | None:
    """The full size of the resource from Content-Range or Content-Length, or None if unknown."""
    if response.status_code == 206:
        content_range = response.headers.get("content-range", "")
        _, _, total = content_range.rpartition("/")
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "")
    return offset + int(length) if length.isdigit() else None


def range_start(response: httpx.Response) -> int | None:
    """Where a 206 response's bytes begin (from ``Content-Range: bytes A-B/N``), or None."""
    unit, _, spec = response.headers.get("content-range", "").partition(" ")
    start, dash, _ = spec.partition("-")
    if unit.strip().lower() != "bytes" or not dash or not start.strip().isdigit():
        return None
    return int(start)


class Transfer:
    """Downloads one :class:`Target` into ``ctx.dest_dir``; :meth:`run` does it.

    Args:
        client: the calling worker thread's httpx client.
        target: what to fetch.
        ctx: the download's context (dest_dir, cancelled, progress).
        settings: resume limits.
    """

    def __init__(
        self, client: httpx.Client, target: Target, ctx: DownloadContext, settings: Settings
    ) -> None:
        self._client = client
        self._target = target
        self._ctx = ctx
        self._settings = settings
        self._part: _Part | None = None
        self._received = 0  # body bytes written by the current request
        self._written_back = 0  # the .part's size when _write_back last ran

    def run(self) -> Path:
        """Fetch, verify and land the file; return its final path.

        Raises :class:`DownloadCancelled` after a cancel (the ``.part`` is
        removed) or an interrupt (the ``.part`` is kept when it can be
        resumed); :class:`RetryAfter` when the server asks to come back later;
        :class:`TransferError` for an error status, a refused connection, a
        stall or a connection that kept breaking (the ``.part`` is kept when
        it can be resumed); :class:`IntegrityError` for a wrong size or
        checksum and :class:`~headwater.UnsafePathError` for a name that would
        land outside the destination (nothing kept).
        """
        try:
            self._fetch()
            part = self._finish()
        except (DownloadCancelled, IntegrityError) as exc:
            if self._part is not None:
                interrupted = isinstance(exc, DownloadCancelled) and self._ctx.interrupted.is_set()
                self._close(keep=interrupted and self._part.validator is not None)
            raise
        except BaseException:
            if self._part is not None:
                self._close(keep=self._part.validator is not None)
            raise
        return part

    # -- fetching ----------------------------------------------------------

    def _fetch(self) -> None:
        """Stream the body into the ``.part``, resuming after breaks; leaves it complete and checked."""
        resumes = 0
        while True:
            self._received = 0
            try:
                if self._attempt():
                    return
            except httpx.TransportError as exc:
                after = self._part.file.size() if self._part is not None else 0
                what = _describe(exc)
                if self._received > 0 and resumes < self._settings.max_resumes:
                    resumes += 1
                    self._ctx.logger.info("%s after %d bytes; resuming (%d)", what, after, resumes)
                    continue
                total = self._part.total if self._part else None
                got = f" after {after} of {total} announced bytes" if total is not None else ""
                raise TransferError(f"{what}{got} from {self._target.url}") from exc
            except httpx.TooManyRedirects as exc:
                raise TransferError(f"{exc} from {self._target.url}") from exc

    def _attempt(self) -> bool:
        """One request. True when the body is complete; False to ask again (with a Range)."""
        part = self._part
        headers = {"accept-encoding": "identity"}
        if part is not None:  # asking again: count what really reached the file
            part.size = part.file.size()
        offset = part.size if part is not None else 0
        if part is not None and offset > 0 and part.validator is not None:
            headers["range"] = f"bytes={offset}-"
            headers["if-range"] = part.validator
        with self._client.stream("GET", self._target.url, headers=headers) as response:
            status = response.status_code
            if part is not None and (
                (status == 416 and "range" in headers) or (status == 206 and range_start(response) != offset)
            ):
                self._ctx.logger.info(
                    "server refused the range from %d (HTTP %d); restarting", offset, status
                )
                part.file.stream.truncate(0)
                part.size = 0
                part.validator = None
                return False
            raise_for_status(response)
            if part is None:
                part = self._open(response)
                saved = part.saved_validator()  # even for an empty .part: a record found is ours to remove
                if saved is not None and saved == validator_of(response) and part.size > 0:
                    part.validator = saved
                    return False  # a previous call left a resumable .part: ask for the rest
            if status == 206:
                start = offset
            else:
                if offset:
                    self._ctx.logger.info("server sent the whole resource again; restarting")
                start = 0
            part.validator = validator_of(response)
            part.total = total_size(response, start)
            if part.total is None or part.total >= EARLY_META_BYTES or part.meta_written:
                part.save_meta()
            self._write(response, part, start)
        return True

    def _open(self, response: httpx.Response) -> _Part:
        """Choose the file name from the response; open and lock ``<name>.part``."""
        name = disposition_name(response.headers.get("content-disposition")) or url_name(str(response.url))
        final = destination(self._ctx.dest_dir, name)
        meta = final.with_name(final.name + ".part.json")
        try:
            file = PartFile(self._ctx.dest_dir, final, keep=True)
        except FileExistsError as exc:
            raise TransferError(str(exc)) from None
        self._part = _Part(file, meta, self._target.url, file.size())
        return self._part

    def _write(self, response: httpx.Response, part: _Part, start: int) -> None:
        """Append the body at ``start``, reporting progress and stopping within a chunk of a cancel.

        A large plain body (see :func:`body_socket`) is read past h11 after
        its first chunk, and its connection is then closed, not pooled.
        """
        if part.size != start:  # a restart over bytes already there
            part.file.stream.truncate(start)
            part.size = start
        self._written_back = start
        self._ctx.progress(start, part.total)
        sock = body_socket(response)
        for chunk in response.iter_raw():
            self._append(part, chunk)
            if sock is not None and self._received < int(response.headers["content-length"]):
                for view in read_body(sock, response, self._received):
                    self._append(part, view)
                response.close()  # h11 still counts the body unread: drop the connection
                break

    def _append(self, part: _Part, chunk: bytes | memoryview) -> None:
        """Append one chunk of the body to the ``.part`` and report progress.

        Raises :class:`DownloadCancelled`, writing nothing, once the download is cancelled.
        """
        if self._ctx.cancelled.is_set():
            raise DownloadCancelled(f"cancelled after {part.size} bytes of {self._target.url}")
        part.file.write(chunk)
        self._received += len(chunk)
        part.size += len(chunk)
        if part.size - self._written_back >= WRITEBACK_BYTES:
            _write_back(part.file.stream.fileno(), part.size)
            self._written_back = part.size
        total = part.total
        self._ctx.progress(part.size, total if total is None or total >= part.size else part.size)

    # -- finishing -----------------------------------------------------------

    def _finish(self) -> Path:
        """Check size and checksum, fsync, rename onto the final path; return it."""
        part = self._part
        assert part is not None
        size = part.size
        if part.total is not None and size != part.total:
            raise IntegrityError(
                f"{self._target.url}: received {size} bytes but the server announced {part.total}"
            )
        if self._target.sha256 is not None:
            actual = _sha256(part.file.stream)
            if actual != self._target.sha256:
                raise IntegrityError(
                    f"{self._target.url}: sha256 is {actual}, expected {self._target.sha256}"
                )
        part.forget_meta()  # first: a .part.json never outlives its .part's landing
        return part.file.land()

    def _close(self, keep: bool) -> None:
        """Close the ``.part``; keep it (and its validator) for a later resume, or delete it."""
        assert self._part is not None
        if keep and self._part.file.size() > 0:
            try:
                self._part.save_meta()
            finally:
                self._part.file.close()
        else:
            self._part.discard()


def _write_back(fd: int, upto: int) -> None:
    """Start writing file ``fd``'s first ``upto`` bytes to disk now; drop what is on disk from the cache.

    ``posix_fadvise(POSIX_FADV_DONTNEED)`` starts writeback without waiting
    for it and evicts only pages already on disk. So the fsync before the
    rename finds little left to write, and a large download neither piles up
    dirty pages nor pushes other files out of the page cache; the price is
    that reading the file right after (the sha256 check) reads the disk.
    Durability still comes from that fsync alone. Does nothing where
    ``posix_fadvise`` does not exist (macOS, Windows); an error from it is
    ignored, because it is only advice.
    """
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, upto, os.POSIX_FADV_DONTNEED)


def _sha256(file: io.FileIO) -> str:
    """The sha256 hex digest of ``file``'s whole content (read from the start)."""
    file.seek(0)
    digest = hashlib.file_digest(file, "sha256")
    return digest.hexdigest()


#: OpenSSL's verify codes for a certificate whose issuer is not trusted (2, 18, 19, 20).
_UNTRUSTED = frozenset({2, 18, 19, 20})


def _describe(exc: httpx.TransportError) -> str:
    """What went wrong with the connection, in words for the download's error."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        untrusted = cause.verify_code in _UNTRUSTED
        hint = " (to trust another CA, give the source an ssl_context)" if untrusted else ""
        return f"TLS certificate verify failed: {cause.verify_message}{hint}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, httpx.ReadTimeout):
        return "stalled: no data arrived within the read timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect ({exc})"
    return f"connection broken ({exc or type(exc).__name__})"
