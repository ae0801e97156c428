"""An installed-looking source with a secret token, for command-line tests in real subprocesses.

:func:`install` writes the module ``token_source`` and a ``.dist-info``
folder declaring it as the ``tokened`` entry point (distribution
``tokensource 1.0``) into a folder; put that folder on PYTHONPATH and
discovery finds it like any installed plugin.

The source downloads ``<base>/track/<target>?token=<token>`` with httpx,
sending the token as a bearer token too. It logs the request at debug level
(token and all), and a status other than 200 raises an error that quotes the
whole request, headers included: everything a careless plugin does with a
secret. 500 and 503 are transient (retried), anything else fails the download.
On success it describes the download as ``track <target>``.
"""

from __future__ import annotations

from pathlib import Path

from child_env import install_plugin

MODULE = """
import attrs
import httpx

from headwater import TransferError, TransientError, hookimpl, setting


@attrs.frozen
class Settings:
    token: str = setting(help="the API token", secret=True)
    base: str = setting(help="the server's address")
    quality: str = setting(help="audio quality", default="high")


@hookimpl
def settings_schema():
    return Settings


@hookimpl
def download_impl(job, ctx):
    settings = ctx.settings
    ctx.logger.debug("settings in force: %r", settings)
    url = f"{settings.base}/track/{job.target}"
    ctx.logger.debug("GET %s?token=%s", url, settings.token)
    bearer = {"authorization": f"Bearer {settings.token}"}
    response = httpx.get(url, params={"token": settings.token}, headers=bearer)
    if response.status_code != 200:
        request = response.request
        what = f"{request.method} {request.url} with headers {dict(request.headers)}"
        what += f" answered {response.status_code}"
        if response.status_code in (500, 503):
            raise TransientError(what)
        raise TransferError(what, response.status_code)
    ctx.describe(display_name=f"track {job.target}", quality=settings.quality)
    path = ctx.dest_dir / f"track-{job.target}.bin"
    path.write_bytes(response.content)
    ctx.progress(len(response.content), len(response.content))
    return path
"""


def install(folder: Path) -> Path:
    """Make ``folder`` hold the ``tokened`` source plugin; return it."""
    return install_plugin(folder, "token_source", MODULE, "tokened", "tokensource")
