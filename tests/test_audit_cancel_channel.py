"""The cancel channel carries the cluster's prefix, on the canceller's side and the worker's alike.

``ClusterConfig.prefix`` starts every name a cluster uses in Redis: its
limits (``<prefix>:limits:``), its leader lease (``<prefix>:leader:``), its
Dramatiq namespace and its cancel channel (``<prefix>:cancel``). Clusters
sharing one Redis name different prefixes. The channel reaches a download
only if the client announces on the channel the worker listens on; the
workers' polling of the records (the fallback) would hide a mismatch, so
here it is set far beyond the test's wait: only the channel can deliver the
cancel.
"""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cluster_plugin
import pytest
import redis
from waiting import wait_until

from headwater import State
from headwater._cluster._cancels import CancelWatch, announce
from headwater._cluster._engine import ClusterEngine
from headwater._cluster._runner import ClusterWorker
from headwater._cluster._setup import clear
from headwater._config import ClusterConfig

pytest_plugins = ["cluster_fixtures", "pg_fixtures"]

#: The workers' polling of their records: far longer than the test waits, so it never stops the download.
POLL = 600.0


@pytest.fixture
def config(pg_url: str, redis_client: redis.Redis) -> Iterator[ClusterConfig]:
    """A cluster of its own on the local services, with a prefix unlike the default's; deleted after."""
    token = uuid.uuid4().hex[:12]
    found = ClusterConfig(
        "redis://127.0.0.1:6379/0", pg_url, schema=f"hwaudit_{token}", lease=2.0, prefix=f"hwaudit-{token}"
    )
    yield found
    clear(found)


@pytest.fixture
def events_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "events"
    (folder / "gates").mkdir(parents=True)
    monkeypatch.setenv(cluster_plugin.DIR_ENV, str(folder))
    return folder


def test_the_cancel_channel_is_named_by_the_clusters_prefix(config: ClusterConfig) -> None:
    assert config.cancel_channel == f"{config.prefix}:cancel"
    assert config.limits_prefix.startswith(f"{config.prefix}:")
    assert config.leader_prefix.startswith(f"{config.prefix}:")


@pytest.mark.parametrize(
    ("call", "names"),
    [(ClusterWorker, ("prefix", "channel")), (CancelWatch, ("channel",)), (announce, ("channel",))],
    ids=["ClusterWorker", "CancelWatch", "announce"],
)
def test_the_worker_side_has_no_default_cluster_to_fall_back_on(
    call: Callable[..., object], names: tuple[str, ...]
) -> None:
    """Each is told its cluster's names: a default (the default cluster's) would listen or announce there."""
    parameters = inspect.signature(call).parameters
    assert [name for name in names if parameters[name].default is not inspect.Parameter.empty] == []


def test_a_cancel_reaches_a_running_download_through_its_clusters_channel(
    config: ClusterConfig, tmp_path: Path, events_dir: Path, redis_client: redis.Redis
) -> None:
    plugins = {"clustered": cluster_plugin}
    with ClusterEngine(tmp_path / "dest", plugins, cluster=config, workers=1, poll=POLL) as client:
        download = client.submit("clustered", "wait:never:c.bin")
        wait_until(lambda: any(e[0] == "part" for e in cluster_plugin.events()), 60, "the download started")
        channel = config.cancel_channel
        listening = lambda: redis_client.pubsub_numsub(channel) == [(channel.encode(), 1)]  # noqa: E731
        wait_until(listening, 30, f"the worker listens on {channel}")
        assert client.cancel(download) is True
        # Only the channel can stop it before the poll, 600 s away: the plugin ends at the announcement.
        wait_until(lambda: any(e[0] == "end" for e in cluster_plugin.events()), 30, "the plugin ended")
        (record,) = client.wait([download], timeout=30)
    assert record.state is State.CANCELLED
    assert not list((tmp_path / "dest").iterdir())  # the plugin removed its .part on the cancel


def test_a_closed_watch_ends_its_thread_at_once_whatever_its_poll(
    config: ClusterConfig, redis_client: redis.Redis
) -> None:
    """close() ends the watch's threads promptly, even with the records' poll far away.

    Before, the thread listened for up to ``poll`` seconds in one call, so a
    watch closed with a long poll outlived its close (a worker's thread left
    running after the worker was closed).
    """
    watch = CancelWatch(redis_client, lambda ids: [], poll=POLL, channel=config.cancel_channel)
    listening = lambda: redis_client.pubsub_numsub(config.cancel_channel)[0][1] == 1  # noqa: E731
    wait_until(listening, 30, "the watch listens")
    watch.close(timeout=10.0)
    names = {"headwater-cancels", "headwater-cancel-checks"}  # the listener, the check of the records
    assert not any(t.name in names and t.is_alive() for t in threading.enumerate())
