"""The headwater source ``tunes``: tracks of the Tunes API, by id, with an API token.

The API answers ``GET <server>/tracks/<id>`` with the track as JSON
(``title``, ``artist``, and ``audio``, the path of its audio file) and sends
the audio at that path; both want ``Authorization: Bearer <token>``.
"""

import json
import urllib.error
import urllib.request

import attrs

from headwater import (
    DownloadCancelled,
    InvalidTargetError,
    PartFile,
    RatePolicy,
    RetryAfter,
    TransferError,
    destination,
    hookimpl,
    setting,
)

CHUNK_SIZE = 64 * 1024


@attrs.frozen
class Settings:
    token: str = setting(help="your API token (Tunes > Account > API)", secret=True)
    server: str = setting(help="the API's address", default="https://api.tunes.example")


@hookimpl
def settings_schema():
    return Settings


@hookimpl
def rate_policy():
    return RatePolicy(concurrency=2, delay=0.2)


@hookimpl
def record_fields(job):
    # At submit, on the caller's thread: no I/O, but a target that can never work is refused now.
    if not job.target.isdigit():
        raise InvalidTargetError(f"{job.target!r} is not a Tunes track id (digits only)")
    return {"track_id": int(job.target)}


def fetch(settings, path):
    """The open response of the API for ``path``; an HTTP error becomes what headwater should do."""
    headers = {"Authorization": f"Bearer {settings.token}"}
    request = urllib.request.Request(settings.server + path, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as error:
        if error.code == 429:  # headwater pauses the whole source for that long, then tries again
            raise RetryAfter.from_header(error.headers.get("Retry-After", "60"), "Tunes said 429") from None
        if error.code == 401:
            how = "set a new one with `headwater keys set tunes token`"
            raise TransferError(f"Tunes refused the token (401): {how}", 401) from None
        if error.code == 404:
            raise TransferError(f"Tunes has no {path} (404)", 404) from None
        raise TransferError(f"Tunes answered {error.code} for {path}", error.code) from None


@hookimpl
def download_impl(job, ctx):
    with fetch(ctx.settings, f"/tracks/{job.target}") as response:
        track = json.load(response)
    name = f"{track['artist']} - {track['title']}"
    ctx.describe(display_name=name, artist=track["artist"], title=track["title"])
    final = destination(ctx.dest_dir, f"{name}.flac")
    with fetch(ctx.settings, track["audio"]) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        part = PartFile(ctx.dest_dir, final, existing=ctx.existing)
        try:
            done = 0
            while chunk := response.read(CHUNK_SIZE):
                if ctx.cancelled.is_set():
                    raise DownloadCancelled(f"cancelled after {done} bytes")
                part.write(chunk)
                done += len(chunk)
                ctx.progress(done, total)
            return part.land()
        except BaseException:
            part.discard()  # nothing half-written is left behind
            raise
