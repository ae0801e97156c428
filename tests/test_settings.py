"""Declared settings: the class a source returns, the layers a value comes from, needs configuration."""

from __future__ import annotations

import enum
import os
from pathlib import Path

import attrs
import pytest

from headwater import (
    Engine,
    Job,
    KeyStore,
    NeedsConfigurationError,
    RatePolicy,
    SettingsLayers,
    SQLiteStore,
    State,
    UnknownSourceError,
    hookimpl,
    setting,
)
from headwater._settings import SettingsInput, build_settings

#: A token long enough not to be found by chance in the messages the tests read (it is redacted there).
TOKEN = "tok-8d1f2a7c"


class Quality(enum.Enum):
    LOW = "low"
    LOSSLESS = "lossless"


@attrs.frozen
class TidalSettings:
    token: str = setting(help="the API token", secret=True)
    quality: Quality = setting(help="audio quality", default=Quality.LOW)
    retries: int = setting(default=3)
    ratio: float = setting(default=1.0)
    verbose: bool = setting(default=False)
    folder: Path | None = setting(default=None)
    tags: list[str] = setting(factory=list)


class Tidal:
    """A source with settings; its download writes what it was handed in ``ctx.settings``."""

    def __init__(self, schema: object = TidalSettings) -> None:
        self.schema = schema
        self.seen: list[object] = []

    @hookimpl
    def settings_schema(self) -> object:
        return self.schema

    @hookimpl
    def aliases(self) -> list[str]:
        return ["tidal_dl"]

    @hookimpl
    def download_impl(self, job: Job, ctx) -> Path:
        self.seen.append(ctx.settings)
        path = ctx.dest_dir / f"{job.target}.txt"
        path.write_text(repr(ctx.settings))
        return path


class Plain:
    @hookimpl
    def download_impl(self, job: Job, ctx) -> Path:
        path = ctx.dest_dir / f"{job.target}.txt"
        path.write_text("plain")
        return path


def built(engine: Engine, name: str = "tidal"):
    (info,) = [i for i in engine.sources() if i.name == name]
    return info


def values(engine: Engine) -> dict[str, object]:
    return {s.name: (s.value, s.origin) for s in built(engine).settings}


# -- the layers -------------------------------------------------------------------


def test_four_places_of_a_setting_in_their_order(make_engine, tmp_path):
    """Engine(settings=...) > HEADWATER_<SOURCE>_<FIELD> > secrets store > headwater.toml > default."""
    keystore = KeyStore(tmp_path / "secrets.json")
    keystore.set("tidal", "retries", "30")
    config_path = tmp_path / "headwater.toml"
    layers = SettingsLayers(
        environ={"HEADWATER_TIDAL_RETRIES": "20", "HEADWATER_TIDAL_TOKEN": TOKEN},
        keystore=keystore,
        config={"tidal": {"retries": 40, "ratio": 0.5}},
        config_path=config_path,
    )
    engine = make_engine({"tidal": Tidal()}, settings={"tidal": {"retries": 10}}, settings_layers=layers)
    assert values(engine)["retries"] == (10, "Engine(settings={'tidal': {'retries': ...}})")
    assert values(engine)["ratio"] == (0.5, f"[sources.tidal.settings] of config file {config_path}")
    assert values(engine)["verbose"] == (False, "default")

    engine = make_engine({"tidal": Tidal()}, settings_layers=layers)
    assert values(engine)["retries"] == (20, "environment variable HEADWATER_TIDAL_RETRIES")

    layers = attrs.evolve(layers, environ={"HEADWATER_TIDAL_TOKEN": TOKEN})
    engine = make_engine({"tidal": Tidal()}, settings_layers=layers)
    assert values(engine)["retries"] == (30, f"the secrets store {keystore.path}")

    keystore.remove("tidal", "retries")
    engine = make_engine({"tidal": Tidal()}, settings_layers=layers)
    assert values(engine)["retries"] == (40, f"[sources.tidal.settings] of config file {config_path}")

    engine = make_engine({"tidal": Tidal()}, settings_layers=attrs.evolve(layers, config={}))
    assert values(engine)["retries"] == (3, "default")


