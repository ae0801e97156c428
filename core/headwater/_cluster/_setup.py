"""What every process of a cluster builds from its configuration: the Redis client, the loaded sources."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import redis

from headwater._discovery import Candidate, discover
from headwater._policy import RatePolicy
from headwater._settings import SettingsInput, SettingsLayers
from headwater._sources import PolicyOverride, SourceRegistry

#: Seconds a call to Redis waits at most.
REDIS_TIMEOUT = 5.0


def sources(
    *,
    plugins: Mapping[str, object] | None = None,
    policies: Mapping[str, RatePolicy | PolicyOverride] | None = None,
    load: Collection[str] | None = None,
    block: Collection[str] = (),
    settings: Mapping[str, Mapping[str, object]] | None = None,
    settings_layers: SettingsLayers | None = None,
) -> SourceRegistry:
    """The loaded sources, from the arguments :class:`~headwater.Engine` takes for them."""
    if plugins is None:
        candidates = discover(only=load, block=block)
    else:
        candidates = [Candidate(n, p) for n, p in plugins.items()]
    return SourceRegistry(candidates, policies, SettingsInput.read(settings, settings_layers))


def redis_client(url: str) -> redis.Redis:
    """A redis-py client of ``url`` whose calls wait at most :data:`REDIS_TIMEOUT` seconds."""
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
