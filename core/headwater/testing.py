"""The conformance kit: the contract every source must meet, checked from a plugin's own tests.

Opt in from the ``conftest.py`` at the root of your tests (the kit is never
loaded into anyone's pytest on its own)::

    pytest_plugins = ["headwater.testing"]

That gives the :func:`headwater_engine` fixture. :func:`check_source` runs
every rule of :data:`RULES` against a plugin, and :class:`SourceContract` runs
them as one test each when subclassed. A broken rule raises
:class:`~headwater.ContractError` whose message is one sentence naming
the source, the rule and what the plugin did.

Needs the ``testing`` extra (pytest and Hypothesis):
``pip install 'headwater[testing]'``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import pluggy
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from headwater import hookspecs
from headwater._context import DownloadContext
from headwater._discovery import LOAD_ENV, discover, one_line
from headwater._engine import Engine
from headwater._errors import ContractError, InvalidTargetError, PluginError, UnsafePathError
from headwater._files import landed_file
from headwater._policy import RatePolicy
from headwater._records import CORE_FIELDS, Job
from headwater._settings import build_settings, check_settings_class
from headwater._sources import is_valid_name

__all__ = [
    "RULES",
    "EngineFactory",
    "SourceContract",
    "check_aliases",
    "check_cancel",
    "check_download",
    "check_hooks",
    "check_rate_policy",
    "check_record_fields",
    "check_source",
    "headwater_engine",
]

#: Every rule of the contract, by the name a :class:`ContractError` gives.
RULES: Mapping[str, str] = {
    "hooks": "the plugin registers with pluggy, implements download_impl and no hook headwater lacks",
    "aliases": "aliases() returns an iterable of valid names (lowercase [a-z0-9][a-z0-9_-]*), not a string",
    "rate-policy": "rate_policy() returns a RatePolicy or None",
    "record-fields": (
        "record_fields(job) raises nothing but InvalidTargetError, even for a strange target, and "
        "that for none of the downloadable targets; it returns None or a mapping of str keys to plain "
        "values (str, int, float, bool, None) that sets no core field but a non-empty 'username'"
    ),
    "download": "download_impl returns a path for every target the test names as downloadable",
    "download-path": "download_impl returns the path of a regular file inside ctx.dest_dir",
    "progress": "progress reports never go backwards and never exceed the total",
    "cancel": "download_impl returns within the bound once ctx.cancelled is set",
}

_PLAIN = (str, int, float, bool, type(None))
_CHECK_SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


def _manager(plugin: object, name: str) -> pluggy.PluginManager:
    """A plugin manager holding only ``plugin``; raises ContractError under rule "hooks"."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ContractError(name, "hooks", f"pluggy refused it ({one_line(exc)}).") from exc
    unknown = sorted(c.name for c in pm.get_hookcallers(plugin) or [] if c.spec is None)
    if unknown:
        raise ContractError(
            name, "hooks", f"it implements {', '.join(unknown)}, which headwater has no hook for."
        )
    if not pm.hook.download_impl.get_hookimpls():
        raise ContractError(name, "hooks", "it does not implement download_impl, the one required hook.")
    return pm


def _default_settings(pm: pluggy.PluginManager, name: str) -> object:
    """The settings the checks hand the hooks: built from the class's defaults alone.

    None when the source declares no settings class, or its defaults leave
    it needing configuration (a required setting), or the hook raises or
    returns an unusable class.
    """
    try:
        schema = pm.hook.settings_schema()
        return build_settings((name,), check_settings_class(schema)).values if schema is not None else None
    except Exception:  # a plugin's hook can raise anything; judging it is not these checks' rule
        return None


def check_hooks(plugin: object, name: str = "source") -> None:
    """Rule "hooks": ``plugin`` registers cleanly and implements ``download_impl``."""
    _manager(plugin, name)


def check_aliases(plugin: object, name: str = "source") -> None:
    """Rule "aliases": every alias is a valid source name."""
    hook = _manager(plugin, name).hook.aliases
    try:
        results = hook()
    except Exception as exc:  # a plugin's hook can raise anything
        raise ContractError(name, "aliases", f"aliases() raised {one_line(exc)}.") from exc
    for result in results:
        if result is None:
            continue
        if isinstance(result, str) or not isinstance(result, Iterable):
            raise ContractError(name, "aliases", f"aliases() returned {result!r}, not an iterable of names.")
        for alias in result:
            if not is_valid_name(alias):
                raise ContractError(
                    name, "aliases", f"alias {alias!r} is not a valid name (lowercase [a-z0-9][a-z0-9_-]*)."
                )


