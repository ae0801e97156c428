"""Store benchmarks: the cost of history, and the cost of journaling.

``history`` (issue 14): with 0, 100,000 and 1,000,000 ended downloads in the
journal, the wall time and peak memory (the child process's peak RSS, from
``wait4``) of the command line, run as a user runs it (the ``headwater``
console script beside this interpreter): ``headwater get`` of one small
file (the file source), ``status`` (the latest 100), ``status --json``, and
``status --all --json`` streamed into /dev/null; ``--version`` is the floor
(the interpreter and headwater's imports, no journal), with Python's
byte-code cached as an installed package has it. ``status`` is timed
again ``--runs`` times on each journal, with ``python -c pass`` (the bare
interpreter), each run of each in turn: their minimum and median, the
figure a user timing ``headwater status`` sees. With ``--instructions``,
also the instructions each of those runs (valgrind's callgrind, which
counts them whatever the machine's load). Also, in this process,
the time of the page read itself (the latest 100 through ``JournalReader``)
and of opening the journal, taking over (none) and closing it: what a start
costs the store.
Each figure is the median of ``--rounds`` runs (the streamed ``--all``
runs once), on warm page cache; each round runs every command on every
journal in turn, so that a change of the machine's load meets them all
alike. The journals are built once, by direct SQL
inserts of encoded records, and cached in ``--cache`` (default
``$TMPDIR/headwater-bench-store``; 0.85 GB at 1,000,000); the record
``get`` adds is removed after each run, through headwater, so the journal
stays sealed (see docs/persistence.md, Bad files).

``startup``: ``headwater status`` (the latest 100) on one journal, and
``python -c pass`` and ``--version`` as floors, each run of each in turn,
this checkout's code against another's (``--base``, e.g. main's): the best
and the median of the wall and the CPU time, with the load average.

``drain``: 50,000 jobs over 4 sources of concurrency 2 whose download
sleeps 5 ms (bench/engine.py's), run in one process on three stores in
turn: the in-memory store; a control that releases the GIL once per state
change (``time.sleep(0)``) where SQLite would write; SQLiteStore. Also the
mean time of one state commit from one thread, without contention, and the
pages one state commit writes to the WAL (counted).

    python bench/store.py history [--sizes 0 100000 1000000] [--rounds 3] [--runs 30] [--instructions]
                                  [--cache DIR]
    python bench/store.py startup [--base CHECKOUT] [--size 1000000] [--runs 30] [--cache DIR]
    python bench/store.py drain [--jobs 50000] [--sources 4] [--concurrency 2] [--sleep 0.005]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).parent))

from engine import run_workload  # noqa: E402  (bench/engine.py)
from table import print_table

from headwater import MemoryStore, Record, RecordStore, SQLiteStore, State  # noqa: E402
from headwater._codec import encode  # noqa: E402
from headwater._reader import JournalReader  # noqa: E402
from headwater._schema import SCHEMA_VERSION  # noqa: E402

# -- history -------------------------------------------------------------------------

YEAR = 365 * 24 * 3600.0
_BATCH = 10_000


def _history_record(i: int, made: float, draw: random.Random) -> Record:
    """The ``i``-th ended download of a year of use: mostly completed files, some failed, a few cancelled."""
    source = ("http", "file", "ytdlp")[i % 3]
    name = f"artist-{draw.randrange(2000)}/album-{draw.randrange(20)}/track-{i:07d}.flac"
    roll = draw.random()
    state = State.COMPLETED if roll < 0.90 else State.FAILED if roll < 0.97 else State.CANCELLED
    done = state is State.COMPLETED
    size = draw.randrange(2_000_000, 60_000_000)
    return Record(
        id=f"{int(made * 1000):012x}{draw.getrandbits(80):020x}",
        source=source,
        target=f"https://music.example.org/{name}" if source == "http" else name,
        display_name=None,
        username=source,
        state=state,
        created_at=made,
        updated_at=made + 5.0,
        progress=100.0 if done else 0.0,
        size=size,
        transferred=size if done else 0,
        file_path=f"/home/me/Music/{name}" if done else None,
        error="TransferError: HTTP 404 Not Found" if state is State.FAILED else None,
        attempts=1,
        started_at=made + 0.01,
        finished_at=made + 5.0,
        dest_dir="/home/me/Music",
    )


def build_journal(home: Path, count: int) -> Path:
    """The journal in ``home`` holding ``count`` ended downloads made over the last year; built once."""
    journal = home / "journal.sqlite3"
    done = home / "built"
    if done.exists():
        return journal
    home.mkdir(parents=True, exist_ok=True)
    journal.unlink(missing_ok=True)
    SQLiteStore(journal).close()  # the schema, as headwater makes it
    draw = random.Random(count)
    start = time.time() - YEAR - 60
    step = YEAR / max(count, 1)
    t0 = time.perf_counter()
    with closing(sqlite3.connect(journal, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        for first in range(0, count, _BATCH):
            rows = []
            for i in range(first, min(first + _BATCH, count)):
                r = _history_record(i, start + i * step, draw)
                rows.append((r.id, r.source, r.state.value, r.created_at, r.updated_at, encode(r), "bench"))
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    done.write_text(f"{count} records, built in {time.perf_counter() - t0:.0f} s\n")
    return journal


def run_child(args: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``args`` run as a child process, its output thrown away.

    Raises RuntimeError, with its stderr, if it exits with an error.
    """
    took, peak, _ = run_timed(args, env)
    return took, peak


