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

import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import attrs
import hypothesis
import pluggy
import pytest
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import strategies as st

from headwater import _contract as contract
from headwater import hookspecs
from headwater._config import ClusterConfig, load_config
from headwater._context import DownloadContext
from headwater._contract import RULES
from headwater._discovery import LOAD_ENV, discover, one_line
from headwater._engine import Engine
from headwater._errors import ContractError, InvalidTargetError, PluginError
from headwater._network_guard import no_network
from headwater._policy import RatePolicy
from headwater._records import Job, Record, State
from headwater._settings import SettingsInput, build_settings

__all__ = [
    "RULES",
    "CLUSTER_OPTION",
    "EngineFactory",
    "FrozenSource",
    "SourceContract",
    "check_aliases",
    "check_cancel",
    "check_download",
    "check_hooks",
    "check_rate_policy",
    "check_record_fields",
    "check_settings",
    "check_source",
    "frozen",
    "headwater_engine",
]

#: A source's settings as a test gives them: setting name -> value, as ``Engine(settings={name: ...})`` takes.
Settings = Mapping[str, object]

_CHECK_SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


def _broke(name: str, exc: PluginError, context: str = "") -> ContractError:
    """The ContractError for ``exc``, a broken rule of :mod:`headwater._contract`, as one sentence."""
    assert exc.rule is not None, exc
    return ContractError(name, exc.rule, f"{exc}{context}".rstrip(".") + ".")


def _manager(plugin: object, name: str) -> pluggy.PluginManager:
    """A plugin manager holding only ``plugin``; raises ContractError under rule "name" or "hooks"."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        contract.register(pm, plugin, contract.source_name(name))
    except PluginError as exc:
        raise _broke(name, exc) from exc
    return pm


def _settings_class(pm: pluggy.PluginManager, name: str) -> type | None:
    """The source's settings class, checked (rule "settings"); None if it declares none."""
    try:
        return contract.settings_class(pm.hook.settings_schema)
    except PluginError as exc:
        raise _broke(name, exc) from exc


def _settings(
    pm: pluggy.PluginManager, name: str, given: Settings | None, needed_by: str | None = None
) -> object:
    """Rule "settings": the instance the checks hand the hooks, built from the defaults and ``given``.

    Built as ``Engine(settings={name: given})`` builds it. None when the
    source declares no settings class, or when ``given`` is None and a
    required setting is missing (the hooks then get None, as ``rate_policy``
    does in an engine); a problem other than a missing required setting
    breaks the rule. With ``needed_by`` (the check that calls hooks a source
    needing configuration never gets), a missing setting raises ValueError.
    """
    schema = _settings_class(pm, name)
    if schema is None and given is None:
        return None
    built = build_settings((name,), schema, SettingsInput(given={name: dict(given or {})}))
    missing = {f.name for f in built.fields if f.required and f.origin is None}
    problems = [p for p in built.problems if given is not None or p.field not in missing]
    if problems:
        source = "the values given" if given else "its defaults"
        raise ContractError(
            name, "settings", f"its settings do not build from {source}: {'; '.join(map(str, problems))}."
        )
    if built.values is None and schema is not None and needed_by is not None:
        raise ValueError(
            f"{needed_by}: source {name!r} needs configuration "
            f"({'; '.join(map(str, built.problems))}); give its settings: settings={{...}}"
        )
    return built.values


def check_hooks(plugin: object, name: str = "source") -> None:
    """Rules "name" and "hooks": ``name`` is a valid source name; ``plugin`` registers cleanly and
    implements ``download_impl``."""
    _manager(plugin, name)


def check_aliases(plugin: object, name: str = "source") -> None:
    """Rule "aliases": every alias is a valid source name."""
    pm = _manager(plugin, name)
    try:
        contract.alias_names(pm.hook.aliases)
    except PluginError as exc:
        raise _broke(name, exc) from exc


def check_settings(plugin: object, name: str = "source", settings: Settings | None = None) -> None:
    """Rule "settings": the settings class is usable and builds from its defaults and from ``settings``.

    ``settings`` are values for the source's settings, as
    ``Engine(settings={name: settings})`` takes them (text is parsed as from
    the environment). Without them a required setting may be missing; every
    other problem breaks the rule.
    """
    _settings(_manager(plugin, name), name, settings)


def check_rate_policy(plugin: object, name: str = "source", *, settings: Settings | None = None) -> None:
    """Rule "rate-policy": ``rate_policy()`` returns a RatePolicy or None."""
    pm = _manager(plugin, name)
    values = _settings(pm, name, settings)
    try:
        contract.rate_policy(functools.partial(pm.hook.rate_policy, settings=values))
    except PluginError as exc:
        raise _broke(name, exc) from exc


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


