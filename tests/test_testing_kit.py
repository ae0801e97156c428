"""The conformance kit fails bad plugins with the rule they broke, in one sentence."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import importlib_metadata
import pytest
from localhttp import Resource, serving
from test_contract_rules import CORPUS, Good

from headwater import DownloadCancelled, DownloadContext, Job, RatePolicy, hookimpl, setting
from headwater._errors import ContractError, InvalidTargetError, PluginError
from headwater.testing import (
    RULES,
    SLOW_CALLS,
    EngineFactory,
    SourceContract,
    check_record_fields,
    check_source,
)


class Outside(Good):
    def __init__(self, outside: Path) -> None:
        self.outside = outside

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        self.outside.write_text("stray")
        return self.outside


class Backwards(Good):
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        ctx.progress(5, 10)
        ctx.progress(3, 10)
        path = ctx.dest_dir / "f"
        path.write_text("x")
        return path


class Overshoot(Good):
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        ctx.progress(12, 10)
        path = ctx.dest_dir / "f"
        path.write_text("x")
        return path


class IgnoresCancel(Good):
    """Reports progress for a while and never looks at ctx.cancelled."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        for done in range(100):
            ctx.progress(done, 100)
            if self.stop.wait(0.05):
                break
        path = ctx.dest_dir / "f"
        path.write_text("x")
        return path


class Declines(Good):
    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> None:
        return None


class RefusesStrange(Good):
    """Refuses at submit every target that is not lowercase letters and dashes."""

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        if not job.target or job.target.strip("abcdefghijklmnopqrstuvwxyz-"):
            raise InvalidTargetError(f"{job.target!r} is not a name")
        return {}


class RefusesAll(Good):
    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        raise InvalidTargetError(f"{job.target!r} is never good")


@pytest.fixture
def ignores_cancel() -> Iterator[IgnoresCancel]:
    plugin = IgnoresCancel()
    yield plugin
    plugin.stop.set()  # end the download thread the check left running


def broken(plugin: object, **kwargs: object) -> ContractError:
    with pytest.raises(ContractError) as caught:
        check_source(plugin, ["a-target"], name="bad", max_examples=10, **kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, AssertionError)
    assert error.rule in RULES
    assert str(error).count(". ") == 0 and str(error).endswith("."), f"not one sentence: {error}"
    return error


def test_a_good_plugin_passes() -> None:
    check_source(Good(), ["a", "b-c"], name="good", max_examples=10)


def test_record_fields_may_refuse_strange_targets() -> None:
    """InvalidTargetError from record_fields refuses a target at submit, which the contract allows."""
    check_source(RefusesStrange(), ["a", "b-c"], name="strict", max_examples=50)


def test_a_path_outside_dest_dir(tmp_path: Path) -> None:
    error = broken(Outside(tmp_path / "stray.txt"))
    assert error.rule == "download-path"
    assert str(error).startswith(
        "source 'bad' broke the 'download-path' rule: "
        f"download_impl returned {str(tmp_path / 'stray.txt')!r}, which is outside the destination folder"
    )
    assert str(error).endswith("(target 'a-target').")


def test_progress_going_backwards() -> None:
    error = broken(Backwards())
    assert str(error) == (
        "source 'bad' broke the 'progress' rule: "
        "progress for target 'a-target' went backwards from 5 to 3 bytes."
    )


def test_progress_beyond_the_total() -> None:
    error = broken(Overshoot())
    assert (
        str(error)
        == "source 'bad' broke the 'progress' rule: progress for target 'a-target' reported 12 of 10 bytes."
    )


def test_ignoring_cancel(ignores_cancel: IgnoresCancel) -> None:
    error = broken(ignores_cancel, cancel_within=0.3)
    assert error.rule == "cancel"
    assert "was still running 0.3 s after ctx.cancelled was set" in str(error)