def test_the_environment_is_read_when_no_layers_are_given(make_engine, monkeypatch):
    monkeypatch.setenv("HEADWATER_TIDAL_TOKEN", "from-env")
    monkeypatch.setenv("HEADWATER_YT_DLP_X", "1")  # another source's: no harm
    source = Tidal()
    engine = make_engine({"tidal": source})
    engine.wait([engine.submit("tidal", "a")], timeout=10)
    assert source.seen[0].token == "from-env"


def test_env_name_upper_cases_the_source_and_dashes_become_underscores(make_engine):
    layers = SettingsLayers(environ={"HEADWATER_MY_TIDAL_TOKEN": TOKEN, "HEADWATER_MY_TIDAL_RETRIES": "7"})
    engine = make_engine({"my-tidal": Tidal()}, settings_layers=layers)
    assert built(engine, "my-tidal").status == "ok"
    assert values_of(engine, "my-tidal")["retries"] == 7


def values_of(engine: Engine, name: str) -> dict[str, object]:
    return {s.name: s.value for s in built(engine, name).settings}


def test_settings_by_alias_in_the_engine_and_the_config(make_engine):
    layers = SettingsLayers(config={"tidal_dl": {"token": TOKEN, "retries": 5}})
    engine = make_engine({"tidal": Tidal()}, settings={"tidal_dl": {"retries": 6}}, settings_layers=layers)
    assert values(engine)["retries"] == (6, "Engine(settings={'tidal_dl': {'retries': ...}})")
    assert built(engine).status == "ok"


def test_text_is_parsed_for_every_supported_type(make_engine, tmp_path):
    environ = {
        "HEADWATER_TIDAL_TOKEN": TOKEN,
        "HEADWATER_TIDAL_QUALITY": "lossless",
        "HEADWATER_TIDAL_RETRIES": " 12 ",
        "HEADWATER_TIDAL_RATIO": "2.5",
        "HEADWATER_TIDAL_VERBOSE": "Yes",
        "HEADWATER_TIDAL_FOLDER": "~/music",
        "HEADWATER_TIDAL_TAGS": '["a", "b"]',
    }
    source = Tidal()
    engine = make_engine({"tidal": source}, settings_layers=SettingsLayers(environ=environ))
    engine.wait([engine.submit("tidal", "a")], timeout=10)
    got = source.seen[0]
    assert (got.quality, got.retries, got.ratio, got.verbose) == (Quality.LOSSLESS, 12, 2.5, True)
    assert got.folder == Path("~/music").expanduser() and got.tags == ["a", "b"]
    assert values(engine)["folder"][0] == str(Path("~/music").expanduser())  # JSON-ready


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("retries", "many", "expected a whole number, got 'many'"),
        ("retries", 2.5, "expected a whole number, got float"),
        ("retries", True, "expected a whole number, got bool"),
        ("ratio", "fast", "expected a number, got 'fast'"),
        ("verbose", "perhaps", "expected true or false, got 'perhaps'"),
        ("verbose", 1, "expected true or false, got int"),
        ("quality", "medium", "expected one of low, lossless, got 'medium'"),
        ("tags", "a,b", "expected a JSON array, got 'a,b'"),
        ("tags", {"a": 1}, "expected a list, got dict"),
    ],
)
def test_a_wrong_type_is_named_with_source_field_and_where_it_was_read(make_engine, field, value, why):
    layers = SettingsLayers(config={"tidal": {"token": TOKEN, field: value}}, config_path=Path("/etc/h.toml"))
    engine = make_engine({"tidal": Tidal(), "plain": Plain()}, settings_layers=layers)
    info = built(engine)
    assert info.status == "needs-configuration"
    (problem,) = info.problems
    assert problem.field == field
    assert why in problem.message and "[sources.tidal.settings] of config file /etc/h.toml" in problem.message
    with pytest.raises(NeedsConfigurationError, match=rf"source 'tidal' needs configuration: {field}: "):
        engine.submit("tidal", "a")
    done = engine.wait([engine.submit("plain", "p")], timeout=10)[0]  # every other source runs
    assert done.state is State.COMPLETED