def check_rate_policy(plugin: object, name: str = "source") -> None:
    """Rule "rate-policy": ``rate_policy()`` returns a RatePolicy or None."""
    try:
        pm = _manager(plugin, name)
        policy = pm.hook.rate_policy(settings=_default_settings(pm, name))
    except Exception as exc:  # a plugin's hook can raise anything
        raise ContractError(name, "rate-policy", f"rate_policy() raised {one_line(exc)}.") from exc
    if policy is not None and not isinstance(policy, RatePolicy):
        raise ContractError(
            name, "rate-policy", f"rate_policy() returned {type(policy).__name__}, not a RatePolicy or None."
        )


def _jobs(name: str, targets: Sequence[str]) -> st.SearchStrategy[Job]:
    """Jobs as the engine makes them: a hex id, ``name``, a target, maybe a display name."""
    given_targets = st.sampled_from(list(targets)) if targets else st.nothing()
    return st.builds(
        Job,
        id=st.binary(min_size=16, max_size=16).map(bytes.hex),
        source=st.just(name),
        target=given_targets | st.text(min_size=1),
        display_name=st.none() | st.text(),
        attempt=st.integers(1, 5),
    )


def _check_fields(name: str, job: Job, results: list[object]) -> None:
    """Raise ContractError if any of ``results`` (from record_fields) breaks rule "record-fields"."""
    for result in results:
        if result is None:
            continue
        if not isinstance(result, Mapping):
            raise ContractError(
                name,
                "record-fields",
                f"record_fields returned {type(result).__name__}, not a mapping or None.",
            )
        for key, value in result.items():
            if not isinstance(key, str):
                raise ContractError(
                    name, "record-fields", f"record_fields returned the key {key!r}, not a str."
                )
            if not isinstance(value, _PLAIN):
                raise ContractError(
                    name,
                    "record-fields",
                    f"record_fields returned {key}={value!r} for target {job.target!r}, "
                    "not a str, int, float, bool or None.",
                )
            if key == "username" and (not isinstance(value, str) or not value):
                raise ContractError(
                    name, "record-fields", f"record_fields returned username={value!r}, not a non-empty str."
                )
            if key != "username" and key in CORE_FIELDS:
                raise ContractError(
                    name,
                    "record-fields",
                    f"record_fields returned {key!r}, a core record field it may not set.",
                )


def check_record_fields(
    plugin: object, name: str = "source", targets: Sequence[str] = (), max_examples: int = 50
) -> None:
    """Rule "record-fields", for jobs Hypothesis makes from ``targets`` and arbitrary text."""
    pm = _manager(plugin, name)
    hook = pm.hook.record_fields
    if not hook.get_hookimpls():
        return
    values = _default_settings(pm, name)

    @settings(_CHECK_SETTINGS, max_examples=max_examples)
    @given(job=_jobs(name, targets))
    def fields_are_plain(job: Job) -> None:
        try:
            results = hook(job=job, settings=values)
        except InvalidTargetError as exc:
            if job.target in targets:
                raise ContractError(
                    name,
                    "record-fields",
                    f"record_fields raised {one_line(exc)} for the downloadable target {job.target!r}.",
                ) from exc
            return  # a target refused at submit, as the hook may do
        except Exception as exc:  # a plugin's hook can raise anything
            raise ContractError(
                name, "record-fields", f"record_fields raised {one_line(exc)} for target {job.target!r}."
            ) from exc
        _check_fields(name, job, results)

    fields_are_plain()


class _WatchedContext(DownloadContext):
    """A DownloadContext that keeps every progress report and can set ``cancelled`` at the n-th."""

    def __init__(
        self, dest_dir: Path, logger: logging.Logger, cancel_at: int | None, settings: object
    ) -> None:
        super().__init__(dest_dir, logger, settings=settings)
        self.reports: list[tuple[int, int | None]] = []
        self.cancel_at = cancel_at
        self.cancelled_at: float | None = None  # monotonic time ``cancelled`` was set
        self.reports_after_cancel = 0
        if cancel_at == 0:
            self.cancel()

    def cancel(self) -> None:
        self.cancelled_at = time.monotonic()
        self.cancelled.set()

    def progress(self, transferred: int, total: int | None = None) -> None:
        super().progress(transferred, total)
        if self.cancelled_at is not None:
            self.reports_after_cancel += 1
        self.reports.append((transferred, total))
        if self.cancel_at is not None and len(self.reports) == self.cancel_at:
            self.cancel()


class _Outcome:
    """What one call of download_impl did, filled in by the thread that made it."""

    def __init__(self) -> None:
        self.returned: str | os.PathLike[str] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def _download(
    pm: pluggy.PluginManager, name: str, target: str, dest_dir: Path, cancel_at: int | None
) -> tuple[_WatchedContext, _Outcome, threading.Thread]:
    """Start download_impl of ``target`` on its own thread, as a worker of the engine would."""
    logger = logging.getLogger(f"headwater.source.{name}")
    ctx = _WatchedContext(dest_dir, logger, cancel_at, _default_settings(pm, name))
    outcome = _Outcome()
    job = Job(os.urandom(16).hex(), name, target)

    def run() -> None:
        try:
            outcome.returned = pm.hook.download_impl(job=job, ctx=ctx)
        except BaseException as exc:  # what the engine's boundary catches, the kit reports
            outcome.error = exc
        finally:
            outcome.done.set()

    thread = threading.Thread(target=run, name=f"contract-{name}", daemon=True)
    thread.start()
    return ctx, outcome, thread