class FastIgnoresCancel:
    """Copies 40 chunks at full speed and never looks at ctx.cancelled."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
        path = ctx.dest_dir / "fast.bin"
        with path.open("wb") as out:
            for i in range(1, 41):
                out.write(b"x" * 10)
                ctx.progress(10 * i, 400)
        return path


def test_ignoring_cancel_while_finishing_fast() -> None:
    error = broken(FastIgnoresCancel())
    assert error.rule == "cancel"
    assert "reported progress" in str(error) and "it must stop within one chunk" in str(error)


def test_declining_a_downloadable_target() -> None:
    error = broken(Declines())
    assert (
        str(error)
        == "source 'bad' broke the 'download' rule: download_impl returned None for target 'a-target'."
    )


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("alias-string", "aliases() returned 'gooddl', not an iterable of names"),
        ("alias-invalid", "invalid alias(es) 'Good DL': use lowercase"),
        ("aliases-raise", "aliases() raised RuntimeError: no configuration file"),
        ("schema-not-frozen", "settings class NotFrozen must be frozen (@attrs.frozen)"),
        ("policy-dict", "rate_policy() returned dict, not a RatePolicy or None"),
        ("fields-core", "returned 'state', a core record field; only 'username' may be set"),
        ("fields-object", "returned 'when'=<object object"),
        ("describe-core", "ctx.describe returned 'state', a core record field"),
        ("wrong-argument", "pluggy refused its hooks: PluginValidationError"),
        ("misspelt-hook", "implements unknown hook(s) rate_polcy (headwater's hooks: aliases,"),
        ("no-download-impl", "does not implement download_impl"),
    ],
)
def test_each_rule_names_itself(case: str, words: str) -> None:
    """The corpus of tests/test_contract_rules.py, each broken rule in one sentence."""
    error = broken(CORPUS[case].make())
    assert error.rule == CORPUS[case].rule
    assert words in str(error)


def test_refusing_a_downloadable_target_breaks_the_record_fields_rule() -> None:
    error = broken(RefusesAll())
    assert error.rule == "record-fields"
    assert "raised InvalidTargetError: 'a-target' is never good for the downloadable" in str(error)


def test_the_kit_is_not_a_pytest11_entry_point() -> None:
    loaded = [ep for ep in importlib_metadata.entry_points(group="pytest11") if "headwater" in ep.value]
    assert loaded == []


#: A plugin's test module that opted in to the kit: its fixture's engine, and a SourceContract.
OPTED_IN = """from headwater import hookimpl
from headwater.testing import SourceContract

class Echo:
    @hookimpl
    def download_impl(self, job, ctx):
        path = ctx.dest_dir / "echo.txt"
        path.write_text(job.target)
        ctx.progress(len(job.target), len(job.target))
        return path

built = []

def test_engine(headwater_engine):
    engine = headwater_engine(plugins={"echo": Echo()})
    assert [s.name for s in engine.sources()] == ["echo"]
    assert engine.wait([engine.submit("echo", "hi")], timeout=10)[0].state.name == "COMPLETED"
    built.append(engine)

def test_it_was_closed():
    assert built and built[0]._closed

class TestEcho(SourceContract):
    plugin = Echo()
    targets = ["hello"]