#: Seconds one call of ``record_fields`` may take: it runs in every submit, on the caller's thread.
RECORD_FIELDS_WITHIN = 0.25

#: Calls of a slow ``record_fields`` before it breaks the rule (one slow call may be the machine's).
SLOW_CALLS = 3


def check_record_fields(
    plugin: object,
    name: str = "source",
    targets: Sequence[str] = (),
    max_examples: int = 50,
    *,
    settings: Settings | None = None,
    within: float = RECORD_FIELDS_WITHIN,
) -> None:
    """Rule "record-fields", for jobs Hypothesis makes from ``targets`` and arbitrary text.

    Each call runs with the network refused on its thread (a connect or a
    name lookup fails, and breaks the rule even if the hook catches the
    error) and must return within ``within`` seconds; a call that takes
    longer is made again, and breaks the rule when :data:`SLOW_CALLS` calls
    in a row do. ``settings`` are the source's settings (see
    :func:`check_settings`); ValueError when a required one is missing.
    """
    pm = _manager(plugin, name)
    hook = pm.hook.record_fields
    if not hook.get_hookimpls():
        return
    values = _settings(pm, name, settings, "check_record_fields")

    @hypothesis.settings(_CHECK_SETTINGS, max_examples=max_examples)
    @given(job=_jobs(name, targets))
    def fields_are_plain(job: Job) -> None:
        what = f"record_fields for target {job.target!r}"
        call = functools.partial(hook, job=job, settings=values)
        took = 0.0
        for _ in range(SLOW_CALLS):
            refused: InvalidTargetError | None = None
            started = time.monotonic()
            with no_network() as network:
                try:
                    contract.record_fields(call, what)
                except InvalidTargetError as exc:
                    refused = exc
                except PluginError as exc:
                    if not network:
                        raise _broke(name, exc) from exc
            took = time.monotonic() - started
            if network:
                raise ContractError(
                    name,
                    "record-fields",
                    f"{what} used the network ({network[0]}); it runs at submit, on the caller's "
                    "thread, and may do no I/O.",
                )
            if refused is not None and job.target in targets:
                raise ContractError(
                    name,
                    "record-fields",
                    f"record_fields raised {one_line(refused)} for the downloadable target {job.target!r}.",
                ) from refused
            if refused is not None or took <= within:
                return  # a target refused at submit, as the hook may do; or plain fields, in time
        raise ContractError(
            name,
            "record-fields",
            f"{what} took {took:.2f} s, {SLOW_CALLS} calls in a row; it runs at submit, on the "
            f"caller's thread, and must return within {within:g} s.",
        )

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
    pm: pluggy.PluginManager, name: str, target: str, dest_dir: Path, cancel_at: int | None, values: object
) -> tuple[_WatchedContext, _Outcome, threading.Thread]:
    """Start download_impl of ``target`` on its own thread, as a worker of the engine would.

    ``values`` is the settings instance (``ctx.settings``).
    """
    logger = logging.getLogger(f"headwater.source.{name}")
    ctx = _WatchedContext(dest_dir, logger, cancel_at, values)
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