def test_a_wrong_type_from_the_environment_names_the_variable(make_engine):
    layers = SettingsLayers(environ={"HEADWATER_TIDAL_TOKEN": TOKEN, "HEADWATER_TIDAL_RETRIES": "x"})
    engine = make_engine({"tidal": Tidal()}, settings_layers=layers)
    (problem,) = built(engine).problems
    assert (
        str(problem)
        == "retries: expected a whole number, got 'x', in environment variable HEADWATER_TIDAL_RETRIES"
    )


def test_a_missing_required_setting_says_where_it_can_be_set(make_engine):
    engine = make_engine({"tidal": Tidal(), "plain": Plain()}, settings_layers=SettingsLayers(environ={}))
    info = built(engine)
    assert info.status == "needs-configuration"
    (problem,) = info.problems
    assert problem.field == "token"
    for place in (
        "HEADWATER_TIDAL_TOKEN",
        "`headwater keys set tidal token`",
        "`token = ...` under [sources.tidal.settings] in headwater.toml",
    ):
        assert place in problem.message
    token = next(s for s in info.settings if s.name == "token")
    assert (token.required, token.secret, token.origin, token.value) == (True, True, None, None)
    assert token.places[0] == "Engine(settings={'tidal': {'token': ...}})"
    with pytest.raises(NeedsConfigurationError) as refused:
        engine.submit("tidal_dl", "a")  # by alias too
    assert refused.value.source == "tidal" and "token: required, not set" in str(refused.value)
    with pytest.raises(NeedsConfigurationError):
        engine.submit(["plain", "tidal"], "a")  # a chain naming it is refused too
    assert engine.records() == []
    assert engine.wait([engine.submit("plain", "p")], timeout=10)[0].state is State.COMPLETED


def test_unknown_settings_are_problems_of_that_source(make_engine):
    layers = SettingsLayers(config={"tidal": {"token": TOKEN, "tokn": "x"}, "plain": {"speed": 1}})
    engine = make_engine({"tidal": Tidal(), "plain": Plain()}, settings_layers=layers)
    (problem,) = built(engine).problems
    assert problem.field == "tokn" and "unknown setting" in problem.message and "token" in problem.message
    (problem,) = built(engine, "plain").problems
    assert problem.field == "speed" and "source 'plain' declares none" in problem.message


def test_settings_for_a_source_that_does_not_exist_raise(make_engine):
    with pytest.raises(UnknownSourceError, match="'tidl'"):
        make_engine({"tidal": Tidal()}, settings={"tidl": {"token": TOKEN}})
    with pytest.raises(UnknownSourceError, match="'nosuch'"):
        make_engine({"tidal": Tidal()}, settings_layers=SettingsLayers(config={"nosuch": {}}))


def test_settings_given_twice_under_a_name_and_an_alias_are_a_problem(make_engine):
    engine = make_engine(
        {"tidal": Tidal()}, settings={"tidal": {"token": TOKEN}, "tidal_dl": {"token": TOKEN + "-2"}}
    )
    (problem,) = built(engine).problems
    assert problem.field is None and "given twice" in problem.message


def test_settings_must_map_names_to_mappings(make_engine):
    with pytest.raises(TypeError, match="settings must map source names"):
        make_engine({"tidal": Tidal()}, settings={"tidal": "token"})


def test_a_validator_of_the_class_is_a_problem_of_the_whole_class(make_engine):
    @attrs.frozen
    class Ranged:
        port: int = setting(default=80, validator=attrs.validators.ge(1))

    engine = make_engine({"tidal": Tidal(Ranged)}, settings={"tidal": {"port": 0}})
    (problem,) = built(engine).problems
    assert problem.field is None and "'port' must be >= 1" in problem.message


# -- secrets ------------------------------------------------------------------


