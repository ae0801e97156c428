"""One HTTP download: stream to ``<name>.part``, resume, verify, fsync, land.

Runs on the engine's worker thread that called ``download_impl``; nothing
here starts a thread. The ``.part`` file is locked for the whole transfer so
two downloads of the same name cannot interleave their bytes: the second
writes its own ``.part`` (see :class:`~headwater.PartFile`), and landing
(:func:`headwater.land`) never replaces a file unless ``ctx.existing`` says
``overwrite``.
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
    ExistingFileKept,
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
        max_resumes: how many times, within one call, a transfer is continued
            after its connection broke once data had arrived, or started over
            because the server's answer to a resume was not the rest of the
            same resource; the two share this count.
        stall_timeout: the most seconds one call spends, in total, in reads
            that time out (no byte within the read timeout), summed over its
            resumes; each read waits at most what is left of it. Once it is
            spent the transfer fails as stalled.
    """

    max_resumes: int = 5
    stall_timeout: float = 60.0


#: Bodies at least this large (or of unknown size) get their resume record
#: written before the first byte, so a resume survives even a killed process;
#: smaller ones write it only when a transfer breaks off.
EARLY_META_BYTES = 8 << 20

#: Every this many bytes written, the body so far is handed to the disk early (see :func:`_write_back`).
WRITEBACK_BYTES = 8 << 20

#: Less than this many seconds left of the stall timeout counts as none: no read is started with it.
MIN_READ_SECONDS = 0.01


@attrs.frozen
class Announced:
    """What the response that started a body said the resource is; each resumed 206 must say the same.

    Attributes:
        total: the resource's size in bytes, or None if it was not given.
        etag: its ETag (strong or weak), or None.
        last_modified: its Last-Modified date, or None.
    """

    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, response: httpx.Response, total: int | None) -> Announced:
        """What ``response`` announces, with ``total`` the size it gives (see :func:`total_size`)."""
        return cls(total, response.headers.get("etag"), response.headers.get("last-modified"))

    @property
    def validator(self) -> str | None:
        """The value to send in If-Range: a strong ETag, else Last-Modified, else None (no safe resume)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@attrs.frozen
class ContentRange:
    """A 206's ``Content-Range: bytes first-last/total``; ``total`` is None for ``*`` (unknown)."""

    first: int
    last: int
    total: int | None

    @classmethod
    def of(cls, response: httpx.Response) -> ContentRange | None:
        """The Content-Range of ``response`` parsed, or None if it has none or a malformed one."""
        unit, _, spec = response.headers.get("content-range", "").strip().partition(" ")
        span, _, total = spec.partition("/")
        first, dash, last = span.partition("-")
        first, last, total = first.strip(), last.strip(), total.strip()
        if unit.lower() != "bytes" or not (dash and first.isdigit() and last.isdigit()):
            return None
        if total != "*" and not total.isdigit():
            return None
        return cls(int(first), int(last), None if total == "*" else int(total))


class _NotTheRest(Exception):
    """A 206 (or 416) that is not the rest of the resource asked for; the message says why."""


@attrs.define
class _Part:
    """The locked ``.part`` of one transfer and its resume record ``<name>.part.json``."""

    file: PartFile
    meta: Path
    url: str
    size: int  # bytes in the .part, kept by the transfer as it writes
    announced: Announced = Announced()  # by the response the bytes in the .part come from
    meta_written: bool = False  # a record is (or may be) at ``meta``: ours to replace or remove

    @property
    def total(self) -> int | None:
        return self.announced.total

    @property
    def validator(self) -> str | None:
        return self.announced.validator

    def save_meta(self) -> None:
        """Write the resume record (URL, validator, total); remove it when there is no validator.

        A write that fails leaves no record behind (and raises).
        """
        if self.validator is None:
            self.forget_meta()
            return
        resolve_inside(self.meta.parent, self.meta.name)  # never write through a link planted there
        self.meta_written = True  # even a write that fails half way leaves a file to remove
        try:
            self.meta.write_text(
                json.dumps({"url": self.url, "validator": self.validator, "total": self.total})
            )
        except BaseException:
            with contextlib.suppress(OSError):  # the write's own error is the one to raise
                self.forget_meta()
            raise

    def forget_meta(self) -> None:
        """Remove the record if one may be there; an OSError from that is raised, and not tried again."""
        if self.meta_written:
            self.meta_written = False
            self.meta.unlink(missing_ok=True)

    def saved(self) -> tuple[str | None, int | None] | None:
        """The (validator, total) a previous call recorded for this same URL, or None.

        Whatever file is at the record's name, even an empty or torn one, is
        taken as this name's record: replaced or removed with the ``.part``.
        """
        try:
            text = self.meta.read_text()
        except OSError:  # none there, or nothing a record could be: left alone
            return None
        except ValueError:  # undecodable bytes
            text = ""
        self.meta_written = True
        try:
            saved = json.loads(text)
        except ValueError:
            return None
        if not isinstance(saved, dict) or saved.get("url") != self.url:
            return None
        validator, total = saved.get("validator"), saved.get("total")
        if not isinstance(validator, str) or not (total is None or isinstance(total, int)):
            return None
        return validator, total

    def restart(self) -> None:
        """Empty the ``.part`` and drop its record: the next request asks for the whole resource."""
        self.file.stream.truncate(0)
        self.size = 0
        self.announced = Announced()
        self.forget_meta()

    def discard(self) -> None:
        self.file.discard()
        self.forget_meta()


