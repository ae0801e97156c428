"""Per-source dispatch: what one call of a source's hook costs, by how the sources are held.

Issue 14 asks to choose, by measurement, how a call reaches the one source
it is for. Each row builds the same ``sources`` plugins (each implementing
``download_impl``, ``record_fields`` and ``translate_target`` as the
cheapest function possible), then times calls of source 0's hooks:

- **shared manager, subset callers**: one ``PluginManager`` holding every
  source and, per source and hook, ``subset_hook_caller`` removing the
  others. What headwater did before this benchmark: each call rebuilds the
  list of implementations, filtering every registered plugin.
- **one manager per source**: each source registered alone in its own
  ``PluginManager``; a call is ``pm.hook.<name>(...)``.
- **the implementation, called directly**: registered and checked by
  pluggy as above, then the source's one implementation called with the
  arguments it names (the way llm calls a model its ``register_models``
  hook handed over: plugin code, no hook machinery per call).
- **headwater's SourceRegistry**: the dispatch the engine uses now, through
  :class:`headwater._sources.SourceRegistry` (whatever it is at the commit
  measured).

Every row is timed in rounds that alternate the rows, best of ``--rounds``;
ns per call. Building: the time to build the whole set once (best of the
rounds), which an engine pays at start.

    python bench/dispatch.py [--sources 1 8 64] [--calls 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pluggy
from table import print_table

from headwater import DownloadContext, Job, hookimpl, hookspecs
from headwater._discovery import Candidate
from headwater._sources import SourceRegistry

#: One way of holding the sources: built from the plugins, it gives source 0's three hook calls.
Calls = tuple[Callable[[], object], Callable[[], object], Callable[[], object]]

JOB = Job("0" * 32, "s0", "https://example.org/a")
CTX = DownloadContext(Path("/"), None)  # type: ignore[arg-type]  # never logged to here


class Plugin:
    """A source whose hooks do nothing: what is timed is the way to them."""

    @hookimpl
    def download_impl(self, job: Job, ctx: DownloadContext) -> str:
        return "done"

    @hookimpl
    def record_fields(self, job: Job) -> None:
        return None

    @hookimpl
    def translate_target(self, target: str) -> str:
        return target


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def shared_subset(plugins: list[Plugin]) -> Calls:
    pm = _manager()
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"s{i}")
    others = plugins[1:]
    download = pm.subset_hook_caller("download_impl", remove_plugins=others)
    fields = pm.subset_hook_caller("record_fields", remove_plugins=others)
    translate = pm.subset_hook_caller("translate_target", remove_plugins=others)
    return (
        lambda: download(job=JOB, ctx=CTX),
        lambda: fields(job=JOB, settings=None),
        lambda: translate(target="t", settings=None),
    )


def per_source_manager(plugins: list[Plugin]) -> Calls:
    managers = []
    for i, plugin in enumerate(plugins):
        pm = _manager()
        pm.register(plugin, name=f"s{i}")
        managers.append(pm)
    hook = managers[0].hook
    return (
        lambda: hook.download_impl(job=JOB, ctx=CTX),
        lambda: hook.record_fields(job=JOB, settings=None),
        lambda: hook.translate_target(target="t", settings=None),
    )


def direct(plugins: list[Plugin]) -> Calls:
    found: list[dict[str, Callable[..., object]]] = []
    for i, plugin in enumerate(plugins):
        pm = _manager()
        pm.register(plugin, name=f"s{i}")
        found.append({c.name: c.get_hookimpls()[0].function for c in pm.get_hookcallers(plugin) or []})
    hooks = found[0]
    download, fields, translate = hooks["download_impl"], hooks["record_fields"], hooks["translate_target"]
    return (
        lambda: download(JOB, CTX),
        lambda: [r] if (r := fields(JOB)) is not None else [],
        lambda: translate("t"),
    )


def registry(plugins: list[Plugin]) -> Calls:
    reg = SourceRegistry([Candidate(f"s{i}", p) for i, p in enumerate(plugins)])
    source = reg.resolve("s0")
    assert source.record_fields is not None and source.translate is not None
    download, fields, translate = source.download, source.record_fields, source.translate
    return (
        lambda: download(job=JOB, ctx=CTX),
        lambda: fields(job=JOB, settings=None),
        lambda: translate(target="t", settings=None),
    )


WAYS: dict[str, Callable[[list[Plugin]], Calls]] = {
    "shared manager, subset callers": shared_subset,
    "one manager per source": per_source_manager,
    "the implementation, called directly": direct,
    "headwater's SourceRegistry": registry,
}


def per_call_ns(call: Callable[[], object], calls: int) -> float:
    began = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - began) / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for count in args.sources:
        plugins = [Plugin() for _ in range(count)]
        best: dict[str, list[float]] = {way: [float("inf")] * 4 for way in WAYS}
        for _ in range(args.rounds):
            for way, build in WAYS.items():
                began = time.perf_counter_ns()
                calls = build(plugins)
                built = (time.perf_counter_ns() - began) / 1e6
                for call in calls:  # each must work before it is timed
                    call()
                times = [per_call_ns(call, args.calls) for call in calls] + [built]
                best[way] = [min(a, b) for a, b in zip(best[way], times, strict=True)]
        for way, (download, fields, translate, built) in best.items():
            ns = [f"{t:,.0f}" for t in (download, fields, translate)]
            rows.append((way, count, *ns, f"{built:.2f}"))
    header = ("dispatch", "sources", "download_impl ns", "record_fields ns", "translate ns", "building ms")
    print(f"best of {args.rounds} alternating rounds, {args.calls:,} calls each")
    print_table(header, rows)


if __name__ == "__main__":
    main()
