"""The checks of the fault script: what a fault left behind, judged against independent truth.

The truth is never headwater's own word: the bytes a completed download must
hold are the ones the harness's server meant to serve (or the local files it
wrote), hashed before the fault ran; the folders are snapshotted before and
after; the records are read back with ``headwater status --json``. Each
check is one function from a :class:`Case` to the :class:`Problem` s it
sees, and :data:`CHECKS` lists them all.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

#: The kinds of problem, in the order of the table's columns.
LOST, CORRUPT, REPLACED, OUTSIDE, HANG, MESSAGE, JOURNAL, LEFTOVER = (
    "lost",
    "corrupt",
    "replaced",
    "outside",
    "hang",
    "message",
    "journal",
    "leftover",
)
KINDS = (LOST, CORRUPT, REPLACED, OUTSIDE, HANG, MESSAGE, JOURNAL, LEFTOVER)

Record = dict[str, object]


@attrs.define
class Run:
    """One command the fault ran, and how it ended.

    Attributes:
        argv: the arguments after the program's name.
        code: its exit status (negative: the signal that ended it); None if it had to be killed.
        out, err: what it printed.
        seconds: how long it ran.
        limit: the seconds it was given before it counted as hung.
        signals: the signals the harness sent it on purpose, by name, in order.
        allowed: the exit statuses this step may end with; None leaves it to the checks.
        says: when given, stderr must contain one of these words (case-insensitive).
        program: what ran: ``headwater``, or a Python snippet or engine driven in process.
    """

    argv: tuple[str, ...]
    code: int | None
    out: str
    err: str
    seconds: float
    limit: float
    signals: tuple[str, ...] = ()
    allowed: frozenset[int] | None = None
    says: tuple[str, ...] = ()
    program: str = "headwater"

    @property
    def hung(self) -> bool:
        return self.code is None

    @property
    def killed(self) -> bool:
        """Ended by the SIGKILL the harness sent on purpose (no message to judge)."""
        return "SIGKILL" in self.signals and self.code == -signal.SIGKILL

    def show(self) -> str:
        """The command as a user would type it, shortened."""
        if self.program == "engine":
            return "the source's later downloads"
        words = " ".join(_short(a) for a in self.argv[:4]) + (" ..." if len(self.argv) > 4 else "")
        return f"`{self.program} {words}`"


def _short(arg: str) -> str:
    if "://" in arg:
        return arg.split("/")[-1][:40] or arg[:40]
    return Path(arg).name[:40] if os.sep in arg else arg[:40]


@attrs.frozen
class Want:
    """A download the user asked for.

    Attributes:
        target: the target as given to headwater (its record is found by it).
        versions: sha256 digests of the contents a completed download of it may hold.
        deliver: a correct client completes it, so ending any other way loses it;
            False when failing with a clear error is right too.
        name: how the failure list calls it.
    """

    target: str
    versions: frozenset[str]
    deliver: bool
    name: str


@attrs.frozen
class Problem:
    """One thing a check found wrong: its kind (a column of the table) and what happened."""

    kind: str
    text: str


@attrs.define
class Case:
    """What one fault did and left behind: the input of every check.

    Attributes:
        wants: the downloads the user asked for.
        runs: every command run, in order.
        records: the journal as ``headwater status --json`` printed it; None if it could not.
        journal_error: why ``status`` failed (or what it printed on stderr).
        before, after: snapshots (path -> sha256) of the fault's folder around the fault.
        planted: files that existed before the fault and must be there unchanged after it.
        dest, home: the destination and ``HEADWATER_HOME``; writes there are not outside writes.
        words: a failed download's error must name one of these (case-insensitive); () checks nothing.
        finisher: index in ``runs`` of the command after which every wanted download must have
            ended (completed, or failed where failing is right); None: the last command, if it
            ended by itself.
        damaged: the sha256 of the journal as the fault damaged it on purpose ("" when it is not a
            file), or None; such a journal may be refused, but must then be left as it is.
        midway: snapshots of the destination taken during the fault (right after a kill), whose
            files at final paths must be whole too.
        notes: what the fault measured, for the report.
    """

    wants: list[Want]
    runs: list[Run]
    records: list[Record] | None
    journal_error: str
    before: dict[Path, str]
    after: dict[Path, str]
    planted: dict[Path, str]
    dest: Path
    home: Path
    words: tuple[str, ...] = ()
    finisher: int | None = None
    damaged: str | None = None
    midway: list[dict[Path, str]] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    _by_target: dict[object, list[Record]] = attrs.field(init=False, factory=lambda: defaultdict(list))

    def __attrs_post_init__(self) -> None:
        for record in self.records or []:
            self._by_target[record.get("target")].append(record)

    def records_of(self, want: Want) -> list[Record]:
        """The records of ``want``'s target, oldest first (none when the journal could not be read)."""
        return [] if self.records is None else self._by_target.get(want.target, [])

    def completed(self) -> list[tuple[Want, Record]]:
        return [(w, r) for w in self.wants for r in self.records_of(w) if r.get("state") == "completed"]

    def digest(self, path: object) -> str | None:
        """The sha256 of the file at ``path`` after the fault, or None if there is none."""
        return self.after.get(Path(str(path))) if path else None


