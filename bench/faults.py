"""Fault script: headwater against a hostile server, kills and signals, damaged journals and full disks.

Every fault runs the real ``headwater`` command in a sandbox of its own
(``HEADWATER_HOME``, destination and working folder in one temporary
folder; bench/faultbox.py), against a hostile HTTP server on 127.0.0.1
(bench/hostile.py) or local files, then judges what is left with the checks
of bench/faultcheck.py against independent truth: the bytes the server meant
to serve, snapshots of the folders, and the journal as ``headwater status
--json`` reads it back. It reports what it observes: a fault survives when
no check finds a problem. The faults: the table of server behaviours
(bench/fault_server.py), kills, signals, races, disks and scale
(bench/fault_process.py), damaged journals and bad input
(bench/fault_journal.py), odd plugins (bench/fault_plugins.py).

    python bench/faults.py [--quick] [--jobs 6] [--seed 12] [--only TEXT] [--detail] [--list] [--dir DIR]

``--quick`` tries every fault but the slow ones, once (about two minutes);
the default full run repeats the kills and races with other random moments
and adds the slow faults (6 to 10 minutes on 2 cores, with the load). ``--detail`` also
prints what every trial's commands ended with. Exit status 0 whatever it
finds; 2 if the harness itself failed. As root, the full-disk and read-only
faults use small tmpfs mounts; otherwise read-only is a chmod and the
full-disk faults are skipped, saying so."""

from __future__ import annotations

import os
import sys

# bench/ holds a module named http.py: keep this folder on the path, after the standard library.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0]) == _HERE:
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import attrs  # noqa: E402
import fault_journal as journal  # noqa: E402
import fault_process as process  # noqa: E402
from fault_plugins import ODD_RETURNS, plugin_fault  # noqa: E402
from fault_server import BEHAVIOURS, server_fault  # noqa: E402
from faultbox import LIMIT, VICTIM, Sandbox, Skipped  # noqa: E402
from faultcheck import KINDS, Case, Problem, count, describe, judge  # noqa: E402
from hostile import HostileServer  # noqa: E402
from table import print_table  # noqa: E402

# -- the list of faults ----------------------------------------------------------------


@attrs.frozen(eq=False)
class Fault:
    """One fault: its name, its group (a row of the table), what it does, and when it runs.

    ``runs``: how many times the full run tries it (each time with other random
    moments); ``quick``: whether ``--quick`` tries it (once); ``limit``: the
    longest it may take, so the slow ones start first.
    """

    name: str
    group: str
    run: Callable[[Sandbox], Case]
    runs: int = 1
    quick: bool = True
    limit: float = LIMIT


