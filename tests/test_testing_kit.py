"""The conformance kit fails bad plugins with the rule they broke, in one sentence."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import importlib_metadata
import pytest

from headwater import DownloadContext, Job, hookimpl
from headwater._errors import ContractError, InvalidTargetError, PluginError
from headwater.testing import RULES, EngineFactory, check_source


class Good:
    """A source that meets the contract: writes the target's name, reports progress, heeds cancel."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> Path | None:
        path = ctx.dest_dir / f"{job.target}.txt"
        for done in range(0, 11, 2):
            if ctx.cancelled.is_set():
                return None
            ctx.progress(done, 10)
        path.write_text("x" * 10)
        return path

    @hookimpl
    def aliases(self) -> list[str]:
        return ["good_dl"]

    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        return {"username": "good_dl", "track": job.target, "length": len(job.target)}


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


class StringAlias(Good):
    @hookimpl
    def aliases(self) -> str:
        return "gooddl"


class BadAlias(Good):
    @hookimpl
    def aliases(self) -> list[str]:
        return ["Good DL"]


class RaisingAliases(Good):
    @hookimpl
    def aliases(self) -> list[str]:
        raise RuntimeError("no configuration file")


class DictPolicy(Good):
    @hookimpl
    def rate_policy(self) -> dict[str, int]:
        return {"concurrency": 2}


class CoreField(Good):
    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        return {"state": "done"}


class ObjectField(Good):
    @hookimpl
    def record_fields(self, job: Job) -> dict[str, object]:
        return {"when": object()} if len(job.target) > 3 else {}


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


class WrongArgument:
    @hookimpl
    def download_impl(self, job: Job, context: DownloadContext) -> None:
        return None


class Misspelt(Good):
    @hookimpl
    def downlaod_impl(self, job: Job, ctx: DownloadContext) -> None:
        return None


class NoDownload:
    @hookimpl
    def aliases(self) -> list[str]:
        return []


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
    ("plugin", "rule", "words"),
    [
        (StringAlias(), "aliases", "aliases() returned 'gooddl', not an iterable of names"),
        (BadAlias(), "aliases", "invalid alias(es) 'Good DL': use lowercase"),
        (RaisingAliases(), "aliases", "aliases() raised RuntimeError: no configuration file"),
        (DictPolicy(), "rate-policy", "rate_policy() returned dict, not a RatePolicy or None"),
        (CoreField(), "record-fields", "returned 'state', a core record field; only 'username' may be set"),
        (ObjectField(), "record-fields", "returned 'when'=<object object"),
        (
            RefusesAll(),
            "record-fields",
            "raised InvalidTargetError: 'a-target' is never good for the downloadable",
        ),
        (WrongArgument(), "hooks", "pluggy refused its hooks: PluginValidationError"),
        (Misspelt(), "hooks", "implements unknown hook(s) downlaod_impl (headwater's hooks: aliases,"),
        (NoDownload(), "hooks", "does not implement download_impl"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else type(v).__name__,
)
def test_each_rule_names_itself(plugin: object, rule: str, words: str) -> None:
    error = broken(plugin)
    assert error.rule == rule
    assert words in str(error)


def test_the_kit_is_not_a_pytest11_entry_point() -> None:
    loaded = [ep for ep in importlib_metadata.entry_points(group="pytest11") if "headwater" in ep.value]
    assert loaded == []


def test_opting_in_gives_the_fixture_and_closes_its_engines(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["headwater.testing"]\n')
    pytester.makepyfile(
        """
        from headwater import hookimpl
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
    )
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
