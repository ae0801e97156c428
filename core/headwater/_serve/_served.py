"""What ``headwater serve`` needs of the engine it serves: :class:`ServedEngine`.

An :class:`~headwater.Engine` is one, whether its downloads run in this
process or, made with ``cluster=``, on a cluster's workers (docs/cluster.md).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol

from headwater._chains import Chain
from headwater._changes import Subscription
from headwater._files import Existing
from headwater._policy import RatePolicy
from headwater._records import Record, State
from headwater._sources import SourceInfo


class ServedEngine(Protocol):
    """The methods of :class:`~headwater.Engine` the server calls, with the engine's contracts."""

    @property
    def dest_dir(self) -> Path: ...

    def sources(self, include_broken: bool = False) -> list[SourceInfo]: ...

    def submit(
        self,
        source: str | Sequence[str] | Chain,
        target: str,
        *,
        display_name: str | None = None,
        existing: Existing | None = None,
        dest_dir: str | os.PathLike[str] | None = None,
    ) -> str: ...

    def get(self, download_id: str) -> Record: ...

    def cancel(self, download_id: str) -> bool: ...

    def remove(self, download_id: str) -> Record: ...

    def match(self, key: str, limit: int = 2) -> list[Record]: ...

    def page(
        self,
        *,
        states: Collection[State] | None = None,
        sources: Collection[str] | None = None,
        after: tuple[float, str] | None = None,
        oldest_first: bool = False,
        limit: int = 100,
    ) -> list[Record]: ...

    def subscribe(self, maxsize: int = ...) -> Subscription: ...

    def set_policy(self, source: str, policy: RatePolicy) -> None: ...

    def pause(self, source: str | None = None) -> None: ...

    def resume(self, source: str | None = None) -> None: ...

    def paused(self) -> list[str]: ...
