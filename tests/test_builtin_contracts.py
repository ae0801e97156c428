"""The http and yt-dlp builtin sources against the conformance kit (headwater.testing).

Both download from a real server on 127.0.0.1, started once for this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from localhttp import LocalServer, Resource, serving

import headwater_http
import headwater_ytdlp
from headwater.testing import SourceContract

pytestmark = pytest.mark.timeout(120)

_servers: list[LocalServer] = []


@pytest.fixture(scope="module", autouse=True)
def local_server() -> Iterator[LocalServer]:
    with serving() as server:
        _servers.append(server)
        yield server
        _servers.remove(server)


def _serve(path: str, resource: Resource) -> str:
    return _servers[-1].add(path, resource)


class TestHttpSourceContract(SourceContract):
    plugin = headwater_http.source
    name = "http"

    def make_targets(self, tmp_path: Path) -> Sequence[str]:
        big = _serve("/contract/big.bin", Resource(os.urandom(4 << 20)))  # many 64 KiB chunks
        small = _serve("/contract/small%20name.txt", Resource(b"hello"))
        return [big, small]


class TestYtDlpSourceContract(SourceContract):
    plugin = headwater_ytdlp.source
    name = "yt-dlp"
    cancel_within = 5.0
    max_examples = 5

    def make_targets(self, tmp_path: Path) -> Sequence[str]:
        pytest.importorskip("yt_dlp")
        media = Resource(os.urandom(2 << 20), headers={"content-type": "video/mp4"})
        return [_serve("/contract/clip.mp4", media)]