#: A small process that starts each measured child (one JSON request a line on stdin: the
#: arguments, the environment, a file for its stderr; one JSON answer a line: wall seconds,
#: peak RSS in KiB, CPU seconds, exit status). A child's peak RSS counts the process it was
#: forked from (its pages, until it execs): started from this benchmark, which holds journals'
#: records, every child would weigh what this process weighs.
_SPAWNER = """
import json, os, sys, time
for line in sys.stdin:
    args, env, err = json.loads(line)
    actions = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_TRUNC, 0)]
    t0 = time.perf_counter()
    pid = os.posix_spawn(args[0], args, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    took = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps([took, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, code]), flush=True)
"""
_spawner: subprocess.Popen[str] | None = None


def run_timed(args: Sequence[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of ``args`` run as a child, as :func:`run_child`."""
    global _spawner
    if _spawner is None:
        _spawner = subprocess.Popen(
            [sys.executable, "-S", "-c", _SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
    assert _spawner.stdin is not None and _spawner.stdout is not None
    with tempfile.NamedTemporaryFile() as err:
        _spawner.stdin.write(json.dumps([list(args), env, err.name]) + "\n")
        _spawner.stdin.flush()
        took, peak_kib, cpu, code = json.loads(_spawner.stdout.readline())
        if code:
            raise RuntimeError(f"{' '.join(args)} exited {code}: {Path(err.name).read_text()[-2000:]}")
    return took, peak_kib / 1024, cpu  # ru_maxrss is in KiB on Linux


def instructions(args: Sequence[str], env: dict[str, str]) -> int:
    """The instructions ``args`` runs, counted by valgrind's callgrind (the child's output thrown away)."""
    counted = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    (line,) = [line for line in counted.stderr.splitlines() if "I   refs:" in line]
    return int(line.split(":")[1].replace(",", ""))


def forget_new(journal: Path, count: int) -> None:
    """Remove what a ``get`` added (the latest record), through headwater, so the journal stays sealed."""
    store = SQLiteStore(journal)
    try:
        (added,) = store.page(limit=1)
        store.delete(added.id)
    finally:
        store.close()
    assert _count(journal) == count


def open_journal(journal: Path, rounds: int) -> float:
    """Median seconds, in this process, to open the journal, take over (nothing) and close it."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        store = SQLiteStore(journal)
        store.take_over(["file"])
        store.paused()
        store.close()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def page_read(journal: Path, rounds: int) -> float:
    """Median seconds, in this process, to read and decode the latest 101 records (a status page)."""
    reader = JournalReader(journal)
    expected = min(101, _count(journal))
    times = []
    for _ in range(max(rounds, 20) + 1):  # a millisecond each: enough of them to see past the noise
        t0 = time.perf_counter()
        read = len(list(reader.records(limit=101)))
        times.append(time.perf_counter() - t0)
        assert read == expected
    return statistics.median(times[1:])


def _count(journal: Path) -> int:
    with closing(sqlite3.connect(journal)) as conn:
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])


