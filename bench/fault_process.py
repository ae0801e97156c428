"""Process faults: kill -9, Ctrl-C and SIGTERM at random moments, races on one journal, bad disks, scale.

Each function here is one fault: it sets up its sandbox, drives real
``headwater`` processes (signals sent with ``os.kill`` through
:class:`~faultbox.Process`), and returns what it observed for the checks.
Random moments come from the sandbox's seeded ``rng``.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fault_journal import old_journal
from fault_server import D2, LARGE, SMALL, D
from faultbox import KIB, LIMIT, MIB, Process, Sandbox, Skipped, blob, sha256, snapshot
from faultcheck import Case, Run, Want
from hostile import Reply, Served

# -- process faults: kills, signals, races ----------------------------------------


def usual(box: Sandbox, pace: float = 0.03, count: int = 4, tag: str = "") -> tuple[list[str], list[Want]]:
    """Mount ``count`` paced 256 KiB downloads and one paced 9 MiB one; their targets and wants."""
    served = [Served(f"{tag}s{i}.bin", blob(100 + i, SMALL), (Reply(pace=pace),)) for i in range(count)]
    served.append(Served(f"{tag}big.bin", blob(99, LARGE), (Reply(pace=pace / 10),)))
    return box.serve(served)


INTERRUPTED = frozenset({130, 143})


def signalled(
    box: Sandbox, argv: tuple[str, ...], sig: signal.Signals, within: tuple[float, float]
) -> Process:
    """Start ``headwater *argv``; once this fault's server has a new request, wait a random time
    ``within`` (seconds) and send ``sig``. The process is left to the caller to :meth:`~Process.finish`.
    """
    asked = box.server.requests(box.prefix)
    process = box.start(*argv)
    box.started(asked + 1)
    time.sleep(box.rng.uniform(*within))
    process.send(sig)
    return process


def interrupt_then_resume(sig: signal.Signals, twice: bool = False) -> Callable[[Sandbox], Case]:
    """``get`` gets ``sig`` at a random moment of its downloads; then ``resume`` must finish them."""

    def run(box: Sandbox) -> Case:
        targets, wants = usual(box)
        box.freeze()
        process = signalled(box, box.get(*targets), sig, (0.0, 1.5))
        if twice:
            time.sleep(0.05)
            process.send(sig)
        interrupted(process)
        note = after_kill(box, wants)
        box.headwater(*box.resume(), limit=60.0)
        return box.observe(wants, notes=[note])

    return run


def after_kill(box: Sandbox, wants: list[Want]) -> str:
    """Snapshot the destination for the checks (what a kill left); "3/5 left": how many had not completed."""
    box.midway.append(snapshot(box.dest))
    records, _ = box.status()
    done = {r.get("target") for r in records or [] if r.get("state") == "completed"}
    return f"{sum(1 for w in wants if w.target not in done)}/{len(wants)} left"


def interrupted(process: Process) -> Run:
    """Wait for a command the harness signalled: after SIGINT or SIGTERM, exit 130 or 143 and say so
    ("interrupted" for Ctrl-C, "terminated" for SIGTERM, as the documented messages do)."""
    if process.signals in ([], ["SIGKILL"]):  # none sent (it had ended), or no message possible
        return process.finish(LIMIT)
    says = ("terminated",) if process.signals[0] == "SIGTERM" else ("interrupted",)
    return process.finish(LIMIT, INTERRUPTED, says=says)


def interrupt_at_start(box: Sandbox) -> Case:
    """Ctrl-C while ``get`` is still starting up (loading plugins, opening the journal)."""
    targets, wants = usual(box)
    box.freeze()
    process = box.start(*box.get(*targets))
    time.sleep(box.rng.uniform(0.05, 0.4))
    process.send(signal.SIGINT)
    interrupted(process)
    box.headwater(*box.resume(), limit=60.0)
    return box.observe(wants)


def kill_resume_too(box: Sandbox) -> Case:
    """kill -9 a ``get``, then kill -9 the ``resume`` too; a last ``resume`` must finish everything."""
    targets, wants = usual(box)
    box.freeze()
    signalled(box, box.get(*targets), signal.SIGKILL, (0.0, 1.0)).finish(LIMIT)
    notes = [after_kill(box, wants)]
    signalled(box, box.resume(), signal.SIGKILL, (0.0, 1.0)).finish(LIMIT)
    notes.append(after_kill(box, wants))
    box.headwater(*box.resume(), limit=60.0)
    return box.observe(wants, notes=[" then ".join(notes)])


def two_gets_at_once(schema: int) -> Callable[[Sandbox], Case]:
    """Two ``get`` s started together on one journal (none yet, or one of an older ``schema``)."""

    def run(box: Sandbox) -> Case:
        if schema:
            old_journal(box.journal, schema)
        first, first_wants = usual(box, pace=0.0, count=2, tag="a")
        second, second_wants = usual(box, pace=0.0, count=2, tag="b")
        box.freeze()
        processes = [box.start(*box.get(*first)), box.start(*box.get(*second))]
        for process in processes:
            process.finish(LIMIT, frozenset({0}))
        return box.observe(first_wants + second_wants)

    return run


#: A process that opens a journal the moment a file appears, through the Python API, and says how it went.
OPENER = """
import os, sys
from headwater import SQLiteStore
journal, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    pass
try:
    SQLiteStore(journal).close()
