"""Hand-made engine mutations: which does the stateful suite catch alone, which the whole suite?

Each mutation is one or more exact text replacements in core/. First the
script checks that every text of every chosen mutation is there exactly once
and exits with the list of those that are not (the engine has moved on and
they must be re-pointed; ``--check`` does only this). For each, it then
applies it, runs the stateful suite alone (tests/test_engine_stateful.py,
the ``mutants`` profile: ``ci`` without an example database or shrinking)
and then the whole suite (``pytest -x``, the same profile, the engine's test
modules first so a caught mutation stops early), restores the files, and prints a table. A run that fails or
hangs past its bound counts as caught. docs/regression-suite.md lists the
mutations and the last measured table.

It edits the files of the tree it lives in, so run it on a copy of the
repository that nothing else uses; the tests import headwater from that
copy (its ``core`` and ``plugins_builtin`` go first on PYTHONPATH)::

    rsync -a --exclude .git ./ /tmp/headwater-mutants/
    python /tmp/headwater-mutants/bench/mutations.py [--only M2,M9] [--no-whole]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "core/headwater/_engine.py"
SHARD = "core/headwater/_shard.py"
DISPATCH = "core/headwater/_dispatch.py"
OUTCOMES = "core/headwater/_outcomes.py"
ATTEMPT = "core/headwater/_attempt.py"
WORKER = "core/headwater/_worker.py"
SCHEDULER = "core/headwater/_scheduler.py"
FILES = "core/headwater/_files.py"
STATEFUL = "tests/test_engine_stateful.py"
ENGINE_TESTS = [
    "tests/test_engine.py",
    "tests/test_resilience.py",
    "tests/test_retry_after.py",
    "tests/test_retry_bounds.py",
    "tests/test_resume.py",
    STATEFUL,
]
#: The whole suite, the engine's test modules first: each file named, since given ``tests`` pytest sorts them.
ENGINE_TESTS_FIRST = ENGINE_TESTS + sorted(
    p.relative_to(ROOT).as_posix()
    for p in (ROOT / "tests").glob("test_*.py")
    if p.relative_to(ROOT).as_posix() not in ENGINE_TESTS
)
STATEFUL_BOUND = 900.0  # seconds: a stateful run past this hung
WHOLE_BOUND = 2400.0


@attrs.frozen
class Edit:
    path: str
    old: str
    new: str


@attrs.frozen
class Mutation:
    name: str
    what: str
    edits: tuple[Edit, ...]


def _one(name: str, what: str, path: str, old: str, new: str) -> Mutation:
    return Mutation(name, what, (Edit(path, old, new),))


RUNNING_GUARD = Edit(
    OUTCOMES,
    "if ours and record is not None and record.state is State.RUNNING:",
    "if ours and record is not None:",
)
ENDED_OURS = Edit(
    OUTCOMES,
    "        ours = download.end(ctx)  # not if cancelled, or the watchdog ended it",
    "        ours = download.end(ctx) or True",
)  # the end's check-and-set answer ignored
TRANSITIONS = Edit(SHARD, "        if not may_transition(record.state, state):", "        if False:")
CHECKED = "        if record is None or download.phase is not Phase.QUEUED:\n            return None\n"
STARTED = "        if not download.start(ctx):\n            return None\n"
UNSETTLED = Edit(
    DISPATCH, STARTED, "        download.start(ctx)\n"
)  # the start's check-and-set answer ignored
SPAWN_LIMIT = "            and threads < scheduler.policy.concurrency\n"
SURPLUS = "            if len(self._threads) > scheduler.policy.concurrency:"
ENDED = "        self._running -= 1\n        self._last_end = now"
TAKEN = "            self._running += len(taken)\n"
FINISH = "            scheduler.ended(self._clock.now())"

MUTATIONS = (
    Mutation("M2", "Shard.move ignores the transition table", (TRANSITIONS,)),
    Mutation(
        "M3",
        "no guard at all on the end's write (the end's check-and-set, the RUNNING check and the table)",
        (TRANSITIONS, RUNNING_GUARD, ENDED_OURS),
    ),
    _one(
        "M4",
        "submit writes under the lock of the wrong source (the first one made)",
        ENGINE,
        "        with shard.lock:\n            self._store.add(record)",
        "        with next(iter(self._shards.values())).lock:\n            self._store.add(record)",
    ),
    Mutation(
        "M5",
        "one lock shared by every source",
        (
            Edit(SHARD, "        self.lock = threading.RLock()", "        self.lock = _ONE_LOCK"),
            Edit(
                SHARD,
                'log = logging.getLogger("headwater")\n',
                'log = logging.getLogger("headwater")\n_ONE_LOCK = threading.RLock()\n',
            ),
        ),
    ),
    Mutation(
        "M6",
        "start in two steps: phase checked, the lock let go for 5 ms, the start's check-and-set ignored",
        (
            Edit(
                DISPATCH,
                CHECKED,
                CHECKED
                + "        shard.lock.release()\n        time.sleep(0.005)\n        shard.lock.acquire()\n",
            ),
            UNSETTLED,
        ),
    ),
    Mutation(
        "M7",
        "the same, the lock let go and taken again at once",
        (
            Edit(DISPATCH, CHECKED, CHECKED + "        shard.lock.release()\n        shard.lock.acquire()\n"),
            UNSETTLED,
        ),
    ),
    Mutation(
        "M8",
        "the worker starts a job whatever its state (no phase check, no check-and-set)",
        (
            Edit(
                DISPATCH,
                "        if record is None or download.phase is not Phase.QUEUED:",
                "        if record is None:",
            ),
            UNSETTLED,
        ),
    ),
    Mutation(
        "M9",
        "no delay after a failure (the end time kept only after a COMPLETED download)",
        (
            Edit(
                WORKER,
                FINISH,
                '            scheduler.ended(self._clock.now(), getattr(outcome, "path", None) is not None)',
            ),
            Edit(
                SCHEDULER,
                "    def ended(self, now: float) -> None:",
                "    def ended(self, now: float, ok: bool = True) -> None:",
            ),
            Edit(
                SCHEDULER,
                ENDED,
                "        self._running -= 1\n        if ok:\n            self._last_end = now",
            ),
        ),
    ),
    Mutation(
        "M10",
        "the delay counted from the previous start, not its end",
        (
            Edit(SCHEDULER, ENDED, "        self._running -= 1"),
            Edit(SCHEDULER, TAKEN, TAKEN + "            if taken:\n                self._last_end = now\n"),
        ),
    ),
    Mutation(
        "M11",
        "the scheduler and worker run one download more than the concurrency",
        (
            Edit(
                SCHEDULER,
                "        free = self._policy.concurrency - self._running",
                "        free = self._policy.concurrency + 1 - self._running",
            ),
            Edit(
                SCHEDULER,
                "        if self._running >= self._policy.concurrency:",
                "        if self._running > self._policy.concurrency:",
            ),
            Edit(WORKER, SPAWN_LIMIT, "            and threads <= scheduler.policy.concurrency\n"),
            Edit(WORKER, SURPLUS, "            if len(self._threads) > scheduler.policy.concurrency + 1:"),
        ),
    ),
    _one(
        "M12",
        "a file landed after a cancel is kept (no discard_landed)",
        OUTCOMES,
        "            discard_landed(ctx.dest_dir, tried.returned)",
        "            pass",
    ),
    Mutation(
        "M13",
        "one thread per queued job, the concurrency kept by the scheduler alone",
        (Edit(WORKER, SPAWN_LIMIT, ""), Edit(WORKER, SURPLUS, "            if False:")),
    ),
    _one(
        "M14",
        "a cancelled download's returned path deleted wherever it is (no guard in discard_landed)",
        FILES,
        "        path, _ = landed_file(dest_dir, returned)",
        "        path = Path(returned)",
    ),
    _one(
        "M15",
        "cancel does not wake whoever waits for the download",
        ENGINE,
        "        if cancelled:\n"
        "            self._dispatch.notify_ended(download_id)\n"
        "        return cancelled",
        "        return cancelled",
    ),
    _one(
        "M16",
        "the delay measured on time.monotonic, not the engine's clock",
        WORKER,
        FINISH,
        "            scheduler.ended(time.monotonic())",
    ),
    _one(
        "M17",
        "a download moved down its chain keeps the failed source's progress",
        ATTEMPT,
        '        "progress": 0.0,\n        "size": None,\n        "transferred": 0,\n',
        "",
    ),
    _one("M18", "a retry does not count against the policy's retries", OUTCOMES, "retries=retry, ", ""),
    _one(
        "M19",
        "a Retry-After does not pause the source",
        OUTCOMES,
        "Verdict(front=True, pause_until=now + again.pause)",
        "Verdict(front=True)",
    ),
    _one(
        "M20",
        "a job asked to retry later goes to the back of the queue, not the front",
        WORKER,
        "                scheduler.put_front(item)",
        "                scheduler.put(item)",
    ),
    _one(
        "M21",
        "downloads taken over from the journal are queued again but never started",
        ENGINE,
        "                shard.worker.put(download)\n            started.append(record.id)",
        "            started.append(record.id)",
    ),
    _one(
        "M22",
        "a chain move keeps the whole list of fallbacks (the source it moved to stays in it)",
        ATTEMPT,
        '        "fallbacks": record.fallbacks[taker.index + 1 :],',
        '        "fallbacks": record.fallbacks,',
    ),
)


@attrs.frozen
class Outcome:
    caught: bool
    seconds: float
    first: str  # the first failed check or test, or why it did not run


def misses(mutation: Mutation) -> list[str]:
    """Why ``mutation`` cannot be applied: each edit whose text is not in its file exactly once."""
    found = []
    for edit in mutation.edits:
        count = (ROOT / edit.path).read_text().count(edit.old)
        if count != 1:
            first = edit.old.strip().splitlines()[0]
            found.append(f"{mutation.name}: {edit.path} holds {count} copies of {first!r}")
    return found


def run(args: list[str], bound: float) -> Outcome:
    """Run pytest with ``args`` on the mutated tree; caught if it fails or hangs past ``bound`` s."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "core"), str(ROOT / "plugins_builtin"), env.get("PYTHONPATH", "")]
    )
    with tempfile.TemporaryDirectory(prefix="headwater-mutant-db-") as db:
        env["HYPOTHESIS_STORAGE_DIRECTORY"] = db  # no example found by an earlier run
        start = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=bound,
            )
        except subprocess.TimeoutExpired:
            return Outcome(True, time.monotonic() - start, f"hung: killed after {bound:g} s")
    seconds = time.monotonic() - start
    if done.returncode == 0:
        return Outcome(False, seconds, "")
    return Outcome(True, seconds, first_failure(done.stdout + done.stderr))