def history(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    print(f"journals cached in {cache}", file=sys.stderr)
    small = cache / "song.flac"
    cache.mkdir(parents=True, exist_ok=True)
    small.write_bytes(os.urandom(10_000))
    script = Path(sys.executable).with_name("headwater")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "headwater.cli"]
    print(f"the command: {' '.join(cli)}", file=sys.stderr)
    out = str(cache / "out")
    commands = {
        "--version (the floor)": ["--version"],
        "get one small file": ["get", "file", str(small), "--dest", out, "--existing=overwrite"],
        "status": ["status"],
        "status --json": ["status", "--json"],
        "status --all --json": ["status", "--all", "--json"],
    }
    # As installed: Python's byte-code of headwater cached (an environment that forbids writing
    # it would have every start compile headwater's modules from source).
    installed = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    journals: dict[int, tuple[Path, dict[str, str]]] = {}
    sizes_mb: list[float] = []
    for size in args.sizes:
        home = cache / f"schema{SCHEMA_VERSION}-{size}"
        journal = build_journal(home, size)
        print(f"{size:,} records: {(home / 'built').read_text().strip()}", file=sys.stderr)
        env = {**installed, "HEADWATER_HOME": str(home), "HEADWATER_LOAD_PLUGINS": "file"}
        journals[size] = (journal, env)
        sizes_mb.append(journal.stat().st_size / 1e6)
        SQLiteStore(journal).close()  # checked and sealed, as a journal only headwater wrote is
        run_child([*cli, "status"], env)  # warm the page cache
    journal, env = journals[args.sizes[0]]
    run_child([*cli, *commands["get one small file"]], env)  # and write the byte-code of what get imports
    forget_new(journal, args.sizes[0])
    # Interleaved: each round runs every command on every journal in turn, so that a change of
    # the machine's load meets every figure alike.
    runs: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for size, (journal, env) in journals.items():
            for name, command in commands.items():
                if "--all" in command and round_:
                    continue
                runs.setdefault((size, name), []).append(run_child([*cli, *command], env))
                if command[0] == "get":
                    forget_new(journal, size)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for size in args.sizes:
        for name in commands:
            timed = runs[(size, name)]
            results[name].append((statistics.median(t for t, _ in timed), max(m for _, m in timed)))
            print(
                f"  {size:,}: {name}: {results[name][-1][0]:.3f} s, {results[name][-1][1]:.0f} MB",
                file=sys.stderr,
            )
    bare = {"python -c pass": ([sys.executable, "-c", "pass"], installed)}
    status = {size: ([*cli, "status"], env) for size, (_, env) in journals.items()}
    walls: dict[object, list[float]] = {}
    for _ in range(args.runs):  # one run of each in turn, as above
        for key, (command, env) in [*bare.items(), *status.items()]:
            walls.setdefault(key, []).append(run_child(command, env)[0])
    counts = (
        {key: instructions(command, env) for key, (command, env) in bare.items()} if args.instructions else {}
    )
    if args.instructions:
        counts.update((size, instructions(command, env)) for size, (command, env) in status.items())
    pages = [page_read(journal, args.rounds) for journal, _ in journals.values()]
    opens = [open_journal(journal, args.rounds) for journal, _ in journals.values()]

    targets = {
        "get one small file": "<= 1.2x the empty journal's",
        "status": "< 0.1 s",
    }
    rows: list[list[object]] = [["ended downloads", *(f"{s:,}" for s in args.sizes), "target"]]
    rows.append(["journal size (MB)", *(f"{m:.1f}" for m in sizes_mb), ""])
    for name in commands:
        rows.append([f"{name}: time (s)", *(f"{t:.3f}" for t, _ in results[name]), targets.get(name, "")])
        rows.append([f"{name}: peak RSS (MB)", *(f"{m:.0f}" for _, m in results[name]), "flat"])
    gets = [t for t, _ in results["get one small file"]]
    rows.append(["get: time over empty", *(f"{t / gets[0]:.2f}x" for t in gets), "<= 1.2x"])
    for name, pick in (("min", min), ("median", statistics.median)):
        rows.append(
            [f"status, {name} of {args.runs} (s)", *(f"{pick(walls[s]):.3f}" for s in args.sizes), "< 0.1 s"]
        )
    if counts:
        rows.append(["status: instructions (M)", *(f"{counts[s] / 1e6:.0f}" for s in args.sizes), ""])
        rows.append(
            [
                "python -c pass: instructions (M)",
                f"{counts['python -c pass'] / 1e6:.0f}",
                *([""] * len(args.sizes)),
            ]
        )
    python = walls["python -c pass"]
    bare_python = f"{min(python):.3f} / {statistics.median(python):.3f}"
    rows.append(["python -c pass: min / median (s)", bare_python, *([""] * len(args.sizes))])
    floor = results["--version (the floor)"]
    for name in ("get one small file", "status"):
        over = [s - f for (s, _), (f, _) in zip(results[name], floor, strict=True)]
        rows.append([f"{name.split()[0]} over the floor (s)", *(f"{t:.3f}" for t in over), ""])
    rows.append(["page of 100, in process (ms)", *(f"{p * 1000:.1f}" for p in pages), ""])
    rows.append(["open, take over, close, in process (ms)", *(f"{o * 1000:.1f}" for o in opens), ""])
    header, *body = rows
    print_table([str(c) for c in header], body)


