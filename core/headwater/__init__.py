"""headwater: a download engine in which every download source is a plugin.

The public surface is what this module exports; everything else is private.

The names are imported on first use (PEP 562's module ``__getattr__``), so
that ``import headwater`` and its private modules stay cheap for a command
that needs a few of them (``headwater status`` reads the journal and needs
neither the engine nor pluggy nor httpx). ``from headwater import Engine``
and type checkers see them as ordinary imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headwater._chains import Chain
    from headwater._changes import Change, ChangeKind, Subscription
    from headwater._clock import Clock, ManualClock, SystemClock
    from headwater._config import ClusterConfig
    from headwater._context import DownloadContext
    from headwater._engine import Engine
    from headwater._errors import (
        ConfigError,
        ContractError,
        DownloadCancelled,
        DownloadOwnedError,
        EngineClosedError,
        ExistingFileKept,
        FieldConflictError,
        HeadwaterError,
        IntegrityError,
        InvalidHeaderError,
        InvalidPolicyError,
        InvalidTargetError,
        MissingDependencyError,
        NeedsConfigurationError,
        PluginConflictError,
        PluginError,
        RetryAfter,
        ServeError,
        ServerError,
        SourceSkippedWarning,
        StoreError,
        SubscriptionOverflow,
        TargetRejectedError,
        TransferError,
        TransientError,
        UnknownDownloadError,
        UnknownSourceError,
        UnsafePathError,
        is_transient,
    )
    from headwater._files import PartFile, check_existing, destination, land, resolve_inside, safe_filename
    from headwater._journal import SQLiteStore
    from headwater._keystore import KeyStore
    from headwater._policy import RatePolicy
    from headwater._records import TRANSITIONS, Job, Record, State, Tried
    from headwater._settings import SettingInfo, SettingProblem, SettingsLayers, setting
    from headwater._sources import PolicyOverride, SourceInfo
    from headwater._store import MemoryStore, RecordStore, Swap
    from headwater.hookspecs import hookimpl

__version__ = "0.1.0"

#: Where each public name is defined: imported from there on first use.
_HOMES: dict[str, str] = {
    "Chain": "headwater._chains",
    "Change": "headwater._changes",
    "ChangeKind": "headwater._changes",
    "Subscription": "headwater._changes",
    "Clock": "headwater._clock",
    "ManualClock": "headwater._clock",
    "SystemClock": "headwater._clock",
    "ClusterConfig": "headwater._config",
    "DownloadContext": "headwater._context",
    "Engine": "headwater._engine",
    "ConfigError": "headwater._errors",
    "ContractError": "headwater._errors",
    "DownloadCancelled": "headwater._errors",
    "DownloadOwnedError": "headwater._errors",
    "EngineClosedError": "headwater._errors",
    "ExistingFileKept": "headwater._errors",
    "FieldConflictError": "headwater._errors",
    "HeadwaterError": "headwater._errors",
    "IntegrityError": "headwater._errors",
    "InvalidHeaderError": "headwater._errors",
    "InvalidPolicyError": "headwater._errors",
    "InvalidTargetError": "headwater._errors",
    "MissingDependencyError": "headwater._errors",
    "NeedsConfigurationError": "headwater._errors",
    "PluginConflictError": "headwater._errors",
    "PluginError": "headwater._errors",
    "RetryAfter": "headwater._errors",
    "ServeError": "headwater._errors",
    "ServerError": "headwater._errors",
    "SourceSkippedWarning": "headwater._errors",
    "StoreError": "headwater._errors",
    "SubscriptionOverflow": "headwater._errors",
    "TargetRejectedError": "headwater._errors",
    "TransferError": "headwater._errors",
    "TransientError": "headwater._errors",
    "UnknownDownloadError": "headwater._errors",
    "UnknownSourceError": "headwater._errors",
    "UnsafePathError": "headwater._errors",
    "is_transient": "headwater._errors",
    "PartFile": "headwater._files",
    "check_existing": "headwater._files",
    "destination": "headwater._files",
    "land": "headwater._files",
    "resolve_inside": "headwater._files",
    "safe_filename": "headwater._files",
    "SQLiteStore": "headwater._journal",
    "KeyStore": "headwater._keystore",
    "RatePolicy": "headwater._policy",
    "TRANSITIONS": "headwater._records",
    "Job": "headwater._records",
    "Record": "headwater._records",
    "State": "headwater._records",
    "Tried": "headwater._records",
    "SettingInfo": "headwater._settings",
    "SettingProblem": "headwater._settings",
    "SettingsLayers": "headwater._settings",
    "setting": "headwater._settings",
    "PolicyOverride": "headwater._sources",
    "SourceInfo": "headwater._sources",
    "MemoryStore": "headwater._store",
    "RecordStore": "headwater._store",
    "Swap": "headwater._store",
    "hookimpl": "headwater.hookspecs",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no name made up at run time

    def __getattr__(name: str) -> object:
        """The public name ``name``, imported from its module on first use; AttributeError for others."""
        try:
            home = _HOMES[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Chain",
    "Change",
    "ChangeKind",
    "Clock",
    "ClusterConfig",
    "ConfigError",
    "ContractError",
    "DownloadCancelled",
    "DownloadContext",
    "DownloadOwnedError",
    "Engine",
    "EngineClosedError",
    "ExistingFileKept",
    "FieldConflictError",
    "HeadwaterError",
    "IntegrityError",
    "InvalidHeaderError",
    "InvalidPolicyError",
    "InvalidTargetError",
    "Job",
    "KeyStore",
    "ManualClock",
    "MissingDependencyError",
    "NeedsConfigurationError",
    "PartFile",
    "MemoryStore",
    "PluginConflictError",
    "PolicyOverride",
    "PluginError",
    "RatePolicy",
    "Record",
    "RecordStore",
    "RetryAfter",
    "SQLiteStore",
    "ServeError",
    "ServerError",
    "SettingInfo",
    "SettingProblem",
    "SettingsLayers",
    "SourceInfo",
    "SystemClock",
    "SourceSkippedWarning",
    "State",
    "Swap",
    "Subscription",
    "SubscriptionOverflow",
    "TRANSITIONS",
    "TransferError",
    "TargetRejectedError",
    "TransientError",
    "Tried",
    "StoreError",
    "UnknownDownloadError",
    "UnknownSourceError",
    "UnsafePathError",
    "__version__",
    "check_existing",
    "destination",
    "hookimpl",
    "land",
    "resolve_inside",
    "is_transient",
    "safe_filename",
    "setting",
]