def first_failure(output: str) -> str:
    """The first failed check the stateful suite logged, else the first FAILED or ERROR line."""
    logged = re.search(r"headwater\.tests\.stateful:\S+ (\w+) failed: (.*)", output)
    if logged:
        return f"{logged.group(1)}: {logged.group(2)}"[:110]
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return failed.group(1)[:110] if failed else output.strip().splitlines()[-1][:110]


def mutate(mutation: Mutation) -> dict[Path, str]:
    """Apply ``mutation``; return the original text of each file it changed."""
    originals: dict[Path, str] = {}
    for edit in mutation.edits:
        path = ROOT / edit.path
        originals.setdefault(path, path.read_text())
        path.write_text(path.read_text().replace(edit.old, edit.new, 1))
    return originals


def whole_cell(alone: Outcome | None, whole: Outcome | None) -> str:
    """The whole suite's column: measured, or inferred from the stateful suite it contains."""
    if whole is not None:
        return "yes" if whole.caught else "no"
    return "yes (stateful)" if alone is not None and alone.caught else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names, e.g. M2,M9")
    parser.add_argument("--no-whole", action="store_true", help="run the stateful suite alone only")
    parser.add_argument(
        "--whole-if-missed",
        action="store_true",
        help="run the whole suite only for mutations the stateful suite alone missed",
    )
    parser.add_argument("--whole-only", action="store_true", help="run the whole suite only")
    parser.add_argument("--check", action="store_true", help="check every mutation applies, run nothing")
    opts = parser.parse_args()
    chosen = [m for m in MUTATIONS if opts.only is None or m.name in opts.only.split(",")]
    gone = [line for m in chosen for line in misses(m)]
    if gone:  # the engine moved on: re-point these before measuring anything
        sys.exit("not applicable, re-point:\n" + "\n".join(gone))
    if opts.check:
        print(f"all {len(chosen)} mutations apply")
        return
    rows = []
    caught_alone = caught_whole = usable = 0
    for mutation in chosen:
        usable += 1
        originals = mutate(mutation)
        try:
            alone = None
            if not opts.whole_only:
                alone = run([STATEFUL, "--hypothesis-profile=mutants"], STATEFUL_BOUND)
            skip_whole = opts.no_whole or (opts.whole_if_missed and alone is not None and alone.caught)
            whole = (
                None
                if skip_whole
                else run([*ENGINE_TESTS_FIRST, "--hypothesis-profile=mutants"], WHOLE_BOUND)
            )
        finally:
            for path, text in originals.items():
                path.write_text(text)
        caught_alone += alone is not None and alone.caught
        caught_whole += whole.caught if whole is not None else alone is not None and alone.caught
        rows.append(
            [
                mutation.name,
                mutation.what,
                "-" if alone is None else "yes" if alone.caught else "no",
                "-" if alone is None else f"{alone.seconds:.0f}",
                whole_cell(alone, whole),
                "-" if whole is None else f"{whole.seconds:.0f}",
                "; ".join(o.first for o in (alone, whole) if o is not None and o.first),
            ]
        )
        print(rows[-1], flush=True)
    print()
    header = [
        "",
        "mutation",
        "stateful alone",
        "s",
        "whole suite",
        "s",
        "first failed check (stateful; whole)",
    ]
    for row in [header, ["---"] * len(header), *rows]:  # a Markdown table, as docs/regression-suite.md has it
        print("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    by_whole = "-" if opts.no_whole else f"{caught_whole} of {usable}"
    by_alone = "-" if opts.whole_only else f"{caught_alone} of {usable}"
    print(f"\ncaught: stateful suite alone {by_alone}; whole suite {by_whole}")


if __name__ == "__main__":
    main()
