"""headwater.toml: what it may say, and clear errors naming the key for everything else."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from instrumented import InstrumentedSource

from headwater import Engine, InvalidPolicyError, PolicyOverride, RatePolicy
from headwater._config import ClusterConfig, Config, load_config
from headwater._errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "headwater.toml"
    path.write_text(text)
    return path


def test_a_full_config(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            'destination = "~/dl"\n[plugins]\nload = ["a", "b"]\nblock = ["c"]\n'
            "[sources.youtube]\nconcurrency = 1\ndelay = 5\n",
        )
    )
    assert config.destination == Path("~/dl").expanduser()
    assert (config.load, config.block) == (("a", "b"), ("c",))
    assert dict(config.policies["youtube"]) == {"concurrency": 1, "delay": 5}


def test_a_cluster_config_is_shown_with_its_passwords_masked(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "[cluster]\nbroker = 'redis://:s3cret@h:6379/0'\n"
            "postgres = 'postgresql://u:pw0rd@db/hw'\nlease = 4\nprefix = 'c1'\n",
        )
    )
    assert config.cluster is not None
    assert (config.cluster.lease, config.cluster.schema, config.cluster.cancel_channel) == (
        4.0,
        "headwater",
        "c1:cancel",
    )
    shown = config.cluster.shown()
    assert "s3cret" not in shown and "pw0rd" not in shown
    assert (
        shown
        == "broker redis://:***@h:6379/0, records postgresql://u:***@db/hw (schema headwater), lease 4 s"
    )


def test_a_cluster_configs_repr_str_and_log_lines_never_show_its_passwords(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = ClusterConfig("redis://:r3dis-pw@h:6379/0", "postgresql://u:pg-pw@db/hw?password=q-pw")
    whole = Config(cluster=cluster)
    with caplog.at_level(logging.INFO):
        logging.getLogger("headwater.test").info("config %r, %s, %s", cluster, cluster, whole)
    for text in (repr(cluster), str(cluster), repr(whole), caplog.text):
        assert "ClusterConfig(broker='redis://:***@h:6379/0'" in text
        assert "postgres='postgresql://u:***@db/hw?password=***'" in text
        assert not any(pw in text for pw in ("r3dis-pw", "pg-pw", "q-pw")), text
    assert cluster.broker == "redis://:r3dis-pw@h:6379/0"  # only what is shown is masked


def test_a_source_may_say_what_to_do_with_a_taken_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[sources.http]\nexisting = "skip"\n'))
    assert dict(config.policies["http"]) == {"existing": "skip"}


def test_no_file_at_the_default_place_is_an_empty_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path / "nothing"))
    config = load_config()
    assert (config.path, config.destination, dict(config.policies), config.load) == (None, None, {}, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("destinaton = 'x'", "unknown key 'destinaton'"),
        ("destination = 3", "'destination' must be a folder path"),
        ("[plugins]\nlaod = []", "unknown key 'plugins.laod'"),
        ("[plugins]\nblock = 'file'", "'plugins.block' must be a list of source names"),
        ("[sources.yt]\nconcurency = 1", "unknown key 'sources.yt.concurency'"),
        ("[sources.yt]\nconcurrency = '1'", "'sources.yt.concurrency' must be a whole number, got '1'"),
        ("[sources.yt]\nconcurrency = true", "'sources.yt.concurrency' must be a whole number"),
        ("[sources.yt]\ndelay = 'five'", "'sources.yt.delay' must be a number"),
        ("[sources.yt]\nconcurrency = 0", "concurrency must be a whole number of at least 1"),
        (
            "[sources.yt]\nexisting = 'keep'",
            "existing must be one of 'rename', 'skip', 'overwrite', got 'keep'",
        ),
        ("[sources.yt]\nexisting = true", "'sources.yt.existing' must be a string, got True"),
        ("sources = 3", "'sources' must be a table"),
        ("[sources\n", "is not valid TOML"),
        ("[cluster]\nbroker = 'redis://h'", "[cluster] needs 'postgres' (a URL)"),
        (
            "[cluster]\nbroker = 'redis://h'\npostgres = 'p'\nlease = 0",
            "lease must be a number of seconds > 0",
        ),
        ("[cluster]\nbroker = 'redis://h'\npostgres = 'p'\nlease = true", "'cluster.lease' must be a number"),
        ("[cluster]\nbroker = ''\npostgres = 'p'", "'cluster.broker' must be a non-empty string"),
        ("[cluster]\nbrokr = 'x'", "unknown key 'cluster.brokr'"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=str(path)) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_a_partial_policy_override_keeps_the_plugins_other_fields(make_engine) -> None:
    src = InstrumentedSource("yt", RatePolicy(concurrency=3, delay=1), aliases=("youtube",))
    engine: Engine = make_engine({"yt": src}, policies={"youtube": PolicyOverride({"delay": 5})})
    assert engine.sources()[0].policy == RatePolicy(concurrency=3, delay=5)
    with pytest.raises(TypeError, match=r"policies\['yt'\]: RatePolicy has no field\(s\) speed"):
        make_engine({"yt": InstrumentedSource("yt")}, policies={"yt": PolicyOverride({"speed": 5})})
    with pytest.raises(InvalidPolicyError, match="delay"):
        make_engine({"yt": InstrumentedSource("yt")}, policies={"yt": PolicyOverride({"delay": -1})})
