"""The source registry, given plugin objects directly: names, aliases, policies, validation."""

from __future__ import annotations

import pytest
from instrumented import InstrumentedSource

from headwater import (
    DownloadContext,
    Job,
    RatePolicy,
    SourceInfo,
    State,
    UnknownSourceError,
    hookimpl,
)

pytestmark = pytest.mark.timeout(30)


def broken(engine, name: str) -> list[SourceInfo]:
    return [i for i in engine.sources(include_broken=True) if i.name == name and i.status == "broken"]


def loaded_names(engine) -> list[str]:
    return [i.name for i in engine.sources()]


class Plain:
    """A minimal source: download_impl plus whatever hooks the test adds as attributes."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> None:
        return None


# -- names ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Upper", "", "-dash", "_under", "a b", "a.b", "naïve", "a/b"])
def test_invalid_source_name_is_reported_and_left_out(make_engine, name):
    engine = make_engine({name: Plain(), "fine": Plain()})
    assert loaded_names(engine) == ["fine"]
    [info] = broken(engine, name)
    assert "invalid source name" in info.error and repr(name) in info.error
    assert info.distribution is None and info.version is None
    with pytest.raises(UnknownSourceError):
        engine.submit(name, "x")


@pytest.mark.parametrize("name", ["a", "0", "a-b", "a_b", "x9-y_z"])
def test_valid_source_names_load(make_engine, name):
    engine = make_engine({name: Plain()})
    assert loaded_names(engine) == [name]


def test_same_plugin_object_under_two_names_loads_once_and_says_why(make_engine):
    shared = InstrumentedSource("shared")
    engine = make_engine({"first": shared, "second": shared})
    assert loaded_names(engine) == ["first"]
    [info] = broken(engine, "second")
    assert "'first'" in info.error and "alias" in info.error and "0x" not in info.error
    assert "\n" not in info.error and len(info.error) < 200
    rid = engine.submit("first", "ok:f")
    assert engine.wait([rid], timeout=10)[0].state is State.COMPLETED


class NoDownload:
    @hookimpl
    def aliases(self) -> list[str]:
        return ["nd"]


def test_unknown_source_lists_the_loaded_and_the_broken_apart(make_engine):
    engine = make_engine({"beta": Plain(), "alpha": Plain(), "gone": NoDownload()})
    with pytest.raises(UnknownSourceError) as err:
        engine.submit("alpah", "x")
    assert err.value.known == ["alpha", "beta"] and err.value.broken == ["gone"]
    assert "'alpah'" in str(err.value) and "known sources: alpha, beta;" in str(err.value)
    assert "left out as broken (see `headwater sources`): gone" in str(err.value)


def test_a_policy_for_an_alias_of_a_broken_source_names_the_broken_source(make_engine):
    """A broken source's aliases are never read, so its alias is unknown; the error names the broken."""
    with pytest.raises(UnknownSourceError) as err:
        make_engine({"ok": Plain(), "gone": NoDownload()}, policies={"nd": RatePolicy(concurrency=1)})
    assert err.value.name == "nd" and err.value.broken == ["gone"], str(err.value)


def test_no_broken_sources_no_broken_listing(make_engine):
    engine = make_engine({"ok": Plain()})
    with pytest.raises(UnknownSourceError) as err:
        engine.submit("ko", "x")
    assert "broken" not in str(err.value)


# -- validation of hooks -------------------------------------------------------


def test_missing_download_impl_is_reported(make_engine):
    class Lazy:
        @hookimpl
        def rate_policy(self) -> RatePolicy:
            return RatePolicy()

    engine = make_engine({"lazy": Lazy(), "ok": Plain()})
    assert loaded_names(engine) == ["ok"]
    [info] = broken(engine, "lazy")
    assert "download_impl" in info.error


