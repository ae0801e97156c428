"""The cluster's Redis scripts: read from ``lua/`` beside this module, run by SHA with the text as fallback.

redis-py's ``Script`` sends ``EVALSHA`` and, when the server answers
``NOSCRIPT`` (it restarted, or its script cache was flushed), loads the text
and sends it again, so a script is loaded once per server run, not per call.
"""

from __future__ import annotations

import functools
from importlib import resources

from headwater._errors import MissingDependencyError

try:
    import redis
    from redis.commands.core import Script
except ImportError as exc:  # pragma: no cover - the cluster extra is part of the test extra
    raise MissingDependencyError(
        f"the cluster needs the redis package ({exc}); install it with: pip install 'headwater[cluster]'"
    ) from exc


@functools.cache
def source(name: str) -> str:
    """The text of the script ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def load(client: redis.Redis, name: str) -> Script:
    """The script ``lua/<name>.lua`` bound to ``client``; nothing is sent to the server until it is called."""
    return client.register_script(source(name))


def text(value: object) -> str:
    """A script's string reply as ``str``, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