def all_faults() -> list[Fault]:
    """Every fault, in the order the table groups them."""
    kill, races, disks, bad = "kill and signals", "races", "disks", "bad input"
    get_in = ("get", "file", "{src}", "--dest", "{dest}")
    faults = [
        Fault(b.name, "hostile server", server_fault(b), quick=b.quick, limit=b.limit) for b in BEHAVIOURS
    ]
    faults += [
        Fault(
            "kill -9 during get, then resume", kill, process.interrupt_then_resume(signal.SIGKILL), runs=20
        ),
        Fault("kill -9 during get and during resume", kill, process.kill_resume_too, runs=10),
        Fault(
            "Ctrl-C during get, then resume (issue item 6)",
            kill,
            process.interrupt_then_resume(signal.SIGINT),
            runs=6,
        ),
        Fault(
            "Ctrl-C twice during get", kill, process.interrupt_then_resume(signal.SIGINT, twice=True), runs=2
        ),
        Fault(
            "SIGTERM during get, then resume (issue item 6)",
            kill,
            process.interrupt_then_resume(signal.SIGTERM),
            runs=6,
        ),
        Fault("Ctrl-C while get starts up", kill, process.interrupt_at_start, runs=4),
        Fault("resume from another folder after kill -9 (issue item 7)", kill, process.resume_elsewhere),
        Fault(
            "two gets at once on a new journal (issue item 4)", races, process.two_gets_at_once(0), runs=10
        ),
        Fault(
            "two gets at once on an older journal (issue item 4)", races, process.two_gets_at_once(1), runs=5
        ),
        Fault(
            "4 processes open a new journal at once, Python API (issue item 4)",
            races,
            process.openers_at_once(0),
            runs=10,
        ),
        Fault(
            "4 processes open an older journal at once, Python API (issue item 4)",
            races,
            process.openers_at_once(1),
            runs=10,
        ),
        Fault("two resumes at once after kill -9", races, process.two_resumes_at_once, runs=3),
        Fault(
            "resume while another get runs, after a crash (issue item 5)",
            races,
            process.resume_beside_live,
            runs=2,
        ),
        Fault(
            "cancel while another get runs, after a crash (issue item 5)",
            races,
            process.cancel_beside_live,
        ),
        Fault("read-only destination", disks, process.read_only_destination),
        Fault(
            "destination under a regular file (issue item 9)",
            disks,
            process.unusable_destination(inside=True),
        ),
        Fault("destination is a regular file", disks, process.unusable_destination(inside=False)),
        Fault("read-only HEADWATER_HOME", disks, process.read_only_home),
        Fault("full disk at the destination", disks, process.full_destination),
        Fault("full disk under the journal (issue item 9)", disks, process.full_home),
        Fault("another program's SQLite file as the journal", "journal", journal.foreign_database),
        Fault("journal from a newer headwater", "journal", journal.newer_schema),
        Fault("journal is a folder", "journal", journal.journal_is_a_folder),
    ]
    faults += [
        Fault(
            what,
            "journal",
            journal.journal_fault(damage, readable),
            runs=8 if what.startswith("16 bytes") else 1,
        )
        for what, damage, readable in journal.JOURNAL_DAMAGE
    ]
    faults += [
        Fault(
            "--timeout -1 (issue item 9)", bad, journal.bad_input((*get_in, "--timeout", "-1"), ("timeout",))
        ),
        Fault(
            "--timeout nan (issue item 9)",
            bad,
            journal.bad_input((*get_in, "--timeout", "nan"), ("timeout",)),
        ),
        Fault(
            "plugins.load names a source not installed (issue item 9)",
            bad,
            journal.bad_input(get_in, ("headwater.toml",), config='[plugins]\nload = ["nosuch"]\n'),
        ),
        Fault(
            "headwater.toml that is not TOML",
            bad,
            journal.bad_input(get_in, ("headwater.toml",), config="this is = = not toml"),
        ),
        Fault("unknown source", bad, journal.bad_input(("get", "nosuch", "{src}"), ("nosuch",))),
        Fault(
            "cancel of an id that does not exist",
            bad,
            journal.bad_input(("cancel", "0123456789ab"), ("0123456789ab",)),
        ),
        Fault("get file on a FIFO", bad, journal.file_fault(journal.fifo, ("not a regular file",))),
        Fault("get file on a folder", bad, journal.file_fault(journal.folder, ("directory",))),
        Fault("1,000 targets in one get", "scale", process.many_targets(1_000)),
        Fault("10,000 targets in one get", "scale", process.many_targets(10_000), quick=False, limit=600.0),
        Fault(
            "kill -9 during a get of 10,000 targets, then resume",
            "scale",
            process.many_targets(10_000, kill=True),
            quick=False,
            limit=600.0,
        ),
    ]
    faults += [Fault(f"download_impl {odd.name}", "plugins", plugin_fault(odd)) for odd in ODD_RETURNS]
    return faults


# -- running them ---------------------------------------------------------------------


@attrs.frozen
class Verdict:
    """What the checks found in one trial of a fault (``skipped``: why it could not be tried)."""

    fault: Fault
    trial: int
    problems: tuple[Problem, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    detail: tuple[str, ...] = ()
    skipped: str = ""
    harness_error: str = ""

    @property
    def label(self) -> str:
        return self.fault.name + (f" #{self.trial + 1}" if self.fault.runs > 1 else "")


def try_fault(fault: Fault, trial: int, number: int, base: Path, server: HostileServer, seed: int) -> Verdict:
    """Run one trial of ``fault`` in a sandbox of its own and judge it."""
    box = Sandbox(
        (base / f"{number:03d}" / "box"),
        base / f"{number:03d}" / "logs",
        server,
        f"/f{number}/",
        random.Random(f"{seed}:{fault.name}:{trial}"),
    )
    box.make()
    box.dest.mkdir(parents=True)
    box.plant(box.root / "outside" / "victim.txt", VICTIM)
    began = time.monotonic()
    try:
        case = fault.run(box)
    except Skipped as exc:
        return Verdict(fault, trial, (), time.monotonic() - began, skipped=str(exc))
    except Exception:
        return Verdict(fault, trial, (), time.monotonic() - began, harness_error=traceback.format_exc())
    finally:
        box.cleanup()
        server.unmount(box.prefix)
    return Verdict(
        fault, trial, tuple(judge(case)), time.monotonic() - began, tuple(case.notes), tuple(describe(case))
    )


def run_faults(
    faults: Sequence[Fault], *, quick: bool, jobs: int, seed: int, base: Path, progress: bool = True
) -> list[Verdict]:
    """Try every fault (``quick``: once, only those marked quick), ``jobs`` at a time; verdicts in order."""
    trials = [(f, t) for f in faults if f.quick or not quick for t in range(1 if quick else f.runs)]
    order = sorted(range(len(trials)), key=lambda i: -trials[i][0].limit)  # the slow ones first
    server = HostileServer()
    verdicts: dict[int, Verdict] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        fault, trial = trials[index]
        verdict = try_fault(fault, trial, index, base, server, seed)
        with lock:
            verdicts[index] = verdict
            if progress:
                mark = "ok" if verdict_survived(verdict) else "SKIP" if verdict.skipped else "FAIL"
                print(
                    f"[{len(verdicts):3d}/{len(trials)}] {mark:4} {verdict.seconds:6.1f} s  {verdict.label}",
                    file=sys.stderr,
                    flush=True,
                )

    try:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, order))
    finally:
        server.close()
    return [verdicts[i] for i in range(len(trials))]