def test_the_instance_repr_redacts_secrets_and_an_invalid_secret_is_never_quoted(make_engine):
    @attrs.frozen
    class Pin:
        pin: int = setting(secret=True)

    source = Tidal()
    engine = make_engine({"tidal": source}, settings={"tidal": {"token": "hunter2-token"}})
    engine.wait([engine.submit("tidal", "a")], timeout=10)
    assert source.seen[0].token == "hunter2-token"
    assert "hunter2-token" not in repr(source.seen[0]) and "token='***'" in repr(source.seen[0])
    assert built(engine).settings[0].value is None  # a secret's value is never listed

    engine = make_engine({"tidal": Tidal(Pin)}, settings={"tidal": {"pin": "12x4-secret"}})
    (problem,) = built(engine).problems
    assert problem.field == "pin" and "12x4-secret" not in str(problem) and "not a valid int" in str(problem)


# -- the settings class ---------------------------------------------------------


class Mutable:
    token: str = "x"


@attrs.define
class NotFrozen:
    token: str = setting(default="x")


@attrs.frozen
class LeakyRepr:
    token: str = attrs.field(metadata={"secret": True})


@attrs.frozen
class Unsupported:
    when: dict[str, int] = setting(factory=dict)


@attrs.frozen
class Shouting:
    TOKEN: str = setting(default="x")


@attrs.frozen
class Private:
    _token: str = setting(default="x")


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (Mutable, "not an attrs class"),
        (NotFrozen(), "not an attrs class"),
        (NotFrozen, "must be frozen"),
        (LeakyRepr, "a secret must be redacted in the repr"),
        (Unsupported, "is not supported"),
        (Shouting, "lowercase"),
        (Private, "public __init__ argument"),
    ],
)
def test_an_unusable_settings_class_leaves_the_source_out(make_engine, schema, why):
    engine = make_engine({"tidal": Tidal(schema), "plain": Plain()})
    (broken,) = [i for i in engine.sources(include_broken=True) if i.status == "broken"]
    assert broken.name == "tidal" and why in broken.error
    assert [i.name for i in engine.sources()] == ["plain"]


def test_a_settings_class_whose_annotations_do_not_resolve_leaves_the_source_out(make_engine):
    namespace: dict[str, object] = {}
    exec(
        "from __future__ import annotations\nimport attrs\n"
        "@attrs.frozen\nclass Dangling:\n    token: NoSuchType = 'x'\n",
        namespace,
    )
    engine = make_engine({"tidal": Tidal(namespace["Dangling"])})
    (broken,) = engine.sources(include_broken=True)
    assert "annotations do not resolve" in broken.error and "NoSuchType" in broken.error


# -- hooks and their settings argument --------------------------------------------


class WithSettingsEverywhere(Tidal):
    """Takes ``settings`` in every hook that offers it."""

    def __init__(self) -> None:
        super().__init__()
        self.given: dict[str, object] = {}

    @hookimpl
    def rate_policy(self, settings: TidalSettings | None) -> RatePolicy:
        self.given["rate_policy"] = settings
        return RatePolicy(concurrency=settings.retries if settings else 1)

    @hookimpl
    def record_fields(self, job: Job, settings: TidalSettings) -> dict[str, object]:
        self.given["record_fields"] = settings
        return {"quality": settings.quality.value}

    @hookimpl
    def translate_target(self, target: str, settings: TidalSettings) -> str:
        self.given["translate_target"] = settings
        return target.upper()


class WithoutSettings(Plain):
    """The hooks as plugins wrote them before settings existed: no ``settings`` argument."""

    @hookimpl
    def rate_policy(self) -> RatePolicy:
        return RatePolicy(concurrency=2)

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        return {"old": True}

    @hookimpl
    def translate_target(self, target: str) -> str:
        return target + "-old"


