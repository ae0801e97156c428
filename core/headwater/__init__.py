"""headwater: a download engine in which every download source is a plugin.

The public surface is what this module exports; everything else is private.
"""

from headwater._chains import Chain
from headwater._changes import Change, ChangeKind, Subscription
from headwater._clock import Clock, ManualClock, SystemClock
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

__all__ = [
    "Chain",
    "Change",
    "ChangeKind",
    "Clock",
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