except Exception as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
"""


def openers_at_once(schema: int, count: int = 4) -> Callable[[Sandbox], Case]:
    """``count`` processes open one journal (new, or of an older ``schema``) at the same instant.

    Issue item 4. They wait, spinning, for one file to appear, so they open
    within microseconds of each other; every one must succeed.
    """

    def run(box: Sandbox) -> Case:
        if schema:
            old_journal(box.journal, schema)
        go = box.root / "go"
        box.freeze()
        argv = [sys.executable, "-c", OPENER, str(box.journal), str(go)]
        began = time.monotonic()
        children = [
            subprocess.Popen(argv, env=box.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(count)
        ]
        box.processes.extend(children)
        for child in children:
            assert child.stdout is not None
            child.stdout.readline()
        go.write_text("")
        for child in children:
            try:
                out, err = child.communicate(timeout=LIMIT)
                code: int | None = child.returncode
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
                code = None
            box.runs.append(
                Run(
                    ("SQLiteStore(journal)",),
                    code,
                    out,
                    box.tidy(err),
                    time.monotonic() - began,
                    LIMIT,
                    allowed=frozenset({0}),
                    program="python",
                )
            )
        go.unlink()
        return box.observe([])

    return run


def two_resumes_at_once(box: Sandbox) -> Case:
    """After a kill -9, two ``resume`` s at once: each download runs once and lands whole."""
    targets, wants = usual(box)
    box.freeze()
    signalled(box, box.get(*targets), signal.SIGKILL, (0.2, 1.0)).finish(LIMIT)
    resumes = [box.start(*box.resume()), box.start(*box.resume())]
    for process in resumes:
        process.finish(60.0, frozenset({0}))
    return box.observe(wants)


def dead_beside_live(box: Sandbox) -> tuple[list[str], list[Want], Process]:
    """A ``get`` killed mid-way, then another ``get`` of other files started and downloading.

    Returns the dead one's targets, every wanted download, and the live ``get``.
    """
    dead_targets, dead_wants = usual(box, pace=0.05, count=3, tag="dead")
    live_targets, live_wants = usual(box, pace=0.2, count=1, tag="live")
    box.freeze()
    signalled(box, box.get(*dead_targets), signal.SIGKILL, (0.3, 0.3)).finish(LIMIT)
    asked = box.server.requests(box.prefix)
    live = box.start(*box.get(*live_targets))
    box.started(asked + 1)
    return dead_targets, dead_wants + live_wants, live


def resume_beside_live(box: Sandbox) -> Case:
    """Issue item 5: while another ``get`` runs, ``resume`` must run what a dead ``get`` left."""
    _, wants, live = dead_beside_live(box)
    box.headwater(*box.resume(), limit=60.0, allowed=frozenset({0}))
    finisher = len(box.runs) - 1
    live.finish(60.0, frozenset({0}))
    return box.observe(wants, finisher=finisher)


def cancel_beside_live(box: Sandbox) -> Case:
    """Issue item 5: while another ``get`` runs, ``cancel`` must cancel what a dead ``get`` left."""
    dead_targets, wants, live = dead_beside_live(box)
    records, _ = box.status()
    left = [r for r in records or [] if r["state"] in ("queued", "running") and r["target"] in dead_targets]
    if left:
        box.headwater("cancel", str(left[0]["id"]), limit=LIMIT, allowed=frozenset({0}))
        wants = [w for w in wants if w.target != left[0]["target"]]
    live.finish(60.0, frozenset({0}))
    box.headwater(*box.resume(), limit=60.0)
    return box.observe(wants)


def resume_elsewhere(box: Sandbox) -> Case:
    """``get --dest X`` is killed; ``resume`` (no --dest, as its message says) runs in another folder."""
    targets, wants = usual(box)
    box.freeze()
    signalled(box, box.get(*targets), signal.SIGKILL, (0.0, 0.5)).finish(LIMIT)
    box.headwater("resume", "-q", limit=60.0)
    return box.observe(wants)


# -- destinations and disks -----------------------------------------------------------


def read_only_destination(box: Sandbox) -> Case:
    """The destination cannot be written: a clear error, nothing lost, no hang."""
    box.dest.rmdir()
    if not box.mount_tmpfs(box.dest, "ro,size=1m"):
        box.dest.mkdir()
        box.dest.chmod(0o555)
    targets, wants = box.serve([Served("a.bin", D, deliver=False)])
    box.freeze()
    box.headwater(*box.get(*targets), limit=LIMIT)
    return box.observe(wants, words=("read-only", "permission"))


def unusable_destination(inside: bool) -> Callable[[Sandbox], Case]:
    """``--dest`` is a file, or (``inside``) a folder under one (issue item 9): a message, no traceback.

    A destination that is a file is refused by the option's check (exit 2);
    one under a file cannot be created, which may be found later (exit 1 or 2).
    """

    def run(box: Sandbox) -> Case:
        blocker = box.plant(box.root / "work" / "afile", b"a file, not a folder\n")
        targets, wants = box.serve([Served("a.bin", D, deliver=False)])
        box.freeze()
        dest = blocker / "sub" if inside else blocker
        box.headwater(
            "get",
            "http",
            *targets,
            "--dest",
            str(dest),
            "-q",
            limit=LIMIT,
            allowed=frozenset({1, 2} if inside else {2}),
            says=("afile",),
        )
        return box.observe(wants)

    return run


def read_only_home(box: Sandbox) -> Case:
    """``HEADWATER_HOME`` cannot be written, so there can be no journal: refuse clearly (exit 3)."""
    if not box.mount_tmpfs(box.home, "ro,size=1m"):
        box.home.chmod(0o555)
    targets, wants = box.serve([Served("a.bin", D, deliver=False)])
    box.freeze()
    box.headwater(*box.get(*targets), limit=LIMIT, allowed=frozenset({3}), says=("journal",))
    return box.observe(wants)


def full_destination(box: Sandbox) -> Case:
    """The destination is a 2 MiB disk; a 4 MiB download fills it."""
    if not box.mount_tmpfs(box.dest, "size=2m"):
        raise Skipped("cannot mount a tmpfs (not root): no full disk to try")
    served = [
        Served("big.bin", blob(7, 4 * MIB), deliver=False),
        Served("small.bin", blob(8, 100 * KIB), deliver=False),
    ]
    targets, wants = box.serve(served)
    box.freeze()
    box.headwater(*box.get(*targets), limit=LIMIT)
    return box.observe(wants, words=("space",))


def full_home(box: Sandbox) -> Case:
    """The journal's disk fills up after a first download: ``status`` must still read it (issue item 9)."""
    if not box.mount_tmpfs(box.home, "size=2m"):
        raise Skipped("cannot mount a tmpfs (not root): no full disk to try")
    first, first_wants = box.serve([Served("first.bin", D)])
    box.headwater(*box.get(*first), limit=LIMIT)
    fill(box.home / "filler")
    second, second_wants = box.serve([Served("second.bin", D2, deliver=False)])
    box.freeze()
    box.headwater(*box.get(*second), limit=LIMIT, allowed=frozenset({0, 1, 3}))
    return box.observe(first_wants + second_wants)