def test_hooks_may_take_settings_and_plugins_without_it_keep_working(make_engine):
    rich = WithSettingsEverywhere()
    engine = make_engine(
        {"tidal": rich, "old": WithoutSettings()}, settings={"tidal": {"token": TOKEN, "retries": 4}}
    )
    done, old = engine.wait([engine.submit("tidal", "a"), engine.submit("old", "b")], timeout=10)
    assert {k: v.retries for k, v in rich.given.items()} == {
        "rate_policy": 4,
        "record_fields": 4,
        "translate_target": 4,
    }
    assert built(engine).policy.concurrency == 4
    assert done.extra == {"quality": "low"} and Path(done.file_path).name == "A.txt"
    assert (
        old.state is State.COMPLETED
        and old.extra == {"old": True}
        and Path(old.file_path).name == "b-old.txt"
    )
    assert built(engine, "old").policy.concurrency == 2


def test_rate_policy_gets_none_when_the_source_needs_configuration(make_engine):
    rich = WithSettingsEverywhere()
    engine = make_engine({"tidal": rich}, settings_layers=SettingsLayers(environ={}))
    assert rich.given == {"rate_policy": None}
    assert built(engine).status == "needs-configuration" and built(engine).policy.concurrency == 1


def unfinished(journal: Path, plugins: dict[str, object], source, **settings: object) -> str:
    """The id of a download of ``source`` left QUEUED in ``journal`` by an engine that paused its source."""
    engine = Engine(journal.parent / "first", plugins, store=SQLiteStore(journal), **settings)
    try:
        engine.pause()
        rid = engine.submit(source, "x")
    finally:
        engine.close()
    return rid


def test_a_chain_move_skips_a_fallback_that_needs_configuration(tmp_path):
    """A journal may hold a chain download whose fallback has lost its settings since."""

    class Failing(Plain):
        @hookimpl
        def download_impl(self, job: Job, ctx) -> Path:
            raise RuntimeError("first source fails")

    journal = tmp_path / "journal.sqlite3"
    plugins = {"first": Failing(), "tidal": Tidal()}
    rid = unfinished(journal, plugins, ["first", "tidal"], settings={"tidal": {"token": TOKEN}})
    with Engine(tmp_path / "b", plugins, store=SQLiteStore(journal)) as second:
        second.resume()
        record = second.wait([rid], timeout=10)[0]
    assert record.state is State.FAILED
    why = {t.source: t.error for t in record.tried}
    assert why["first"] == "RuntimeError: first source fails"
    assert why["tidal"].startswith("needs configuration: token: required, not set")


def test_a_journaled_download_of_a_source_that_needs_configuration_stays_queued(tmp_path, caplog):
    journal = tmp_path / "journal.sqlite3"
    source = Tidal()
    rid = unfinished(journal, {"tidal": source}, "tidal", settings={"tidal": {"token": TOKEN}})
    with Engine(tmp_path / "b", {"tidal": source}, store=SQLiteStore(journal)) as second:
        second.resume()
        assert second.get(rid).state is State.QUEUED
        assert second.worker_stats().get("tidal", (0, 0, 0))[2] == 0  # not queued on the worker
    assert source.seen == []
    assert "1 unfinished download(s) of source 'tidal' stay queued until it is configured" in caplog.text
    with Engine(
        tmp_path / "c", {"tidal": source}, store=SQLiteStore(journal), settings={"tidal": {"token": TOKEN}}
    ) as third:
        third.resume()
        assert third.wait([rid], timeout=10)[0].state is State.COMPLETED  # nothing was lost


# -- the kit's building blocks ----------------------------------------------------


def test_build_settings_from_defaults_and_from_given_values():
    assert build_settings(("tidal",), TidalSettings).needs_configuration
    made = build_settings(("tidal",), TidalSettings, SettingsInput(given={"tidal": {"token": TOKEN}}))
    assert made.values == TidalSettings(token=TOKEN)
    assert build_settings(("plain",), None).values is None


def test_the_environment_of_the_process_is_not_read_by_settings_input_by_default(monkeypatch):
    monkeypatch.setenv("HEADWATER_TIDAL_TOKEN", TOKEN)
    assert build_settings(("tidal",), TidalSettings).needs_configuration
    assert not build_settings(("tidal",), TidalSettings, SettingsInput.read(None, None)).needs_configuration
    assert os.environ["HEADWATER_TIDAL_TOKEN"] == TOKEN
