"""The builtin ``yt-dlp`` source (aliases ``youtube``, ``soundcloud``, ``ytdlp``).

Wraps yt-dlp's Python API; install it with ``pip install 'headwater[ytdlp]'``.
Without yt-dlp the source still loads (so ``headwater sources`` lists it),
and each download fails with :class:`~headwater.MissingDependencyError`
naming that command. See docs/sources.md.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from headwater import (
    DownloadCancelled,
    DownloadContext,
    InvalidTargetError,
    Job,
    MissingDependencyError,
    RatePolicy,
    UnsafePathError,
    check_existing,
    destination,
    hookimpl,
    land,
    resolve_inside,
)

__all__ = ["YtDlpSource", "source", "youtube_id"]

INSTALL_HINT = "pip install 'headwater[ytdlp]'"

_YOUTUBE_HOSTS = frozenset({"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"})
_YOUTUBE_ID = re.compile(r"[0-9A-Za-z_-]{11}")


def youtube_id(url: str) -> str | None:
    """The YouTube video id in ``url`` (watch, youtu.be, shorts, embed, live forms), or None.

    Pure string work, no I/O, so it may run in ``record_fields``.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    candidate: str | None = None
    if host == "youtu.be":
        candidate = parts.path.strip("/").split("/")[0]
    elif host in _YOUTUBE_HOSTS:
        segments = [s for s in parts.path.split("/") if s]
        if segments[:1] == ["watch"]:
            candidate = parse_qs(parts.query).get("v", [""])[0]
        elif len(segments) >= 2 and segments[0] in ("shorts", "embed", "live", "v"):
            candidate = segments[1]
    return candidate if candidate and _YOUTUBE_ID.fullmatch(candidate) else None


def load_yt_dlp() -> ModuleType:
    """The ``yt_dlp`` module; raises MissingDependencyError naming the pip command if absent."""
    try:
        return importlib.import_module("yt_dlp")
    except ImportError as exc:
        raise MissingDependencyError(
            f"the yt-dlp source needs the yt-dlp package, which is not installed: {INSTALL_HINT}"
        ) from exc


