"""headwater: a download engine in which every download source is a plugin.

The public surface is what this module exports; everything else is private.
"""

from headwater.chains import Chain
from headwater.context import DownloadContext
from headwater.engine import Engine
from headwater.errors import (
    ConfigError,
    DownloadCancelled,
    EngineClosedError,
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
    SourceSkippedWarning,
    StoreError,
    TargetRejectedError,
    TransferError,
    TransientError,
    UnknownDownloadError,
    UnknownSourceError,
    UnsafePathError,
    is_transient,
)
from headwater.files import PartFile, destination, resolve_inside, safe_filename
from headwater.hookspecs import hookimpl
from headwater.keystore import KeyStore
from headwater.policy import RatePolicy
from headwater.records import Job, Record, State, Tried
from headwater.settings import SettingInfo, SettingProblem, SettingsLayers, setting
from headwater.sources import PolicyOverride, SourceInfo
from headwater.store import MemoryStore, RecordStore, SQLiteStore

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "ConfigError",
    "DownloadCancelled",
    "DownloadContext",
    "Engine",
    "EngineClosedError",
    "FieldConflictError",
    "HeadwaterError",
    "IntegrityError",
    "InvalidHeaderError",
    "InvalidPolicyError",
    "InvalidTargetError",
    "Job",
    "KeyStore",
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
    "SettingInfo",
    "SettingProblem",
    "SettingsLayers",
    "SourceInfo",
    "SourceSkippedWarning",
    "State",
    "TransferError",
    "TargetRejectedError",
    "TransientError",
    "Tried",
    "StoreError",
    "UnknownDownloadError",
    "UnknownSourceError",
    "UnsafePathError",
    "__version__",
    "destination",
    "hookimpl",
    "resolve_inside",
    "is_transient",
    "safe_filename",
    "setting",
]