def test_unknown_hook_is_reported(make_engine):
    class Typo(Plain):
        @hookimpl
        def rate_polcy(self) -> RatePolicy:
            return RatePolicy(concurrency=2)

    engine = make_engine({"typo": Typo()})
    assert loaded_names(engine) == []
    [info] = broken(engine, "typo")
    assert "unknown hook" in info.error and "rate_polcy" in info.error


def test_unknown_optional_hook_is_allowed(make_engine):
    """A hook marked optionalhook (one a newer headwater may define) does not break the source."""

    class Ahead(Plain):
        @hookimpl(optionalhook=True)
        def search(self, query: str) -> list[str]:
            return []

    engine = make_engine({"ahead": Ahead()})
    assert loaded_names(engine) == ["ahead"]


def test_wrong_argument_name_is_reported(make_engine):
    class WrongArg:
        @hookimpl
        def download_impl(self, job: Job, context: DownloadContext) -> None:
            return None

    engine = make_engine({"wrongarg": WrongArg(), "ok": Plain()})
    assert loaded_names(engine) == ["ok"]
    [info] = broken(engine, "wrongarg")
    assert "PluginValidationError" in info.error and "context" in info.error
    assert "\n" not in info.error
    # The rejected plugin left no hook implementation behind.
    rid = engine.submit("ok", "t")
    assert "declined" in engine.wait([rid], timeout=10)[0].error


# -- aliases -------------------------------------------------------------------


def test_aliases_resolve_everywhere(make_engine):
    a = InstrumentedSource("alpha", aliases=("alpha_dl", "al"))
    b = InstrumentedSource("beta")
    engine = make_engine({"alpha": a, "beta": b})
    assert engine.sources()[0].aliases == ("alpha_dl", "al")
    first = engine.submit("alpha_dl", "block:one")
    second = engine.submit("al", "block:two")
    other = engine.submit("beta", "block:three")
    a.wait_started(1)
    assert engine.get(first).source == "alpha"
    by_alias = [r.id for r in engine.records("alpha_dl")]
    assert by_alias == [r.id for r in engine.records("alpha")] == [first, second]
    assert [r.id for r in engine.records("al")] == [first, second]
    assert engine.cancel(second, source_hint="alpha_dl") is True  # queued one
    assert engine.cancel(first, source_hint="al") is True  # running one
    # A hint naming the wrong (but known) source still finds the download.
    assert engine.cancel(other, source_hint="alpha_dl") is True
    assert [r.state for r in engine.wait([first, second, other], timeout=10)] == [State.CANCELLED] * 3
    with pytest.raises(UnknownSourceError):
        engine.records("alpah")
    with pytest.raises(UnknownSourceError):
        engine.cancel(first, source_hint="nope")
    # Per-source calls reached only the source asked for.
    assert a.started_targets() == ["block:one"]


def test_own_name_and_repeats_in_aliases_are_dropped(make_engine):
    src = InstrumentedSource("alpha", aliases=("alpha", "al", "al"))
    engine = make_engine({"alpha": src})
    assert engine.sources()[0].aliases == ("al",)


@pytest.mark.parametrize(
    ("aliases", "bad"),
    [(["Alpha_DL"], "Alpha_DL"), (["ok", "has space"], "has space"), ([""], "''"), ([3], "3")],
)
def test_invalid_alias_is_reported(make_engine, aliases, bad):
    src = InstrumentedSource("alpha", aliases=tuple(aliases))
    engine = make_engine({"alpha": src, "beta": Plain()})
    assert loaded_names(engine) == ["beta"]
    [info] = broken(engine, "alpha")
    assert "invalid alias" in info.error and bad in info.error
    with pytest.raises(UnknownSourceError):
        engine.submit("ok", "x")


def test_aliases_returning_a_string_is_reported_not_split(make_engine):
    class Stringy(Plain):
        @hookimpl
        def aliases(self) -> str:
            return "abc"

    engine = make_engine({"stringy": Stringy()})
    assert loaded_names(engine) == []
    [info] = broken(engine, "stringy")
    assert info.error == "aliases() returned 'abc', not an iterable of names" and info.rule == "aliases"
    with pytest.raises(UnknownSourceError):
        engine.submit("a", "x")


