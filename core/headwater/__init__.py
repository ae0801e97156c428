"""headwater: a download engine in which every download source is a plugin.

The public surface is what this module exports; everything else is private.
"""

from headwater._changes import Change, ChangeKind, Subscription
from headwater.chains import Chain
from headwater.context import DownloadContext
from headwater.engine import Engine
from headwater.errors import (
    ConfigError,
    DownloadCancelled,
    EngineClosedError,
    ExistingFileKept,
    FieldConflictError,
    HeadwaterError,
    IntegrityError,
    InvalidPolicyError,
    InvalidTargetError,
    MissingDependencyError,
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
from headwater.files import PartFile, check_existing, destination, land, resolve_inside, safe_filename
from headwater.hookspecs import hookimpl
from headwater.policy import RatePolicy
from headwater.records import Job, Record, State, Tried
from headwater.sources import PolicyOverride, SourceInfo
from headwater.store import MemoryStore, RecordStore, SQLiteStore

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "Change",
    "ChangeKind",
    "ConfigError",
    "DownloadCancelled",
    "DownloadContext",
    "Engine",
    "EngineClosedError",
    "ExistingFileKept",
    "FieldConflictError",
    "HeadwaterError",
    "IntegrityError",
    "InvalidPolicyError",
    "InvalidTargetError",
    "Job",
    "MissingDependencyError",
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
    "SourceInfo",
    "SourceSkippedWarning",
    "State",
    "Subscription",
    "SubscriptionOverflow",
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
]