def _clip(text: object, width: int = 120) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def check_hangs(case: Case) -> list[Problem]:
    """A command that had not ended when its time was up."""
    return [
        Problem(HANG, f"{run.show()} still running after {run.limit:g} s (killed)")
        for run in case.runs
        if run.hung
    ]


def check_lost(case: Case) -> list[Problem]:
    """A wanted download that neither completed nor stays resumable.

    Resumable means QUEUED or RUNNING in the journal, as long as no command
    that should have finished it has run since. A download with no record
    was never accepted, unless a command given it exited 0 (then it is
    lost); a command that refused it is judged by :func:`check_messages`.
    """
    problems = []
    finisher = _finisher(case)
    for want in case.wants:
        records = case.records_of(want)
        if case.records is None or any(r.get("state") == "completed" for r in records):
            continue
        if not records:
            if any(run.code == 0 and want.target in run.argv for run in case.runs):
                problems.append(
                    Problem(LOST, f"{want.name}: no record in the journal, yet the command exited 0")
                )
            continue
        record = records[-1]
        state = record.get("state")
        if state in ("queued", "running"):
            if finisher is not None:
                problems.append(
                    Problem(
                        LOST, f"{want.name}: still {state} after {finisher.show()} ended ({_said(finisher)})"
                    )
                )
        elif want.deliver:
            error = _clip(record.get("error"), 100)
            problems.append(Problem(LOST, f"{want.name}: {state}" + (f": {error}" if error else "")))
    return problems


def _finisher(case: Case) -> Run | None:
    """The command after which every wanted download must have ended, if it ran to its end.

    By default the last command, when it is a ``resume`` or exited 0; a
    ``get`` that gave up (a timeout, a refusal) leaves what it queued
    resumable.
    """
    if not case.runs:
        return None
    run = case.runs[case.finisher] if case.finisher is not None else case.runs[-1]
    if run.hung or run.signals:
        return None
    return run if case.finisher is not None or run.argv[0] == "resume" or run.code == 0 else None


def _said(run: Run) -> str:
    """How ``run`` ended: its exit status and last line (of stderr if it failed and said something)."""
    said = run.err if run.code != 0 and run.err.strip() else run.err + "\n" + run.out
    lines = [line for line in said.splitlines() if line.strip()]
    return f"exit {_shell_code(run.code)}" + (f": {_clip(lines[-1], 110)}" if lines else "")