def test_aliases_hook_raising_is_reported(make_engine):
    class Raises(Plain):
        @hookimpl
        def aliases(self) -> list[str]:
            raise RuntimeError("config\n   missing")

    engine = make_engine({"raises": Raises(), "ok": Plain()})
    [info] = broken(engine, "raises")
    assert info.error == "aliases() raised RuntimeError: config missing" and info.rule == "aliases"
    assert loaded_names(engine) == ["ok"]


def test_alias_equal_to_another_source_name_is_a_conflict(make_engine):
    # "a" comes first, yet a source name beats an alias whatever the order.
    engine = make_engine({"a": InstrumentedSource("a", aliases=("b",)), "b": Plain()})
    assert loaded_names(engine) == ["b"]
    [info] = broken(engine, "a")
    assert "alias 'b'" in info.error and "source 'b'" in info.error


def test_alias_clash_leaves_the_later_source_out_and_frees_its_claims(make_engine):
    engine = make_engine(
        {
            "first": InstrumentedSource("first", aliases=("shared",)),
            "second": InstrumentedSource("second", aliases=("own", "shared")),
            "third": InstrumentedSource("third", aliases=("own",)),
        }
    )
    assert loaded_names(engine) == ["first", "third"]
    [info] = broken(engine, "second")
    assert "alias 'shared'" in info.error and "source 'first'" in info.error
    # "own", claimed by "second" before it failed, went to "third".
    assert engine.get(engine.submit("own", "ok:x")).source == "third"
    assert engine.get(engine.submit("shared", "ok:y")).source == "first"


# -- policies ------------------------------------------------------------------


def test_declared_policy_is_reported(make_engine):
    engine = make_engine({"a": InstrumentedSource("a", RatePolicy(concurrency=3, delay=0.5)), "b": Plain()})
    assert {i.name: i.policy for i in engine.sources()} == {
        "a": RatePolicy(concurrency=3, delay=0.5),
        "b": RatePolicy(),
    }


def test_policy_override_by_alias_takes_effect(make_engine):
    src = InstrumentedSource("alpha", RatePolicy(concurrency=1), aliases=("alpha_dl",))
    engine = make_engine({"alpha": src}, policies={"alpha_dl": RatePolicy(concurrency=3)})
    assert engine.sources()[0].policy == RatePolicy(concurrency=3)
    ids = [engine.submit("alpha", f"block:{i}") for i in range(5)]
    src.wait_started(3)  # times out under the plugin's own concurrency of 1
    assert engine.worker_stats()["alpha"][1] == 3
    for i in range(5):
        src.release(str(i))
    assert all(r.state is State.COMPLETED for r in engine.wait(ids, timeout=10))
    assert src.peak == 3


def test_policy_for_unknown_source_raises(make_engine):
    with pytest.raises(UnknownSourceError) as err:
        make_engine({"alpha": Plain()}, policies={"alpah": RatePolicy()})
    assert err.value.known == ["alpha"]


def test_policy_for_broken_source_is_ignored(make_engine):
    engine = make_engine({"Bad": Plain(), "ok": Plain()}, policies={"Bad": RatePolicy(concurrency=2)})
    assert loaded_names(engine) == ["ok"]


def test_policy_that_is_not_a_policy_raises(make_engine):
    with pytest.raises(TypeError, match="alpha"):
        make_engine({"alpha": Plain()}, policies={"alpha": {"concurrency": 2}})


def policy_plugin(result: object) -> object:
    class P(Plain):
        @hookimpl
        def rate_policy(self) -> object:
            if callable(result):
                return result()
            return result

    return P()


def test_invalid_declared_policy_is_refused_at_load(make_engine):
    engine = make_engine({"zero": policy_plugin(lambda: RatePolicy(concurrency=0)), "ok": Plain()})
    [info] = broken(engine, "zero")
    assert "concurrency" in info.error and "0" in info.error
    assert loaded_names(engine) == ["ok"]