def _check_path(name: str, target: str, dest_dir: Path, returned: object) -> Path:
    """Rule "download-path" for what download_impl returned; the resolved file."""
    try:
        return contract.returned_file(dest_dir, returned)[0]
    except PluginError as exc:
        raise _broke(name, exc, f" (target {target!r})") from exc


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
    plugin: object,
    targets: Sequence[str],
    name: str = "source",
    timeout: float = 60.0,
    *,
    settings: Settings | None = None,
) -> int:
    """Rules "download", "download-path", "progress" and "described-fields": download each target once.

    Each download runs on its own thread into a fresh temporary folder, with
    ``settings`` (see :func:`check_settings`) as ``ctx.settings``.
    ``timeout`` bounds one download. Returns the most progress reports one
    download made (what :func:`check_cancel` draws its cancel points from).
    """
    if not targets:
        raise ValueError("check_download needs at least one target the source can download")
    pm = _manager(plugin, name)
    values = _settings(pm, name, settings, "check_download")
    most = 0
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="headwater-contract-") as tmp:
            dest_dir = Path(tmp).resolve()
            ctx, outcome, thread = _download(pm, name, target, dest_dir, None, values)
            if not outcome.done.wait(timeout):
                raise ContractError(name, "download", f"download_impl of {target!r} ran past {timeout:g} s.")
            thread.join()
            if isinstance(outcome.error, PluginError) and outcome.error.rule is not None:
                raise _broke(name, outcome.error, f" (target {target!r})") from outcome.error
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
    *,
    settings: Settings | None = None,
) -> None:
    """Rule "cancel": set ``ctx.cancelled`` before the start or at a progress report; it must stop.

    Stopping means returning within ``within`` seconds of the cancel, and
    reporting progress at most :data:`REPORTS_AFTER_CANCEL` more times (so a
    fast download that ignores the cancel is caught too, not only a slow one).

    Hypothesis picks the target and the report (0 = before download_impl
    starts, up to ``reports``, the most a download made in
    :func:`check_download`); the call must return within ``within`` seconds
    of the cancel. What it returns or raises then is free (the engine deletes
    a file landed after a cancel), except a path outside ``ctx.dest_dir``;
    but nothing else it wrote may be left in ``ctx.dest_dir`` (no ``.part``,
    no file it landed and did not return).
    A download that never gets to the chosen report has ``timeout`` seconds
    to end.
    """
    if not targets:
        raise ValueError("check_cancel needs at least one target the source can download")
    pm = _manager(plugin, name)
    values = _settings(pm, name, settings, "check_cancel")

    @hypothesis.settings(_CHECK_SETTINGS, max_examples=max_examples)
    @given(target=st.sampled_from(list(targets)), cancel_at=st.integers(0, max(reports, 0)))
    @example(target=targets[0], cancel_at=0)
    def stops_when_cancelled(target: str, cancel_at: int) -> None:
        with tempfile.TemporaryDirectory(prefix="headwater-contract-") as tmp:
            dest_dir = Path(tmp).resolve()
            ctx, outcome, thread = _download(pm, name, target, dest_dir, cancel_at, values)
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
            kept: set[Path] = set()
            if outcome.returned is not None and outcome.error is None:
                kept.add(_check_path(name, target, dest_dir, outcome.returned))
            left = sorted(str(p.relative_to(dest_dir)) for p in _files_in(dest_dir) if p not in kept)
            if ctx.cancelled_at is not None and left:
                raise ContractError(
                    name,
                    "cancel",
                    f"download_impl of {target!r} left {', '.join(map(repr, left))} in ctx.dest_dir "
                    f"when it stopped on ctx.cancelled (set at progress report {cancel_at}); remove what "
                    "it wrote, a .part among it, unless it returns the file.",
                )

    stops_when_cancelled()


def _files_in(folder: Path) -> Iterator[Path]:
    """Every file (anything but a folder) inside ``folder``, at any depth; links not followed."""
    for root, dirs, files in os.walk(folder):
        for entry in (*files, *(d for d in dirs if os.path.islink(os.path.join(root, d)))):
            yield Path(root, entry)


