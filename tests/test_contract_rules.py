"""One contract, one judge: the engine and the conformance kit give every plugin the same verdict.

Each plugin of the corpus below breaks one rule (or none). The engine judges
it where it meets it (loading the source, the submit, the end of the
download), the kit (``check_source``) where it checks it; both must reject
it, naming the same rule of ``headwater.testing.RULES``, or both accept it.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import attrs
import pytest
from child_env import install_plugin, isolated_env, run_headwater

from headwater import DownloadCancelled, DownloadContext, Engine, Job, PluginError, State, hookimpl, setting
from headwater._errors import ContractError
from headwater.testing import RULES, check_source

pytestmark = pytest.mark.timeout(120)

TARGET = "a-target"
TOKEN = "tok-5e3c1a"


class Good:
    """Meets every rule: writes one file in three reported steps, stops at a cancel, leaves nothing then."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        for done in (0, 5, 10):
            if ctx.cancelled.is_set():
                raise DownloadCancelled(f"stopped after {done} bytes")
            ctx.progress(done, 10)
        path = ctx.dest_dir / "file.txt"
        path.write_text("x" * 10)
        return path

    @hookimpl
    def aliases(self) -> list[str]:
        return ["good_dl"]

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        return {"username": "good_dl", "length": len(job.target)}


# -- hooks ------------------------------------------------------------------------


class OptionalAhead(Good):
    """Implements a hook only a newer headwater has, marked as optional: that is allowed."""

    @hookimpl(optionalhook=True)
    def search(self, query: str) -> list[str]:
        return []


class Misspelt(Good):
    @hookimpl
    def rate_polcy(self) -> None:
        return None


class NoDownload:
    @hookimpl
    def aliases(self) -> list[str]:
        return []


class WrongArgument:
    @hookimpl
    def download_impl(self, job: Job, context: DownloadContext) -> None:
        return None


# -- aliases ----------------------------------------------------------------------


class StringAlias(Good):
    @hookimpl
    def aliases(self) -> str:  # type: ignore[override]
        return "gooddl"


class BytesAlias(Good):
    @hookimpl
    def aliases(self) -> bytes:  # type: ignore[override]
        return b"gooddl"


class BadAlias(Good):
    @hookimpl
    def aliases(self) -> list[str]:
        return ["Good DL"]


class RaisingAliases(Good):
    @hookimpl
    def aliases(self) -> list[str]:
        raise RuntimeError("no configuration file")


class BreakingAliases(Good):
    """Returns a generator that fails halfway through."""

    @hookimpl
    def aliases(self) -> Iterator[str]:  # type: ignore[override]
        yield "good_dl"
        raise LookupError("the second alias is lost")


# -- settings ---------------------------------------------------------------------


@attrs.frozen
class TokenSettings:
    token: str = setting(help="the API token", secret=True)
    quality: str = setting(help="lossless or high", default="high")


class Tokened(Good):
    """A source with a required secret; given it, it meets every rule."""

    @hookimpl
    def settings_schema(self) -> type:
        return TokenSettings

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        if ctx.settings.token != TOKEN:
            raise PermissionError("the token did not arrive")
        return super().download_impl(job, ctx)


def schema_plugin(schema: object) -> Callable[[], object]:
    class Declares(Good):
        @hookimpl
        def settings_schema(self) -> object:
            return schema

    return Declares


@attrs.define
class NotFrozen:
    quality: str = "high"


@attrs.frozen
class ShownSecret:
    token: str = attrs.field(default="", metadata={"secret": True})


@attrs.frozen
class UnsupportedType:
    since: datetime.date = setting(default=datetime.date(2020, 1, 1))


@attrs.frozen
class WrongDefault:
    port: int = setting(help="the port", default="eighty")


class RaisingSchema(Good):
    @hookimpl
    def settings_schema(self) -> type:
        raise ImportError("no module named 'attrs_plus'")


# -- rate policy ------------------------------------------------------------------