def _check_path(name: str, target: str, dest_dir: Path, returned: str | os.PathLike[str]) -> Path:
    """Rule "download-path" for what download_impl returned; the resolved file."""
    try:
        return landed_file(dest_dir, returned)[0]
    except UnsafePathError:
        where = str(dest_dir)
        detail = f"it returned {os.fspath(returned)!r} for target {target!r}, outside ctx.dest_dir {where!r}."
    except FileNotFoundError:
        detail = f"it returned {os.fspath(returned)!r} for target {target!r}, where no regular file is."
    except TypeError:
        detail = f"it returned {returned!r} for target {target!r}, which is not a str or os.PathLike path."
    raise ContractError(name, "download-path", detail)


def _check_progress(name: str, target: str, reports: list[tuple[int, int | None]]) -> None:
    """Rule "progress" over the reports of one download, in order."""
    previous = 0
    for transferred, total in reports:
        if transferred < previous:
            raise ContractError(
                name,
                "progress",
                f"progress for target {target!r} went backwards from {previous} to {transferred} bytes.",
            )
        if total is not None and transferred > total:
            raise ContractError(
                name, "progress", f"progress for target {target!r} reported {transferred} of {total} bytes."
            )
        previous = transferred


def check_download(
    plugin: object, targets: Sequence[str], name: str = "source", timeout: float = 60.0
) -> int:
    """Rules "download", "download-path" and "progress": download each target once.

    Each download runs on its own thread into a fresh temporary folder.
    ``timeout`` bounds one download. Returns the most progress reports one
    download made (what :func:`check_cancel` draws its cancel points from).
    """
    if not targets:
        raise ValueError("check_download needs at least one target the source can download")
    pm = _manager(plugin, name)
    most = 0
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="headwater-contract-") as tmp:
            dest_dir = Path(tmp).resolve()
            ctx, outcome, thread = _download(pm, name, target, dest_dir, None)
            if not outcome.done.wait(timeout):
                raise ContractError(name, "download", f"download_impl of {target!r} ran past {timeout:g} s.")
            thread.join()
            if outcome.error is not None:
                raise ContractError(
                    name, "download", f"download_impl raised {one_line(outcome.error)} for target {target!r}."
                ) from outcome.error
            if outcome.returned is None:
                raise ContractError(name, "download", f"download_impl returned None for target {target!r}.")
            _check_path(name, target, dest_dir, outcome.returned)
            _check_progress(name, target, ctx.reports)
            most = max(most, len(ctx.reports))
    return most


#: Progress reports a download may still make once ``ctx.cancelled`` is set:
#: the chunk in flight, and one final report.
REPORTS_AFTER_CANCEL = 2


def check_cancel(
    plugin: object,
    targets: Sequence[str],
    name: str = "source",
    within: float = 2.0,
    reports: int = 1,
    max_examples: int = 10,
    timeout: float = 60.0,
) -> None:
    """Rule "cancel": set ``ctx.cancelled`` before the start or at a progress report; it must stop.

    Stopping means returning within ``within`` seconds of the cancel, and
    reporting progress at most :data:`REPORTS_AFTER_CANCEL` more times (so a
    fast download that ignores the cancel is caught too, not only a slow one).

    Hypothesis picks the target and the report (0 = before download_impl
    starts, up to ``reports``, the most a download made in
    :func:`check_download`); the call must return within ``within`` seconds
    of the cancel. What it returns or raises then is free (the engine deletes
    a file landed after a cancel), except a path outside ``ctx.dest_dir``.
    A download that never gets to the chosen report has ``timeout`` seconds
    to end.
    """
    if not targets:
        raise ValueError("check_cancel needs at least one target the source can download")
    pm = _manager(plugin, name)

    @settings(_CHECK_SETTINGS, max_examples=max_examples)
    @given(target=st.sampled_from(list(targets)), cancel_at=st.integers(0, max(reports, 0)))
    @example(target=targets[0], cancel_at=0)
    def stops_when_cancelled(target: str, cancel_at: int) -> None:
        with tempfile.TemporaryDirectory(prefix="headwater-contract-") as tmp:
            dest_dir = Path(tmp).resolve()
            ctx, outcome, thread = _download(pm, name, target, dest_dir, cancel_at)
            deadline = time.monotonic() + timeout
            while not outcome.done.wait(0.01):
                if time.monotonic() > deadline:
                    raise ContractError(
                        name, "download", f"download_impl of {target!r} ran past {timeout:g} s."
                    )
                if ctx.cancelled_at is not None and time.monotonic() - ctx.cancelled_at > within:
                    raise ContractError(
                        name,
                        "cancel",
                        f"download_impl of {target!r} was still running {within:g} s after "
                        f"ctx.cancelled was set (at progress report {cancel_at}).",
                    )
            thread.join()
            if ctx.reports_after_cancel > REPORTS_AFTER_CANCEL:
                raise ContractError(
                    name,
                    "cancel",
                    f"download_impl of {target!r} reported progress {ctx.reports_after_cancel} times "
                    f"after ctx.cancelled was set (at progress report {cancel_at}); it must stop "
                    "within one chunk.",
                )
            if outcome.returned is not None and outcome.error is None:
                _check_path(name, target, dest_dir, outcome.returned)

    stops_when_cancelled()