def check_corrupt(case: Case) -> list[Problem]:
    """A COMPLETED download whose file does not hold exactly its bytes; a final file no server sent whole."""
    problems = []
    for want, record in case.completed():
        digest = case.digest(record.get("file_path"))
        if digest is None:
            problems.append(
                Problem(
                    CORRUPT,
                    f"{want.name}: COMPLETED, but its file {_name(record.get('file_path'))} is gone",
                )
            )
        elif digest not in want.versions:
            whose = next((w.name for w in case.wants if digest in w.versions), None)
            held = f"{whose}'s bytes" if whose else "bytes the server never sent as one resource"
            problems.append(Problem(CORRUPT, f"{want.name}: COMPLETED, but its file holds {held}"))
    known = {v for want in case.wants for v in want.versions}
    named = {Path(str(r.get("file_path"))) for _, r in case.completed()}
    seen: set[Path] = set()
    for when, files in [*(("after a kill", m) for m in case.midway), ("at the end", case.after)]:
        for path, digest in files.items():
            if not _inside(path, case.dest) or path in case.planted or path in seen:
                continue
            if when == "at the end" and path in named:
                continue
            if path.name.endswith((".part", ".part.json")) or digest.startswith(("link:", "special:")):
                continue
            if digest not in known:
                seen.add(path)
                problems.append(
                    Problem(CORRUPT, f"{_name(path)}: {when}, a file at a final path that is not whole")
                )
    return problems


def check_replaced(case: Case) -> list[Problem]:
    """A file that existed before, or another download's completed file, overwritten or deleted."""
    problems = []
    for path, digest in case.planted.items():
        now = case.after.get(path)
        if now != digest:
            how = "deleted" if now is None else "overwritten"
            problems.append(Problem(REPLACED, f"{path.name[:60]}, which was there before, was {how}"))
    by_path: dict[str, list[Want]] = defaultdict(list)
    for want, record in case.completed():
        by_path[str(record.get("file_path"))].append(want)
    for shared, wants in by_path.items():
        contents = {frozenset(w.versions) for w in wants}
        if len(wants) > 1 and len(contents) > 1:
            names = ", ".join(w.name for w in wants)
            problems.append(
                Problem(
                    REPLACED,
                    f"{len(wants)} COMPLETED downloads ({names}) share one file {Path(shared).name[:40]}",
                )
            )
    return problems


def check_outside(case: Case) -> list[Problem]:
    """A file created, changed or deleted outside the destination (and the journal's home)."""
    problems = []
    for path in sorted(set(case.before) | set(case.after)):
        if _inside(path, case.dest) or _inside(path, case.home):
            continue
        was, now = case.before.get(path), case.after.get(path)
        if was != now:
            how = "created" if was is None else "deleted" if now is None else "changed"
            problems.append(
                Problem(OUTSIDE, f"{path.name[:60]} {how} in {path.parent.name}/, outside the destination")
            )
    return problems


def check_messages(case: Case) -> list[Problem]:
    """A command with a traceback, a wrong exit status, or no (or the wrong) message; a vague error.

    One problem per command at most; and one per failed download whose
    error names none of the fault's words.
    """
    problems = []
    for index, run in enumerate(case.runs):
        faults = []
        if "Traceback (most recent call last)" in run.err:
            faults.append(f"printed a Python traceback ({_clip(_tail(run.err), 80)})")
        if not (run.hung or run.killed):
            allowed = run.allowed if run.allowed is not None else _expected_exit(case, index)
            if allowed is not None and _shell_code(run.code) not in allowed:
                faults.append(
                    f"exited {_shell_code(run.code)}, expected {'/'.join(str(c) for c in sorted(allowed))}"
                )
            if run.code != 0 and not run.err.strip():
                faults.append("printed nothing on stderr")
            elif run.says and not any(word.lower() in run.err.lower() for word in run.says):
                faults.append(f"named none of {'/'.join(run.says)}")
        if faults:
            problems.append(Problem(MESSAGE, f"{run.show()} {' and '.join(faults)} ({_said(run)})"))
    if case.words:
        for want in case.wants:
            for record in case.records_of(want):
                error = _reasons(record)
                if record.get("state") == "failed" and not any(
                    w.lower() in error.lower() for w in case.words
                ):
                    problems.append(
                        Problem(
                            MESSAGE,
                            f"{want.name}: error names none of {'/'.join(case.words)}: {_clip(error, 90)}",
                        )
                    )
    return problems