class _Logger:
    """yt-dlp's logger interface, forwarding to the download's logger."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, msg: str) -> None:
        self._logger.debug("%s", msg)

    def info(self, msg: str) -> None:
        self._logger.info("%s", msg)

    def warning(self, msg: str) -> None:
        self._logger.warning("%s", msg)

    def error(self, msg: str) -> None:
        self._logger.error("%s", msg)


class _Hook:
    """yt-dlp progress hook: feeds ``ctx.progress``, raises on cancel, remembers the files it wrote.

    Called by yt-dlp on the download's worker thread.
    """

    def __init__(self, ctx: DownloadContext) -> None:
        self._ctx = ctx
        self.files: set[str] = set()

    def __call__(self, status: Mapping[str, Any]) -> None:
        for key in ("tmpfilename", "filename"):
            if isinstance(status.get(key), str):
                self.files.add(status[key])
        if self._ctx.cancelled.is_set():
            raise DownloadCancelled(f"cancelled after {status.get('downloaded_bytes') or 0} bytes")
        done = status.get("downloaded_bytes")
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        if isinstance(done, (int, float)) and done >= 0:
            total_int = int(total) if isinstance(total, (int, float)) and total >= done else None
            self._ctx.progress(int(done), total_int)


class YtDlpSource:
    """The yt-dlp source's hooks.

    Args:
        options: extra YoutubeDL options (for example ``{"format": "bestaudio"}``),
            applied over the source's defaults; ``paths``, ``outtmpl``,
            ``progress_hooks`` and ``logger`` are the source's own and cannot be
            replaced.
    """

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self._options = dict(options or {})

    def _params(self, job: Job, ctx: DownloadContext, hook: _Hook) -> dict[str, Any]:
        """YoutubeDL parameters that keep every file inside ``ctx.dest_dir``.

        yt-dlp's own file is ``<id>.<download id>.<ext>``: no file of the
        user's or of another download has that name, so yt-dlp never takes
        one for "already downloaded", and a retry of this download
        continues its own ``.part``.
        """
        return {
            "quiet": True,
            "no_warnings": False,
            "noprogress": True,
            "noplaylist": True,
            "socket_timeout": 30,
            "retries": 3,
            **self._options,
            "paths": {"home": str(ctx.dest_dir), "temp": str(ctx.dest_dir)},
            "outtmpl": {"default": f"%(id)s.{job.id}.%(ext)s"},
            "restrictfilenames": True,
            "windowsfilenames": True,
            "progress_hooks": [hook],
            "logger": _Logger(ctx.logger),
        }

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        """Download one video or track; return the file, landed as ``<title> [<id>].<ext>``.

        yt-dlp writes ``<id>.<download id>.<ext>`` (with its own ``.part``)
        inside ``ctx.dest_dir``; the finished file is then landed through
        :func:`headwater.land` under ``ctx.existing``, with a name from the
        title and id made by :func:`headwater.destination`. Under ``skip``,
        a file already at that name (with the extension yt-dlp picked before
        downloading) stops the download before any media is fetched.
        Raises MissingDependencyError without yt-dlp, InvalidTargetError for
        a target that is not an http(s) URL or a playlist, ExistingFileKept
        under ``skip``, DownloadCancelled after a cancel (partial files
        removed; kept after an interrupt, for yt-dlp to continue on the next
        call), and yt-dlp's own DownloadError for anything yt-dlp cannot
        fetch.
        """
        if urlsplit(job.target).scheme.lower() not in ("http", "https"):
            raise InvalidTargetError(f"{job.target!r} is not an http:// or https:// URL")
        yt_dlp = load_yt_dlp()
        hook = _Hook(ctx)
        try:
            with yt_dlp.YoutubeDL(self._params(job, ctx, hook)) as ydl:
                if ctx.existing == "skip":
                    ydl.add_post_processor(_skip_if_there(yt_dlp, ctx), when="before_dl")
                info = ydl.extract_info(job.target, download=True)
        except BaseException:
            if not ctx.interrupted.is_set():
                self._remove_partials(ctx, hook.files)
            raise
        if info is None or info.get("_type") in ("playlist", "multi_video"):
            raise InvalidTargetError(f"{job.target!r} is a playlist; give one video or track per download")
        downloads = info.get("requested_downloads") or []
        written = downloads[0].get("filepath") if downloads else None
        if not isinstance(written, str):
            raise InvalidTargetError(f"yt-dlp downloaded nothing for {job.target!r}")
        landed = Path(resolve_inside(ctx.dest_dir, written, f"yt-dlp's output {written!r}"))
        try:
            return land(landed, _final(ctx, info, landed.suffix), ctx.existing)
        except BaseException:
            landed.unlink(missing_ok=True)
            raise

    @staticmethod
    def _remove_partials(ctx: DownloadContext, files: set[str]) -> None:
        """Delete files yt-dlp reported writing, if they lie inside ``ctx.dest_dir``."""
        for name in files:
            try:
                Path(resolve_inside(ctx.dest_dir, name)).unlink(missing_ok=True)
            except (OSError, UnsafePathError) as exc:
                ctx.logger.debug("left %r: %s", name, exc)

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        """``webpage_url`` (the target) and, for a YouTube URL, ``video_id``.

        Runs at submit on the caller's thread and does no I/O, so only what
        the URL itself says is known: the title needs a request and is not
        included (it becomes part of the file name instead).
        """
        fields: dict[str, object] = {"webpage_url": job.target}
        video_id = youtube_id(job.target)
        if video_id is not None:
            fields["video_id"] = video_id
        return fields

    @hookimpl
    def aliases(self) -> tuple[str, ...]:
        return ("youtube", "soundcloud", "ytdlp")

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        """One at a time, 3 s apart (YouTube answers bursts with HTTP 429); users may override."""
        return RatePolicy(concurrency=1, delay=3.0)


def _final(ctx: DownloadContext, info: Mapping[str, Any], suffix: str) -> Path:
    """Where a video lands: ``<title> [<id>]<suffix>`` in ``ctx.dest_dir``, through :func:`destination`."""
    title = str(info.get("title") or info.get("id") or "download")
    return destination(ctx.dest_dir, f"{title} [{info.get('id')}]{suffix}")


def _skip_if_there(yt_dlp: ModuleType, ctx: DownloadContext) -> Any:
    """A yt-dlp post-processor, run before the download, raising ExistingFileKept if the file is there.

    It sees the format yt-dlp picked, so the extension is known; a later
    post-processor that changes it (extracting audio, say) is caught at
    landing instead, after the download.
    """

    class SkipIfThere(yt_dlp.postprocessor.PostProcessor):
        def run(self, info: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
            check_existing(_final(ctx, info, f".{info.get('ext')}"), ctx.existing)
            return [], info

    return SkipIfThere()


#: The instance the ``headwater.sources`` entry point names.
source = YtDlpSource()