def check_source(
    plugin: object,
    targets: Sequence[str],
    *,
    name: str = "source",
    cancel_within: float = 2.0,
    max_examples: int = 20,
) -> None:
    """Check ``plugin`` against every rule of :data:`RULES`; raise ContractError at the first broken one.

    Args:
        plugin: the source object (a module or an object with hookimpls).
        targets: targets the source can download in the test's environment
            (local files, URLs of a server on 127.0.0.1); at least one.
        name: the name to register the plugin under (used in messages).
        cancel_within: seconds download_impl may take to return once
            ``ctx.cancelled`` is set.
        max_examples: Hypothesis examples for each generated check.

    Runs on the calling thread, downloads on threads of their own. Call it
    from a plain test, not from inside a Hypothesis ``@given`` test.
    """
    check_hooks(plugin, name)
    check_aliases(plugin, name)
    check_rate_policy(plugin, name)
    check_record_fields(plugin, name, targets, max_examples)
    most = check_download(plugin, targets, name)
    check_cancel(plugin, targets, name, cancel_within, most, max_examples)


class SourceContract:
    """Subclass as ``TestSomething`` and set ``plugin`` and ``targets``: one test per rule.

    ``targets`` are targets the source can download in the test environment.
    When they need files or a server made for each test, override
    :meth:`make_targets` (it gets pytest's ``tmp_path``) instead.
    """

    plugin: ClassVar[object]
    targets: ClassVar[Sequence[str]] = ()
    name: ClassVar[str] = "source"
    cancel_within: ClassVar[float] = 2.0
    max_examples: ClassVar[int] = 20

    def make_targets(self, tmp_path: Path) -> Sequence[str]:
        """The targets to download; by default the class attribute ``targets``."""
        return self.targets

    def test_hooks(self) -> None:
        check_hooks(self.plugin, self.name)

    def test_aliases(self) -> None:
        check_aliases(self.plugin, self.name)

    def test_rate_policy(self) -> None:
        check_rate_policy(self.plugin, self.name)

    def test_record_fields(self, tmp_path: Path) -> None:
        check_record_fields(self.plugin, self.name, self.make_targets(tmp_path), self.max_examples)

    def test_download_and_cancel(self, tmp_path: Path) -> None:
        targets = self.make_targets(tmp_path)
        most = check_download(self.plugin, targets, self.name)
        check_cancel(self.plugin, targets, self.name, self.cancel_within, most, self.max_examples)


EngineFactory = Callable[..., Engine]


@pytest.fixture
def headwater_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    """A factory of isolated engines, each closed after the test.

    ``headwater_engine(*installed, plugins=None, policies=None, idle_timeout=2.0)``
    builds an :class:`~headwater.Engine` over the installed sources named in
    ``installed`` (by entry point name) and the ``plugins`` mapping (name ->
    plugin object), and nothing else: installed sources are never discovered
    on their own. Each engine gets a fresh destination folder under
    ``tmp_path``. Raises PluginError if a named installed source is missing
    or fails to import.
    """
    built: list[Engine] = []

    def make(
        *installed: str,
        plugins: Mapping[str, object] | None = None,
        policies: Mapping[str, RatePolicy] | None = None,
        idle_timeout: float = 2.0,
    ) -> Engine:
        chosen: dict[str, object] = {}
        if installed:
            for cand in discover({LOAD_ENV: ",".join(installed)}):
                if cand.error is not None:
                    raise PluginError(f"installed source {cand.name!r} cannot be used: {cand.error}")
                chosen[cand.name] = cand.plugin
        chosen.update(plugins or {})
        engine = Engine(tmp_path / f"dest-{len(built)}", chosen, policies, idle_timeout=idle_timeout)
        built.append(engine)
        return engine

    yield make
    for engine in built:
        engine.close()