def raise_for_status(response: httpx.Response) -> None:
    """Raise unless ``response`` carries the file: a 2xx other than 204 and 205.

    429 and 503 with a usable Retry-After raise :class:`RetryAfter`; every
    other status raises :class:`TransferError` with it: from 400 up as an
    error, and a 1xx, 204, 205 or 3xx (a redirect httpx did not follow, a
    304) saying that it carries no file. (A 206 is checked before this, see
    :meth:`Transfer._attempt`.)
    """
    status = response.status_code
    if 200 <= status < 300 and status not in (204, 205):
        return
    reason = f"HTTP {status} {response.reason_phrase} from {response.url}"
    if status < 400:
        raise TransferError(f"{reason}: {_no_file(response)}; nothing saved", status)
    if status in (429, 503):
        seconds = retry_after_seconds(response.headers.get("retry-after"))
        if seconds is not None:
            raise RetryAfter(seconds, reason)
    raise TransferError(reason, status)


def _no_file(response: httpx.Response) -> str:
    """Why a 1xx, 204, 205 or 3xx ``response`` is not the file asked for, in words for its error."""
    status = response.status_code
    if status == 304:
        return "Not Modified answers a conditional request, and none was made"
    if 300 <= status < 400:
        if "location" not in response.headers:
            return "a redirect without a Location to follow"
        return "a redirect of a kind that is not followed"
    if status < 200:
        return "an interim answer, and no final one came"
    return "an answer without a body"


def total_size(response: httpx.Response, offset: int) -> int | None:
    """The full size of the resource from Content-Range or Content-Length, or None if unknown."""
    if response.status_code == 206:
        content_range = ContentRange.of(response)
        return content_range.total if content_range is not None else None
    length = response.headers.get("content-length", "")
    return offset + int(length) if length.isdigit() else None


def not_the_rest(response: httpx.Response, offset: int, announced: Announced) -> str | None:
    """Why the 206 ``response`` is not ``announced``'s bytes from ``offset`` to its end; None if it is.

    The rest is: a well-formed Content-Range starting at ``offset``; when a
    total was announced, the same total and a range to its last byte (a
    Content-Range total of ``*`` does not match a total); the same ETag when
    one was announced; the same Last-Modified when both give one (a 206 need
    not repeat it). With nothing announced (``Announced()``) only the start
    and the form are checked.
    """
    header = response.headers.get("content-range")
    got = ContentRange.of(response)
    if got is None:
        return f"its Content-Range {header!r} is not 'bytes first-last/total'"
    if got.first != offset:
        return f"it starts at byte {got.first}, not at {offset}"
    total = announced.total if announced.total is not None else got.total
    if announced.total is not None and got.total != announced.total:
        said = "unknown" if got.total is None else got.total
        return f"its total is {said}, not the {total} bytes announced"
    if total is not None and got.last != total - 1:
        return f"it ends at byte {got.last}, not at the last byte {total - 1}"
    etag = response.headers.get("etag")
    if announced.etag is not None and etag != announced.etag:
        return f"its ETag is {etag!r}, not {announced.etag!r}"
    modified = response.headers.get("last-modified")
    if announced.last_modified is not None and modified not in (None, announced.last_modified):
        return f"its Last-Modified is {modified!r}, not {announced.last_modified!r}"
    return None