class DictPolicy(Good):
    @hookimpl
    def rate_policy(self) -> dict[str, int]:
        return {"concurrency": 2}


class RaisingPolicy(Good):
    @hookimpl
    def rate_policy(self) -> None:
        raise OSError("no policy file")


# -- record fields ----------------------------------------------------------------


def fields_plugin(make: Callable[[Job], object]) -> Callable[[], object]:
    class Fields(Good):
        @hookimpl
        def record_fields(self, job: Job) -> object:  # type: ignore[override]
            return make(job)

    return Fields


def raise_runtime(job: Job) -> object:
    raise RuntimeError(f"cannot look {job.target!r} up")


# -- described fields -------------------------------------------------------------


def describing(display_name: object = None, **fields: object) -> Callable[[], object]:
    class Describes(Good):
        @hookimpl
        def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
            ctx.describe(display_name, **fields)  # type: ignore[arg-type]
            return super().download_impl(job, ctx)

    return Describes


# -- returned paths ---------------------------------------------------------------


def returning(make: Callable[[DownloadContext], object]) -> Callable[[], object]:
    class Returns(Good):
        @hookimpl
        def download_impl(self, job: Job, ctx: DownloadContext) -> object:
            super().download_impl(job, ctx)
            return make(ctx)

    return Returns


OUTSIDE = Path(__file__).resolve()  # a regular file, outside every destination folder


@attrs.frozen
class Case:
    """One plugin of the corpus: how to make it, under which name, with which settings, and the rule."""

    make: Callable[[], object]
    rule: str | None  # None: it meets the contract
    name: str = "bad"
    settings: Mapping[str, object] | None = None


CORPUS: dict[str, Case] = {
    "good": Case(Good, None),
    "optional-unknown-hook": Case(OptionalAhead, None),
    "tokened": Case(Tokened, None, settings={"token": TOKEN}),
    "invalid-name": Case(Good, "name", name="Bad Name"),
    "misspelt-hook": Case(Misspelt, "hooks"),
    "no-download-impl": Case(NoDownload, "hooks"),
    "wrong-argument": Case(WrongArgument, "hooks"),
    "alias-string": Case(StringAlias, "aliases"),
    "alias-bytes": Case(BytesAlias, "aliases"),
    "alias-invalid": Case(BadAlias, "aliases"),
    "aliases-raise": Case(RaisingAliases, "aliases"),
    "aliases-break-halfway": Case(BreakingAliases, "aliases"),
    "schema-not-attrs": Case(schema_plugin({"token": str}), "settings"),
    "schema-not-frozen": Case(schema_plugin(NotFrozen), "settings"),
    "schema-secret-shown": Case(schema_plugin(ShownSecret), "settings"),
    "schema-unsupported-type": Case(schema_plugin(UnsupportedType), "settings"),
    "schema-wrong-default": Case(schema_plugin(WrongDefault), "settings"),
    "schema-raises": Case(RaisingSchema, "settings"),
    "policy-dict": Case(DictPolicy, "rate-policy"),
    "policy-raises": Case(RaisingPolicy, "rate-policy"),
    "fields-list": Case(fields_plugin(lambda job: ["a"]), "record-fields"),
    "fields-int-key": Case(fields_plugin(lambda job: {1: "x"}), "record-fields"),
    "fields-core": Case(fields_plugin(lambda job: {"state": "done"}), "record-fields"),
    "fields-object": Case(fields_plugin(lambda job: {"when": object()}), "record-fields"),
    "fields-empty-username": Case(fields_plugin(lambda job: {"username": ""}), "record-fields"),
    "fields-raise": Case(fields_plugin(raise_runtime), "record-fields"),
    "describe-core": Case(describing(state="done"), "described-fields"),
    "describe-bytes": Case(describing(cover=b"\x89PNG"), "described-fields"),
    "describe-empty-name": Case(describing(""), "described-fields"),
    "describe-name-not-str": Case(describing(42), "described-fields"),
    "path-outside": Case(returning(lambda ctx: OUTSIDE), "download-path"),
    "path-missing": Case(returning(lambda ctx: "missing.bin"), "download-path"),
    "path-not-a-path": Case(returning(lambda ctx: 42), "download-path"),
    "path-a-folder": Case(returning(lambda ctx: ctx.dest_dir), "download-path"),
}