def verdict_survived(verdict: Verdict) -> bool:
    return not verdict.problems and not verdict.skipped and not verdict.harness_error


def report(verdicts: Sequence[Verdict], detail: bool = False) -> None:
    """Print the table, then one line per fault that did not survive (``detail``: then what each did)."""
    groups: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        if not verdict.skipped and not verdict.harness_error:
            groups.setdefault(verdict.fault.group, []).append(verdict)
    header = ["faults", "tried", "survived", *COLUMNS.values()]
    rows = []
    for group, members in [*groups.items(), ("total", [v for m in groups.values() for v in m])]:
        counts = count(p for v in members for p in v.problems)
        rows.append(
            [
                group,
                len(members),
                sum(verdict_survived(v) for v in members),
                *(counts[kind] for kind in COLUMNS),
            ]
        )
    print_table(header, rows)
    failed = [v for v in verdicts if v.problems]
    if failed:
        print("\nDid not survive (one line per fault: its failed trials, the first one's problems):")
        print("\n".join(failure_line(fault, trials) for fault, trials in by_fault(failed).items()))
    notes: dict[str, list[str]] = {}
    for verdict in verdicts:
        notes.setdefault(verdict.fault.name, []).extend(verdict.notes)
    if any(notes.values()):
        print("\nMeasured (one entry per trial):")
        print("\n".join(f"- {name}: {', '.join(found)}" for name, found in notes.items() if found))
    skipped = [v for v in verdicts if v.skipped]
    if skipped:
        print("\nSkipped:")
        print("\n".join(f"- {v.label}: {v.skipped}" for v in skipped))
    if detail:
        print("\nWhat each trial did:")
        for verdict in verdicts:
            print(f"- {verdict.label} ({'survived' if verdict_survived(verdict) else 'did not survive'})")
            print("".join(f"    {line}\n" for line in verdict.detail), end="")
    broken = [v for v in verdicts if v.harness_error]
    if broken:
        print("\nHarness errors (the fault could not be judged):")
        for verdict in broken:
            print(f"- {verdict.label}: {verdict.harness_error.strip().splitlines()[-1]}")


def by_fault(verdicts: Sequence[Verdict]) -> dict[Fault, list[Verdict]]:
    """``verdicts`` grouped by their fault, in order."""
    grouped: dict[Fault, list[Verdict]] = {}
    for verdict in verdicts:
        grouped.setdefault(verdict.fault, []).append(verdict)
    return grouped


def failure_line(fault: Fault, failed: Sequence[Verdict], width: int = 300) -> str:
    """One line of about ``width`` characters: the fault, its failed trials, the first one's problems."""
    trials = f" [{len(failed)} of {fault.runs} trials]" if fault.runs > 1 else ""
    line = f"- {fault.name}{trials}: "
    problems = failed[0].problems
    for shown, problem in enumerate(problems):
        text = f"{problem.kind}: {problem.text}"
        if shown and len(line) + len(text) > width:
            return line + f"and {len(problems) - shown} more"
        line += text + "; "
    return line.removesuffix("; ")


#: The table's problem columns: kind -> heading, in the order of :data:`faultcheck.KINDS`.
COLUMNS = dict(
    zip(
        KINDS,
        ("lost", "corrupt", "replaced", "outside dest", "hangs", "bad messages", "journal", "leftovers"),
        strict=True,
    )
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="each fault once, without the slow ones")
    parser.add_argument("--jobs", type=int, default=6, help="faults tried at the same time")
    parser.add_argument("--seed", type=int, default=12, help="seed of the random kill moments and damage")
    parser.add_argument("--only", default="", help="only faults whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--detail", action="store_true", help="also print what every trial did")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the sandboxes go (default: a temp folder)"
    )
    args = parser.parse_args()
    faults = [f for f in all_faults() if args.only.lower() in f.name.lower()]
    if args.list:
        for fault in faults:
            print(f"{fault.group:<16} x{fault.runs:<3} {'quick' if fault.quick else 'full ':5}  {fault.name}")
        return
    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        verdicts = run_faults(
            faults, quick=args.quick, jobs=args.jobs, seed=args.seed, base=Path(tmp).resolve()
        )
    mode = "quick" if args.quick else "full"
    print(
        f"headwater fault run ({mode}, seed {args.seed}, {args.jobs} at a time): "
        f"{len(verdicts)} trials in {time.monotonic() - began:.0f} s"
    )
    report(verdicts, args.detail)
    sys.exit(2 if any(v.harness_error for v in verdicts) else 0)


if __name__ == "__main__":
    main()