class Transfer:
    """Downloads one :class:`Target` into ``ctx.dest_dir``; :meth:`run` does it.

    Args:
        client: the calling worker thread's httpx client; its timeouts are
            the transfer's, except that no read waits longer than what is
            left of ``settings.stall_timeout``.
        target: what to fetch.
        ctx: the download's context (dest_dir, cancelled, progress).
        settings: resume and stall limits.
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
        self._stalled = 0.0  # seconds spent in reads that timed out
        self._read_timeout = 0.0  # the read timeout of the current request
        self._breaks = 0  # connections that broke after data arrived and were resumed
        self._broke = ""  # how the last of them broke, in words

    def run(self) -> Path:
        """Fetch, verify and land the file; return its final path.

        Raises :class:`DownloadCancelled` after a cancel (the ``.part`` is
        removed) or an interrupt (the ``.part`` is kept when it can be
        resumed); :class:`RetryAfter` when the server asks to come back later;
        :class:`TransferError` for an error status, an answer that is not the
        file (see :func:`raise_for_status`; a 206 to a request without a
        range), a refused connection, a
        stall or a connection that kept breaking (the ``.part`` is kept when
        it can be resumed); :class:`IntegrityError` for a wrong size or
        checksum, or a server whose answers to a resume kept not being the
        rest of the same resource, and :class:`~headwater.UnsafePathError` for
        a name that would land outside the destination (nothing kept); and,
        when ``ctx.existing`` is ``skip`` and a file already has the name,
        :class:`~headwater.ExistingFileKept` (no body read, or the finished
        ``.part`` deleted if the file appeared meanwhile).
        """
        try:
            self._fetch()
            part = self._finish()
        except (DownloadCancelled, IntegrityError, ExistingFileKept) as exc:
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
        """Stream the body into the ``.part``, resuming after breaks; leaves it complete and checked.

        Each pass of the loop is one request; every pass but the one that
        resumes from a record a previous call left counts against
        ``max_resumes``, so the loop ends.
        """
        tries = 0  # resumes and restarts so far
        most = self._settings.max_resumes
        while True:
            self._received = 0
            try:
                if self._attempt():
                    return
            except _NotTheRest as exc:
                tries += 1
                if tries > most:
                    raise IntegrityError(f"{self._target.url}: {self._gave_up(exc)}") from None
                self._ctx.logger.info("answer to a resume not the same resource (%s); restarting", exc)
                if self._part is not None:
                    self._part.restart()
            except httpx.TransportError as exc:
                stalled = isinstance(exc, httpx.ReadTimeout)
                if stalled:
                    self._stalled += self._read_timeout
                after = self._part.file.size() if self._part is not None else 0
                what = _describe(exc)
                if stalled and self._stall_left() < MIN_READ_SECONDS:
                    what = f"stalled: no data for {self._settings.stall_timeout:g} s in total"
                elif self._received > 0 and tries < most:
                    tries += 1
                    self._breaks += 1
                    self._broke = f"{what}{self._after(after)}"
                    self._ctx.logger.info("%s after %d bytes; resuming (%d)", what, after, tries)
                    continue
                raise TransferError(f"{what}{self._after(after)} from {self._target.url}") from exc
            except httpx.TooManyRedirects as exc:
                raise TransferError(f"{exc} from {self._target.url}") from exc

    def _after(self, size: int) -> str:
        """`` after N of M announced bytes``, or ``""`` when no total was announced."""
        total = self._part.total if self._part else None
        return f" after {size} of {total} announced bytes" if total is not None else ""

    def _gave_up(self, last: _NotTheRest) -> str:
        """Why the transfer ends once no resume or restart is left, ``last`` the final mismatch.

        When the connection broke during this call, that comes first: how
        often, and the last break, since it is why the resumes were asked for.
        """
        mismatch = f"the server's answer to a resume was not the rest of the same resource ({last})"
        gave_up = f"gave up after {self._settings.max_resumes} resumes and restarts"
        if not self._breaks:
            return f"{mismatch}; {gave_up}"
        return (
            f"the connection broke {self._breaks} time(s), each time resumed (the last: {self._broke}), "
            f"and {mismatch}; {gave_up}"
        )

    def _stall_left(self) -> float:
        return self._settings.stall_timeout - self._stalled

    def _timeout(self) -> httpx.Timeout:
        """The client's timeouts, with the read timeout cut to what is left of the stall timeout."""
        base = self._client.timeout
        read = self._stall_left() if base.read is None else min(base.read, self._stall_left())
        self._read_timeout = read
        if read == base.read:
            return base  # the usual first request: nothing cut
        return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)

    def _attempt(self) -> bool:
        """One request. True when the body is complete; False to ask again for the rest (with a Range).

        Raises :class:`_NotTheRest` when the answer is not the rest of what
        was asked for: the caller empties the ``.part`` and asks again.
        """
        part = self._part
        headers = {"accept-encoding": "identity"}
        if part is not None:  # asking again: count what really reached the file
            part.size = part.file.size()
        offset = part.size if part is not None else 0
        validator = part.validator if part is not None else None
        if offset > 0 and validator is not None:
            headers["range"] = f"bytes={offset}-"
            headers["if-range"] = validator
        ranged = "range" in headers
        asked = part.announced if part is not None and ranged else Announced()
        with self._client.stream(
            "GET", self._target.url, headers=headers, timeout=self._timeout()
        ) as response:
            status = response.status_code
            if status == 416 and ranged:
                raise _NotTheRest(f"HTTP 416 to a range from byte {offset}")
            if status == 206 and not ranged:
                got = response.headers.get("content-range")
                raise TransferError(
                    f"HTTP 206 Partial Content from {response.url} to a request for the whole resource "
                    f"(Content-Range {got!r}): only part of it; nothing saved",
                    status,
                )
            if status == 206:
                why = not_the_rest(response, offset, asked)
                if why is not None:
                    raise _NotTheRest(f"HTTP 206: {why}")
            raise_for_status(response)
            fresh: Announced | None = None  # what this whole-resource answer announces, once read
            if part is None:
                part = self._open(response)
                fresh = Announced.of(response, total_size(response, 0))
                if part.saved() == (fresh.validator, fresh.total) and fresh.validator and part.size > 0:
                    part.announced = fresh  # a previous call left a resumable .part: ask for the rest
                    return False
            if status == 206 and ranged:
                start = offset
                if part.total is None:  # first told now
                    part.announced = attrs.evolve(part.announced, total=total_size(response, start))
            else:
                if offset:
                    self._ctx.logger.info("server sent the whole resource again; restarting")
                start = 0
                if fresh is None:
                    fresh = Announced.of(response, total_size(response, start))
                part.announced = fresh
            if part.total is None or part.total >= EARLY_META_BYTES or part.meta_written:
                part.save_meta()
            self._write(response, part, start)
        return True

    def _open(self, response: httpx.Response) -> _Part:
        """Choose the file name from the response; open and lock ``<name>.part``.

        A ``.part`` another download of this name is writing, or one whose
        resume record names another URL, is left alone: the next ``.part``
        name is used (see :class:`~headwater.PartFile`).
        """
        name = disposition_name(response.headers.get("content-disposition")) or url_name(str(response.url))
        final = destination(self._ctx.dest_dir, name)
        url = self._target.url
        try:
            file = PartFile(
                self._ctx.dest_dir,
                final,
                keep=True,
                existing=self._ctx.existing,
                mine=lambda path: _resume_url(_meta_path(path)) in (None, url),
            )
        except FileExistsError as exc:
            raise TransferError(str(exc)) from None
        self._part = _Part(file, _meta_path(file.path), url, file.opened_size)
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

        Raises, writing nothing, :class:`DownloadCancelled` once the download
        is cancelled, and :class:`IntegrityError` for a chunk that would take
        the file past the announced total.
        """
        if self._ctx.cancelled.is_set():
            raise DownloadCancelled(f"cancelled after {part.size} bytes of {self._target.url}")
        total = part.total
        if total is not None and part.size + len(chunk) > total:
            raise IntegrityError(
                f"{self._target.url}: the server sent more than the {total} bytes it announced"
            )
        part.file.write(chunk)
        self._received += len(chunk)
        part.size += len(chunk)
        if part.size - self._written_back >= WRITEBACK_BYTES:
            _write_back(part.file.stream.fileno(), part.size)
            self._written_back = part.size
        self._ctx.progress(part.size, total)

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
        """Close the ``.part``; keep it (and its resume record) for a later resume, or delete it.

        When the record cannot be written (a full disk), the ``.part`` is
        deleted too: without a record no later call would resume it.
        """
        part = self._part
        assert part is not None
        if keep and part.file.size() > 0:
            try:
                part.save_meta()
            except OSError as exc:
                self._ctx.logger.warning(
                    "cannot write the resume record %s (%s); not keeping the .part", part.meta, exc
                )
            else:
                part.file.close()
                return
        part.discard()


def _meta_path(part: Path) -> Path:
    """The resume record beside the ``.part`` ``part``: ``<name>.part.json``."""
    return part.with_name(part.name + ".json")


def _read_meta(meta: Path) -> dict[str, object] | None:
    """The resume record ``meta``: None if missing or unreadable, ``{}`` if it is not a JSON object."""
    try:
        saved = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else {}


def _resume_url(meta: Path) -> str | None:
    """The URL the resume record ``meta`` was written for, or None if it names none."""
    url = (_read_meta(meta) or {}).get("url")
    return url if isinstance(url, str) else None


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