#: Rules only the kit can judge: it knows which targets must download, and watches each download.
KIT_ONLY = {"download", "progress", "cancel"}


def engine_verdict(case: Case, dest: Path, caplog: pytest.LogCaptureFixture) -> tuple[bool, str | None]:
    """(accepted, rule) as the engine judges: loading the source, submitting, running one download."""
    caplog.set_level(logging.DEBUG, logger=f"headwater.source.{case.name}")
    settings = None if case.settings is None else {case.name: case.settings}
    with Engine(dest, plugins={case.name: case.make()}, settings=settings) as engine:
        [info] = [i for i in engine.sources(include_broken=True) if i.name == case.name]
        if info.status == "broken":
            return False, info.rule
        assert info.status == "ok", info
        try:
            rid = engine.submit(case.name, TARGET)
        except PluginError as exc:
            return False, exc.rule
        record = engine.wait([rid], timeout=30)[0]
    if record.state is State.COMPLETED:
        return True, None
    assert record.state is State.FAILED, record
    [failure] = [r.exc_info[1] for r in caplog.records if r.exc_info and r.name.endswith(f".{case.name}")]
    return False, getattr(failure, "rule", None)


def kit_verdict(case: Case) -> tuple[bool, str | None]:
    """(accepted, rule) as the conformance kit judges."""
    try:
        check_source(case.make(), [TARGET], name=case.name, settings=case.settings, max_examples=5)
    except ContractError as exc:
        return False, exc.rule
    return True, None


@pytest.mark.parametrize("case", CORPUS.values(), ids=CORPUS.keys())
def test_the_engine_and_the_kit_give_the_same_verdict(
    case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = (case.rule is None, case.rule)
    assert engine_verdict(case, tmp_path / "dest", caplog) == expected
    assert kit_verdict(case) == expected


def test_the_corpus_covers_every_rule_both_judge() -> None:
    assert case_rules() | KIT_ONLY == set(RULES)
    assert not case_rules() & KIT_ONLY


def case_rules() -> set[str]:
    return {c.rule for c in CORPUS.values() if c.rule is not None}


def test_the_rule_a_broken_installed_source_broke_is_in_sources_json(tmp_path: Path) -> None:
    module = (
        "from headwater import hookimpl\n\n@hookimpl\ndef download_impl(job, ctx):\n    return None\n\n"
        "@hookimpl\ndef aliases():\n    return 'oops'\n"
    )
    plugins = install_plugin(tmp_path / "plugins", "hw_stringy", module, "stringy", "stringy")
    env = {**isolated_env(tmp_path / "home"), "PYTHONPATH": str(plugins), "HEADWATER_LOAD_PLUGINS": "stringy"}
    done = run_headwater(env, "sources", "--json")
    assert done.returncode == 0, done.stderr
    [info] = [i for i in json.loads(done.stdout) if i["name"] == "stringy"]
    assert (info["status"], info["rule"]) == ("broken", "aliases")


@attrs.frozen
class SecretWrongDefault:
    pin: int = setting(help="the account's PIN", secret=True, default="pin-7731")


def test_a_wrong_default_is_named_and_a_secret_one_never_quoted(tmp_path: Path) -> None:
    plugins = {"wrong": schema_plugin(WrongDefault)(), "secret": schema_plugin(SecretWrongDefault)()}
    with Engine(tmp_path, plugins=plugins) as engine:
        errors = {i.name: i.error for i in engine.sources(include_broken=True)}
    assert errors["wrong"].endswith("field 'port': its default 'eighty' is not a valid int")
    assert errors["secret"].endswith("field 'pin': its default is not a valid int")
    assert "pin-7731" not in errors["secret"]