@pytest.mark.parametrize("result", [{"concurrency": 2}, 2, "fast"])
def test_declared_policy_of_wrong_type_is_refused(make_engine, result):
    engine = make_engine({"odd": policy_plugin(result)})
    [info] = broken(engine, "odd")
    assert type(result).__name__ in info.error and "RatePolicy" in info.error


def test_rate_policy_hook_raising_is_reported(make_engine):
    def boom() -> RatePolicy:
        raise OSError("no config file")

    engine = make_engine({"boom": policy_plugin(boom)})
    [info] = broken(engine, "boom")
    assert info.error == "rate_policy() raised OSError: no config file" and info.rule == "rate-policy"


def test_hook_calling_exit_is_reported(make_engine):
    def leave() -> RatePolicy:
        raise SystemExit(3)

    engine = make_engine({"leaver": policy_plugin(leave), "ok": Plain()})
    [info] = broken(engine, "leaver")
    assert info.error == "rate_policy() raised SystemExit: 3"
    assert loaded_names(engine) == ["ok"]


def test_interrupt_while_loading_is_not_swallowed(make_engine):
    class Interrupted(Plain):
        @hookimpl
        def aliases(self) -> list[str]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_engine({"interrupted": Interrupted()})


def test_plugin_whose_attributes_raise_leaves_the_rest_loaded(make_engine):
    class Hostile(Plain):
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(f"no {name}")

        def __dir__(self) -> list[str]:
            return ["download_impl", "ghost"]

    # pluggy >= 1.6 looks attributes up statically and loads it; older pluggy
    # raises from register(), which must leave only this source out.
    engine = make_engine({"hostile": Hostile(), "ok": Plain()})
    infos = {i.name: i for i in engine.sources(include_broken=True)}
    assert infos["ok"].status == "ok"
    assert infos["hostile"].error is None or "RuntimeError: no ghost" in infos["hostile"].error


# -- dispatch: each call reaches its own source -------------------------------------


class Own:
    """A source whose every per-download hook says which source it is; they name only some arguments."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.downloads: list[str] = []

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> str:
        self.downloads.append(job.target)
        (ctx.dest_dir / f"{self.name}.bin").write_bytes(b"")
        return f"{self.name}.bin"

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        return {"by": self.name}

    @hookimpl
    def translate_target(self, target: str) -> str:
        return f"{self.name}:{target}"


def test_each_hook_call_reaches_its_own_source_alone(make_engine):
    """Several sources implementing every hook: a download gets its own source's, with the arguments named."""
    sources = {name: Own(name) for name in ("alpha", "beta", "gamma")}
    engine = make_engine(sources)
    ids = {name: engine.submit(name, "t") for name in sources}
    records = dict(zip(ids, engine.wait(ids.values(), timeout=10), strict=True))
    for name, record in records.items():
        assert record.state is State.COMPLETED, record.error
        assert record.extra == {"by": name}
        assert record.file_path is not None and record.file_path.endswith(f"{name}.bin")
        assert sources[name].downloads == [f"{name}:t"]


class Wrapping:
    """A source whose download_impl is a pluggy wrapper: pluggy gives it its meaning (the inner result)."""

    @hookimpl(wrapper=True)
    def download_impl(self, job: Job, ctx: DownloadContext):  # type: ignore[no-untyped-def]
        inner = yield  # no other implementation: None
        (ctx.dest_dir / "wrapped.bin").write_bytes(b"")
        return inner or "wrapped.bin"


def test_a_wrapper_implementation_is_called_as_pluggy_calls_it(make_engine):
    engine = make_engine({"wrapping": Wrapping(), "plain": Plain()})
    [record] = engine.wait([engine.submit("wrapping", "t")], timeout=10)
    assert record.state is State.COMPLETED, record.error
    assert record.file_path is not None and record.file_path.endswith("wrapped.bin")