"""


def test_opting_in_gives_the_fixture_and_closes_its_engines(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["headwater.testing"]\n')
    pytester.makepyfile(OPTED_IN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


def test_without_opting_in_there_is_no_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_engine(headwater_engine):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'headwater_engine' not found*"])


def test_the_engine_fixture_refuses_a_source_that_is_not_installed(headwater_engine: EngineFactory) -> None:
    with pytest.raises(PluginError, match="installed source 'no-such-source' cannot be used: not installed"):
        headwater_engine("no-such-source")


# -- record_fields: no network, quick ---------------------------------------------------


class Phones(Good):
    """Looks the target up on a server at submit, which record_fields may not do."""

    def __init__(self, url: str, swallow: bool = False) -> None:
        self.url = url
        self.swallow = swallow

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        try:
            with urllib.request.urlopen(f"{self.url}?q={len(job.target)}", timeout=5) as response:
                return {"title": response.read().decode()}
        except OSError:
            if not self.swallow:
                raise
            return {}


@pytest.fixture
def title_server() -> Iterator[str]:
    with serving() as server:
        yield server.add("/title", Resource(b"a title"))


@pytest.mark.parametrize("swallow", [False, True], ids=["raises", "swallows-the-error"])
def test_record_fields_may_not_use_the_network(title_server: str, swallow: bool) -> None:
    error = broken(Phones(title_server, swallow))
    assert error.rule == "record-fields"
    assert "used the network (socket." in str(error) and "may do no I/O" in str(error)


def test_the_network_guard_leaves_other_threads_and_later_calls_alone(title_server: str) -> None:
    """The server the guarded call could not reach answers the download, and the test, afterwards."""

    class Fetches(Good):
        @hookimpl
        def download_impl(self, job: Job, ctx: DownloadContext) -> Path:
            path = ctx.dest_dir / "title.txt"
            with urllib.request.urlopen(title_server, timeout=5) as response:
                path.write_bytes(response.read())
            ctx.progress(7, 7)
            return path

    with pytest.raises(ContractError):
        check_source(Phones(title_server), ["a"], name="phones", max_examples=5)
    check_source(Fetches(), ["a"], name="fetches", max_examples=5)
    with urllib.request.urlopen(title_server, timeout=5) as response:
        assert response.read() == b"a title"


class Slow(Good):
    """record_fields takes ``seconds`` on each of its first ``slow_calls`` calls."""

    def __init__(self, seconds: float, slow_calls: int) -> None:
        self.seconds = seconds
        self.slow_calls = slow_calls

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        if self.slow_calls > 0:
            self.slow_calls -= 1
            time.sleep(self.seconds)
        return {}


def test_record_fields_must_return_quickly() -> None:
    with pytest.raises(ContractError) as caught:
        check_record_fields(Slow(0.15, 1000), "slow", ["a"], max_examples=5, within=0.05)
    assert caught.value.rule == "record-fields"
    assert f"{SLOW_CALLS} calls in a row" in str(caught.value)
    assert "must return within 0.05 s" in str(caught.value)


def test_one_slow_call_is_taken_for_the_machine_not_the_source() -> None:
    check_record_fields(Slow(0.15, SLOW_CALLS - 1), "slow", ["a"], max_examples=5, within=0.05)


# -- cancel: nothing left behind --------------------------------------------------------


class Leaves(Good):
    """Writes a .part; at a cancel it stops, leaving it (or, with ``lands``, the landed file unreturned)."""

    def __init__(self, lands: bool = False, returns: bool = False) -> None:
        self.lands = lands
        self.returns = returns

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        part = ctx.dest_dir / "song.flac.part"
        with part.open("wb") as out:
            for done in (0, 5, 10):
                if ctx.cancelled.is_set():
                    break
                ctx.progress(done, 10)
                out.write(b"x" * 5)
        if ctx.cancelled.is_set() and not self.lands:
            raise DownloadCancelled("stopped")
        final = part.rename(ctx.dest_dir / "song.flac")
        if ctx.cancelled.is_set() and not self.returns:
            raise DownloadCancelled("stopped, after landing")
        return final


@pytest.mark.parametrize(
    ("plugin", "left"), [(Leaves(), "'song.flac.part'"), (Leaves(lands=True), "'song.flac'")]
)
def test_a_cancelled_download_leaves_nothing_behind(plugin: Leaves, left: str) -> None:
    error = broken(plugin)
    assert error.rule == "cancel"
    assert f"left {left} in ctx.dest_dir when it stopped on ctx.cancelled" in str(error)


def test_a_file_returned_after_a_cancel_may_stay_the_engine_deletes_it() -> None:
    check_source(Leaves(lands=True, returns=True), ["a"], name="lands", max_examples=10)


# -- settings ---------------------------------------------------------------------------

TOKEN = "tok-5e3c1a"


def positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be above 0")


@attrs.frozen
class ServiceSettings:
    token: str = setting(help="the API token", secret=True)
    port: int = setting(help="the API's port", default=443, validator=positive)


class Service(Good):
    """Needs its token in every hook that takes settings, and says so when it is not there."""

    def __init__(self, schema: type = ServiceSettings) -> None:
        self.schema = schema

    @hookimpl
    def settings_schema(self) -> type:
        return self.schema

    @hookimpl
    def rate_policy(self, settings: ServiceSettings | None) -> RatePolicy:
        return RatePolicy(concurrency=1 if settings is None else 2)

    @hookimpl
    def record_fields(self, job: Job, settings: ServiceSettings) -> dict[str, object]:
        if settings.token != TOKEN:
            raise PermissionError("record_fields got no token")
        return {"port": settings.port}

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        if ctx.settings.token != TOKEN or ctx.settings.port != 8443:
            raise PermissionError(f"download_impl got {ctx.settings!r}")
        return super().download_impl(job, ctx)


def test_the_settings_given_reach_every_hook_as_the_engine_builds_them() -> None:
    check_source(Service(), ["a"], name="service", settings={"token": TOKEN, "port": "8443"}, max_examples=5)


def test_a_source_with_a_required_setting_needs_settings_to_be_checked() -> None:
    with pytest.raises(ValueError, match=r"source 'service' needs configuration \(token: required"):
        check_source(Service(), ["a"], name="service", max_examples=5)


def test_settings_the_class_refuses_break_the_settings_rule() -> None:
    error = broken(Service(), settings={"token": TOKEN, "port": "-1"})
    assert error.rule == "settings"
    assert "its settings do not build from the values given: rejected by the settings class" in str(error)
    assert "port must be above 0" in str(error)


@attrs.frozen
class RefusesItsDefault:
    port: int = setting(help="the API's port", default=0, validator=positive)


def test_a_settings_class_refusing_its_own_default_breaks_the_settings_rule() -> None:
    error = broken(Service(RefusesItsDefault))
    assert error.rule == "settings"
    assert "its settings do not build from its defaults: rejected by the settings class" in str(error)
    assert TOKEN not in str(error)


def test_source_contract_takes_settings(tmp_path: Path) -> None:
    class TestService(SourceContract):
        plugin = Service()
        name = "service"
        targets = ["a"]
        settings = {"token": TOKEN, "port": 8443}
        max_examples = 5

    contract = TestService()
    contract.test_settings()
    contract.test_rate_policy()
    contract.test_record_fields(tmp_path)
    contract.test_download_and_cancel(tmp_path)