def fill(path: Path) -> None:
    """Write ``path`` until its disk is full."""
    with path.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * MIB)
                out.flush()
        except OSError:
            pass


# -- many targets -------------------------------------------------------------------


def journaled(journal: Path) -> int:
    """How many records the journal holds, read with plain SQLite (0 while it cannot be read)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.Error:
        return 0


def many_targets(count: int, kill: bool = False) -> Callable[[Sandbox], Case]:
    """``count`` small local files in one ``get file`` (if ``kill``: killed at a random moment, resumed)."""

    def run(box: Sandbox) -> Case:
        contents = [b"%d\n" % i * 8 for i in range(count)]
        wants = [
            Want(f"f{i:05d}", frozenset({sha256(data)}), True, f"f{i:05d}") for i, data in enumerate(contents)
        ]
        for wanted, data in zip(wants, contents, strict=True):
            (box.src / wanted.target).write_bytes(data)
        box.freeze()
        argv = box.get(*(w.target for w in wants), source="file")
        if not kill:
            done = box.headwater(*argv, limit=600.0, cwd=box.src)
            return box.observe(wants, notes=[f"{count:,} targets in {done.seconds:.1f} s"])
        process = box.start(*argv, cwd=box.src)
        deadline = time.monotonic() + 120
        while journaled(box.journal) < count and process.running() and time.monotonic() < deadline:
            time.sleep(0.1)  # until every download is accepted (in the journal)
        time.sleep(box.rng.uniform(0.0, 10.0))
        process.send(signal.SIGKILL)
        process.finish(600.0)
        left = after_kill(box, wants)
        done = box.headwater(*box.resume(), limit=600.0, cwd=box.src)
        return box.observe(wants, notes=[f"{left}, resumed in {done.seconds:.1f} s"])

    return run