def check_source(
    plugin: object,
    targets: Sequence[str],
    *,
    name: str = "source",
    cancel_within: float = 2.0,
    max_examples: int = 20,
    settings: Settings | None = None,
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
        settings: values for the source's settings, as
            ``Engine(settings={name: settings})`` takes them; needed when it
            has a required setting (ValueError without them).

    Runs on the calling thread, downloads on threads of their own. Call it
    from a plain test, not from inside a Hypothesis ``@given`` test.
    """
    check_hooks(plugin, name)
    check_aliases(plugin, name)
    check_settings(plugin, name, settings)
    check_rate_policy(plugin, name, settings=settings)
    check_record_fields(plugin, name, targets, max_examples, settings=settings)
    most = check_download(plugin, targets, name, settings=settings)
    check_cancel(plugin, targets, name, cancel_within, most, max_examples, settings=settings)


class SourceContract:
    """Subclass as ``TestSomething`` and set ``plugin`` and ``targets``: one test per rule.

    ``targets`` are targets the source can download in the test environment.
    When they need files or a server made for each test, override
    :meth:`make_targets` (it gets pytest's ``tmp_path``) instead.
    ``settings`` are values for the source's settings (see
    :func:`check_settings`).
    """

    plugin: ClassVar[object]
    targets: ClassVar[Sequence[str]] = ()
    name: ClassVar[str] = "source"
    settings: ClassVar[Settings | None] = None
    cancel_within: ClassVar[float] = 2.0
    max_examples: ClassVar[int] = 20

    def make_targets(self, tmp_path: Path) -> Sequence[str]:
        """The targets to download; by default the class attribute ``targets``."""
        return self.targets

    def test_hooks(self) -> None:
        check_hooks(self.plugin, self.name)

    def test_aliases(self) -> None:
        check_aliases(self.plugin, self.name)

    def test_settings(self) -> None:
        check_settings(self.plugin, self.name, self.settings)

    def test_rate_policy(self) -> None:
        check_rate_policy(self.plugin, self.name, settings=self.settings)

    def test_record_fields(self, tmp_path: Path) -> None:
        targets = self.make_targets(tmp_path)
        check_record_fields(self.plugin, self.name, targets, self.max_examples, settings=self.settings)

    def test_download_and_cancel(self, tmp_path: Path) -> None:
        targets = self.make_targets(tmp_path)
        most = check_download(self.plugin, targets, self.name, settings=self.settings)
        check_cancel(
            self.plugin,
            targets,
            self.name,
            self.cancel_within,
            most,
            self.max_examples,
            settings=self.settings,
        )


@attrs.frozen
class FrozenSource:
    """What :func:`frozen` gives: reads of one held source, each a consistent view of it.

    Valid only inside the ``with`` block. Each call reads the engine anew, so
    a cancel or remove made inside the block shows in the next read; nothing
    else changes the source's records meanwhile.
    """

    engine: Engine
    source: str

    def records(self) -> list[Record]:
        """The source's records, oldest first (as :meth:`Engine.records` of the source)."""
        return self.engine.records(self.source)

    def get(self, download_id: str) -> Record:
        """One download's record; raises UnknownDownloadError."""
        return self.engine.get(download_id)

    def state(self, download_id: str) -> State:
        """One download's state; raises UnknownDownloadError."""
        return self.engine.get(download_id).state


@contextmanager
def frozen(engine: Engine, source: str) -> Iterator[FrozenSource]:
    """Hold ``source`` (a name or alias) of ``engine`` still, and give a view of its records.

    Inside the block no download of the source starts, ends, changes state
    or moves along its chain, except by what the calling thread does (it may
    submit, cancel and remove), so a test can read a download's state and act
    on it knowing the engine's threads do not move it in between::

        with frozen(engine, "src") as view:
            if view.state(download_id) is State.RUNNING:
                assert engine.cancel(download_id)  # cancelled while RUNNING, for certain

    Other sources go on. Do not wait inside the block for one of the
    source's downloads to end: it cannot. Raises UnknownSourceError.
    """
    with engine.freeze(source):
        yield FrozenSource(engine, source)


EngineFactory = Callable[..., Engine]

#: The command-line option that puts :func:`headwater_engine`'s engines on a cluster.
CLUSTER_OPTION = "--headwater-cluster"

#: Worker threads of each cluster engine :func:`headwater_engine` makes.
CLUSTER_WORKERS = 4


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        CLUSTER_OPTION,
        metavar="TOML",
        default=None,
        help="run headwater_engine's engines on the cluster that the [cluster] table of this headwater.toml "
        "names (each with a schema and Redis names of its own, removed after the test)",
    )


@pytest.fixture
def headwater_engine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EngineFactory]:
    """A factory of isolated engines, each closed after the test.

    ``headwater_engine(*installed, plugins=None, policies=None, idle_timeout=2.0)``
    builds an :class:`~headwater.Engine` over the installed sources named in
    ``installed`` (by entry point name) and the ``plugins`` mapping (name ->
    plugin object), and nothing else: installed sources are never discovered
    on their own. Each engine gets a fresh destination folder under
    ``tmp_path``. Raises PluginError if a named installed source is missing
    or fails to import.

    With ``pytest --headwater-cluster=headwater.toml`` each is instead an
    engine on a cluster (as ``Engine(..., cluster=...)`` makes), running the
    downloads on :data:`CLUSTER_WORKERS` cluster worker threads in the test's process, on
    the servers the file's ``[cluster]`` table names, with a schema and
    Redis names of its own (deleted after the test); ``idle_timeout`` is
    not used. A new cluster starts nothing for its first lease time (a
    state Redis could have lost), so give the file a short ``lease``
    (2 s). Needs the ``cluster`` extra.
    """
    cluster = _cluster_of(request.config.getoption(CLUSTER_OPTION))
    built: list[Engine] = []
    clusters: list[ClusterConfig] = []  # each cluster engine's own

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
        dest_dir = tmp_path / f"dest-{len(built)}"
        if cluster is None:
            engine = Engine(dest_dir, chosen, policies, idle_timeout=idle_timeout)
        else:
            from headwater._cluster._engine import ClusterEngine
            from headwater._cluster._setup import isolated

            clusters.append(isolated(cluster))
            engine = ClusterEngine(dest_dir, chosen, policies, cluster=clusters[-1], workers=CLUSTER_WORKERS)
        built.append(engine)
        return engine

    yield make
    for engine in built:
        engine.close()
    if clusters:
        from headwater._cluster._setup import clear

        for made in clusters:
            clear(made)


def _cluster_of(option: object) -> ClusterConfig | None:
    """The ``[cluster]`` of the file ``--headwater-cluster`` names; None without the option."""
    if option is None:
        return None
    found = load_config(Path(str(option))).cluster
    if found is None:
        raise pytest.UsageError(f"{CLUSTER_OPTION}: {option} has no [cluster] table")
    return found