# -- startup ---------------------------------------------------------------------------

#: A child that runs the ``headwater`` command of the checkout whose ``core`` folder is argv[1],
#: through its entry point, as the console script does: ``-c`` code, so that two checkouts run alike.
_ENTRY = (
    "import sys; core = sys.argv.pop(1); sys.path.insert(0, core); sys.argv[0] = 'headwater'; "
    "from _headwater_entry import main; main()"
)


def startup(args: argparse.Namespace) -> None:
    """``status`` of the latest 100 on one journal, alternating this checkout's code with ``--base``'s.

    Each run of each command in turn, ``--runs`` times: ``python -c pass``,
    ``--version``, ``status`` and ``get`` of one small file (its record
    removed after each) of this checkout (``core`` beside this
    file) and of the checkout ``--base`` names (its ``core`` first on
    ``sys.path``), and the ``headwater`` script beside this interpreter.
    Prints the best and the median of the wall time and of the CPU time
    (the child's user and system time), the highest peak RSS, and the load
    average before and after: under load the CPU time is the steadier figure.
    """
    cache = Path(args.cache)
    home = cache / f"schema{SCHEMA_VERSION}-{args.size}"
    journal = build_journal(home, args.size)
    SQLiteStore(journal).close()  # checked and sealed, as a journal only headwater wrote is
    installed = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = {**installed, "HEADWATER_HOME": str(home), "HEADWATER_LOAD_PLUGINS": "file"}
    cores = {"this": Path(__file__).resolve().parent.parent / "core"}
    if args.base:
        cores["base"] = Path(args.base).resolve() / "core"
    small = cache / "song.flac"
    small.write_bytes(os.urandom(10_000))
    get = ["get", "file", str(small), "--dest", str(cache / "out"), "--existing=overwrite"]
    commands: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"]}
    for name, core in cores.items():
        for what in (["--version"], ["status"], get):
            commands[f"{name}: headwater {what[0]}"] = [sys.executable, "-c", _ENTRY, str(core), *what]
    script = Path(sys.executable).with_name("headwater")
    if script.exists():
        commands["the headwater script: status"] = [str(script), "status"]
    for command in commands.values():  # warm the page cache, and write the byte-code
        run_timed(command, env)
        if "get" in command:
            forget_new(journal, args.size)
    load_before = os.getloadavg()
    timed: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            timed[name].append(run_timed(command, env))
            if "get" in command:
                forget_new(journal, args.size)
    load_after = os.getloadavg()
    rows = []
    for name, runs in timed.items():
        walls, cpus = [t for t, _, _ in runs], [c for _, _, c in runs]
        times = (f"{f(v) * 1000:.1f}" for v in (walls, cpus) for f in (min, statistics.median))
        rows.append([name, *times, f"{max(m for _, m, _ in runs):.1f}"])
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
    print(
        f"{args.size:,} records; {args.runs} runs of each in turn; load average {before} before, "
        f"{after} after"
    )
    print_table(["ms", "wall best", "wall median", "CPU best", "CPU median", "peak RSS (MB)"], rows)


# -- drain ---------------------------------------------------------------------------


class YieldingStore(MemoryStore):
    """Keeps nothing, but lets other threads run at each state change, as a SQLite write does."""

    def commit(self, records: Sequence[Record]) -> None:
        time.sleep(0)


def drain(dest: Path, store: RecordStore | None, args: argparse.Namespace) -> tuple[float, float]:
    """(submit seconds, drain seconds) of the workload on ``store``."""
    submit_s, drain_s, _ = run_workload(dest, args, store=store)
    return submit_s, drain_s