def _reasons(record: Record) -> str:
    """Why a download failed, as ``headwater get`` prints it: its error, or for a fallback chain
    each source's (``tried``); the source that failed first is often the one the fault hit."""
    tried = record.get("tried")
    if isinstance(tried, list) and len(tried) > 1:
        return "; ".join(f"{t.get('source')}: {t.get('error')}" for t in tried if isinstance(t, dict))
    return str(record.get("error") or "")


def _shell_code(code: int | None) -> int | None:
    """The exit status as a shell shows it: 128 + N for a process that signal N ended."""
    return 128 - code if code is not None and code < 0 else code


def _expected_exit(case: Case, index: int) -> frozenset[int] | None:
    """For the last command, a ``get``: 0 when every wanted download completed, else 1; otherwise None."""
    if (
        index != len(case.runs) - 1
        or case.runs[index].argv[0] != "get"
        or not case.wants
        or case.records is None
    ):
        return None
    states = [r.get("state") for w in case.wants for r in case.records_of(w)[-1:]]
    if not states or any(s in ("queued", "running") for s in states):
        return None
    return frozenset({0}) if all(s == "completed" for s in states) else frozenset({1})


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_journal(case: Case) -> list[Problem]:
    """A journal ``status`` cannot read; or one damaged on purpose that a command changed, then refused."""
    if case.records is not None:
        return []
    if case.damaged is None:
        refused = [run.show() for run in case.runs if run.code == 3]
        also = f"; refused by {', '.join(refused)} too" if refused else ""
        return [Problem(JOURNAL, f"`headwater status` fails: {_clip(case.journal_error, 120)}{also}")]
    if case.after.get(case.home / "journal.sqlite3", "") != case.damaged:
        return [Problem(JOURNAL, "the damaged journal was changed, though no command could read it")]
    return []


def check_leftovers(case: Case) -> list[Problem]:
    """A ``.part`` or ``.part.json`` left beside a file that completed.

    Not one the fault planted: another download's resumable ``.part`` and
    resume record are not this one's leftovers, and must stay (the planted
    check sees that they do).
    """
    problems = []
    for want, record in case.completed():
        path = str(record.get("file_path"))
        for suffix in (".part", ".part.json"):
            if Path(path + suffix) in case.after and Path(path + suffix) not in case.planted:
                problems.append(
                    Problem(LEFTOVER, f"{want.name}: {Path(path).name[:40]}{suffix} left beside it")
                )
    return problems


def _name(path: object) -> str:
    return Path(str(path)).name[:60]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or str(path).startswith(str(folder) + os.sep)


CHECKS: tuple[Callable[[Case], list[Problem]], ...] = (
    check_lost,
    check_corrupt,
    check_replaced,
    check_outside,
    check_hangs,
    check_messages,
    check_journal,
    check_leftovers,
)


def describe(case: Case) -> list[str]:
    """What happened, plainly: each command's end, and each wanted download's final state."""
    lines = [f"{run.show()} -> {_said(run)} after {run.seconds:.1f} s" for run in case.runs]
    if case.records is None:
        lines.append(f"journal unreadable: {_clip(case.journal_error, 110)}")
    for want in case.wants[:20]:
        record = (case.records_of(want) or [{}])[-1]
        state = record.get("state", "no record")
        lines.append(
            f"{want.name}: {state}" + (f": {_clip(record.get('error'), 100)}" if record.get("error") else "")
        )
    return lines


def judge(case: Case) -> list[Problem]:
    """Every problem every check finds in ``case``."""
    return [problem for check in CHECKS for problem in check(case)]


def count(problems: Iterable[Problem]) -> dict[str, int]:
    """Problems per kind, every kind present."""
    counts = dict.fromkeys(KINDS, 0)
    for problem in problems:
        counts[problem.kind] += 1
    return counts
