"""Every exception headwater raises, in one place.

All of them derive from :class:`HeadwaterError`, so ``except HeadwaterError``
catches anything the engine itself refuses. Errors raised *inside* a plugin's
``download_impl`` are not wrapped: they are caught at the engine boundary and
recorded on the download's record.
"""

from __future__ import annotations


class HeadwaterError(Exception):
    """Base class of every error headwater raises."""


class UnknownSourceError(HeadwaterError, LookupError):
    """A source name (or alias) that no loaded source answers to.

    The message names the known sources so a typo is easy to spot.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) if self.known else "none are loaded"
        super().__init__(f"unknown source {name!r}; known sources: {listing}")


class UnknownDownloadError(HeadwaterError, LookupError):
    """A download id that the engine has no record of."""

    def __init__(self, download_id: str) -> None:
        self.download_id = download_id
        super().__init__(f"no download with id {download_id!r}")


class PluginError(HeadwaterError):
    """A plugin that cannot be used: bad hooks, bad policy, bad fields."""


class PluginConflictError(PluginError):
    """Two sources claim the same name or alias."""


class FieldConflictError(PluginError):
    """``record_fields`` tried to set a core record field other than ``username``."""


class InvalidPolicyError(HeadwaterError, ValueError):
    """A :class:`~headwater.RatePolicy` with values that cannot be scheduled."""


class UnsafePathError(HeadwaterError):
    """A path that would lie outside the destination folder."""


class DownloadCancelled(HeadwaterError):
    """Raised by a source's ``download_impl`` when it stops because ``ctx.cancelled`` was set.

    The record is already CANCELLED when a source sees the event; raising this
    is the clean way to leave ``download_impl`` early.
    """


class EngineClosedError(HeadwaterError, RuntimeError):
    """The engine has been closed and takes no more work."""


class RetryAfter(HeadwaterError):
    """Raised by a source when the service asked it to come back later (HTTP 429/503).

    ``seconds`` is how long to wait before the next attempt, as the service
    said (``Retry-After``). The message says when to retry.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        self.seconds = float(seconds)
        text = message or "the service asked to retry later"
        super().__init__(f"{text}; retry after {self.seconds:g} s")


class ContractError(HeadwaterError, AssertionError):
    """A source broke a rule of the plugin contract (raised by :mod:`headwater.testing`).

    ``rule`` is the rule's short name (a key of ``headwater.testing.RULES``);
    the message is one sentence naming the source, the rule and what it did.
    Derives from AssertionError so test runners report it as a failed check.
    """

    def __init__(self, source: str, rule: str, detail: str) -> None:
        self.source = source
        self.rule = rule
        super().__init__(f"source {source!r} broke the {rule!r} rule: {detail}")
