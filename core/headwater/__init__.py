"""headwater: a download engine in which every download source is a plugin.

The public surface is what this module exports; everything else is private.
"""

from headwater.context import DownloadContext
from headwater.engine import Engine
from headwater.errors import (
    ConfigError,
    DownloadCancelled,
    EngineClosedError,
    FieldConflictError,
    HeadwaterError,
    InvalidPolicyError,
    PluginConflictError,
    PluginError,
    RetryAfter,
    StoreError,
    UnknownDownloadError,
    UnknownSourceError,
    UnsafePathError,
)
from headwater.files import safe_filename
from headwater.hookspecs import hookimpl
from headwater.policy import RatePolicy
from headwater.records import Job, Record, State
from headwater.sources import PolicyOverride, SourceInfo
from headwater.store import MemoryStore, RecordStore, SQLiteStore

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DownloadCancelled",
    "DownloadContext",
    "Engine",
    "EngineClosedError",
    "FieldConflictError",
    "HeadwaterError",
    "InvalidPolicyError",
    "Job",
    "MemoryStore",
    "PluginConflictError",
    "PolicyOverride",
    "PluginError",
    "RatePolicy",
    "Record",
    "RecordStore",
    "RetryAfter",
    "SQLiteStore",
    "SourceInfo",
    "State",
    "StoreError",
    "UnknownDownloadError",
    "UnknownSourceError",
    "UnsafePathError",
    "__version__",
    "hookimpl",
    "safe_filename",
]