def commit_latency(journal: Path, count: int = 10_000) -> float:
    """Mean seconds of one state commit (an upsert of one record), from one thread, no contention."""
    store = SQLiteStore(journal)
    now = time.time()
    records = [Record(f"{i:032x}", "s", f"t{i}", None, "s", State.RUNNING, now, now) for i in range(count)]
    t0 = time.perf_counter()
    for record in records:
        store.commit((record,))
    took = time.perf_counter() - t0
    store.close()
    return took / count


def pages_per_commit(journal: Path, count: int = 1_000) -> float:
    """WAL pages written per state commit (QUEUED -> RUNNING -> COMPLETED) of a journaled record.

    Counted, not timed: the frames the WAL holds after the commits, with the
    flusher's checkpoints out of the way (it never runs here), and few
    enough commits that no writer checkpoints (at 8,192 pages) meanwhile.
    """
    store = SQLiteStore(journal, flush_interval=3600)
    now = time.time()
    queued = [
        Record(f"{int(now * 1000) + i:012x}{i:020x}", "s", f"t{i}", None, "s", State.QUEUED, now + i, now)
        for i in range(count)
    ]
    for record in queued:
        store.add(record)
    store.flush()
    with closing(sqlite3.connect(journal)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for state in (State.RUNNING, State.COMPLETED):
            for record in queued:
                store.commit((attrs.evolve(record, state=state),))
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    store.close()
    return float(frames) / (2 * count)


def drain_table(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "dest"
        dest.mkdir()
        (dest / "done").write_bytes(b"")
        journal = Path(tmp) / "journal.sqlite3"
        mem_submit, mem_drain = drain(dest, None, args)
        yield_submit, yield_drain = drain(dest, YieldingStore(), args)
        sql_submit, sql_drain = drain(dest, SQLiteStore(journal), args)
        size = journal.stat().st_size
        latency = commit_latency(Path(tmp) / "latency.sqlite3")
        pages = pages_per_commit(Path(tmp) / "pages.sqlite3")
    ideal = args.jobs * args.sleep / (args.sources * args.concurrency)

    def over(drain: float) -> str:
        return f"{(drain / mem_drain - 1) * 100:+.1f}%"

    rows = [
        ("jobs", f"{args.jobs:,}", f"{args.jobs:,}", f"{args.jobs:,}", ""),
        (
            "submit rate (jobs/s)",
            *(f"{args.jobs / t:,.0f}" for t in (mem_submit, yield_submit, sql_submit)),
            "",
        ),
        ("drain time (s)", *(f"{t:.2f}" for t in (mem_drain, yield_drain, sql_drain)), f"ideal {ideal:.2f}"),
        ("drain over memory", "", over(yield_drain), over(sql_drain), "sqlite <= +10%"),
        ("journal size (MB)", "", "", f"{size / 1e6:.1f}", ""),
        ("one commit, one thread (us)", "", "", f"{latency * 1e6:.0f}", ""),
        ("WAL pages per state commit", "", "", f"{pages:.2f}", ""),
    ]
    print_table(("measure", "memory", "yield", "sqlite", "target"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    old = commands.add_parser("history", help="the command line against journals of 0 to 1,000,000 records")
    old.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    old.add_argument("--rounds", type=int, default=3)
    old.add_argument("--runs", type=int, default=30, help="runs of status and of bare python, timed alone")
    old.add_argument("--instructions", action="store_true", help="count their instructions (valgrind)")
    old.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "headwater-bench-store"))
    start = commands.add_parser("startup", help="status on one journal, this code against --base's")
    start.add_argument("--base", help="another checkout (its root, with core/) to alternate with")
    start.add_argument("--size", type=int, default=1_000_000)
    start.add_argument("--runs", type=int, default=30)
    start.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "headwater-bench-store"))
    work = commands.add_parser("drain", help="the engine workload on the memory store and on SQLite")
    for name, default in (("jobs", 50_000), ("sources", 4), ("concurrency", 2), ("sleep", 0.005)):
        work.add_argument(f"--{name}", type=type(default), default=default)
    args = parser.parse_args()
    if args.command == "history":
        history(args)
    elif args.command == "startup":
        startup(args)
    else:
        drain_table(args)


if __name__ == "__main__":
    main()
