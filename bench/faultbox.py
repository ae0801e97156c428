"""The sandbox one fault runs in: its folders, the real ``headwater`` command, and what it observed.

Every fault gets a folder of its own holding the journal's home
(``HEADWATER_HOME``), the destination and a working folder, so that a write
anywhere else in it is a write outside the destination. Commands are the
installed ``headwater`` script run as subprocesses with a clean environment
(no ``HEADWATER_*`` settings or proxies from the caller, ``HOME`` and the XDG
folders inside the sandbox), each with a time limit after which it is killed
and counted as hung.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from faultcheck import Case, Run, Want
from hostile import HostileServer, Served

KIB, MIB = 1 << 10, 1 << 20

#: Seconds after which a command counts as hung, for most faults.
LIMIT = 30.0

#: A file of the user's outside the destination, in every sandbox: it must stay as it is.
VICTIM = b"a file of the user's, outside the destination\n"


def blob(seed: int, size: int) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


class Skipped(Exception):
    """A fault that cannot be tried here; its message says why."""


_SCRIPT = Path(sys.executable).with_name("headwater")
#: The command line: the console script installed beside this Python, else the module.
HEADWATER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "headwater.cli"]

_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@attrs.define
class Process:
    """A running ``headwater`` command: signal it, then :meth:`finish` it."""

    box: Sandbox
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float
    signals: list[str] = attrs.Factory(list)

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the process still runs."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.signals.append(sig.name)

    def running(self) -> bool:
        return self.popen.poll() is None

    def finish(self, limit: float, allowed: frozenset[int] | None = None, says: tuple[str, ...] = ()) -> Run:
        """Wait until the command ends or ``limit`` seconds have passed since it started (then kill it)."""
        try:
            code: int | None = self.popen.wait(max(0.0, self.started + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            code = None
        run = Run(
            self.argv,
            code,
            self.box.tidy(self.out_path.read_text(errors="replace")),
            self.box.tidy(self.err_path.read_text(errors="replace")),
            time.monotonic() - self.started,
            limit,
            tuple(self.signals),
            allowed,
            says,
        )
        self.box.runs.append(run)
        return run


@attrs.define
class Sandbox:
    """The folders, server and commands of one fault. Used by one thread.

    Attributes:
        root: everything of this fault; writes anywhere in it but ``dest`` and ``home`` are outside writes.
        logs: outside ``root``: the commands' output.
        server: the shared hostile server; ``prefix`` is this fault's part of it.
        rng: this fault's random numbers (seeded, so a run can be repeated).
    """

    root: Path
    logs: Path
    server: HostileServer
    prefix: str
    rng: random.Random
    runs: list[Run] = attrs.Factory(list)
    planted: dict[Path, str] = attrs.Factory(dict)
    before: dict[Path, str] | None = None
    midway: list[dict[Path, str]] = attrs.Factory(list)
    mounts: list[Path] = attrs.Factory(list)
    processes: list[subprocess.Popen[Any]] = attrs.Factory(list)
    _count: int = 0

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def journal(self) -> Path:
        return self.home / "journal.sqlite3"

    @property
    def dest(self) -> Path:
        return self.root / "work" / "dest"

    @property
    def cwd(self) -> Path:
        return self.root / "work" / "cwd"

    @property
    def src(self) -> Path:
        return self.root / "work" / "src"

    def make(self) -> None:
        for folder in (self.home, self.cwd, self.src, self.root / "user", self.logs):
            folder.mkdir(parents=True, exist_ok=True)

    def tidy(self, text: str) -> str:
        """``text`` with this sandbox's folder written as ``…`` (messages stay short and comparable)."""
        return text.replace(str(self.root), "…")

    def freeze(self) -> None:
        """Snapshot the sandbox: the fault's setup is done, what changes from now on is the fault's doing."""
        self.before = snapshot(self.root)

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HEADWATER_") and k.lower() not in _PROXIES
        }
        user = self.root / "user"
        env.update(
            HEADWATER_HOME=str(self.home),
            HOME=str(user),
            XDG_DATA_HOME=str(user / "data"),
            XDG_CONFIG_HOME=str(user / "config"),
            XDG_CACHE_HOME=str(user / "cache"),
            NO_PROXY="*",
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    def start(self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Process:
        """Start ``headwater *argv`` in ``cwd`` (default: the working folder)."""
        self._count += 1
        out_path, err_path = self.logs / f"{self._count}.out", self.logs / f"{self._count}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            popen = subprocess.Popen(
                [*HEADWATER, *argv],
                cwd=cwd or self.cwd,
                env=env or self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.processes.append(popen)
        return Process(self, tuple(argv), popen, out_path, err_path, time.monotonic())

    def headwater(
        self,
        *argv: str,
        limit: float = 30.0,
        cwd: Path | None = None,
        allowed: frozenset[int] | None = None,
        says: tuple[str, ...] = (),
    ) -> Run:
        """Run ``headwater *argv`` to its end (or ``limit`` seconds); the run is kept for the checks."""
        return self.start(*argv, cwd=cwd).finish(limit, allowed, says)

    def get(self, *targets: str, source: str = "http") -> tuple[str, ...]:
        """The arguments of ``headwater get`` for ``targets`` into the destination, one line per download."""
        return ("get", source, *targets, "--dest", str(self.dest), "-q")

    def resume(self) -> tuple[str, ...]:
        """The arguments of ``headwater resume`` into the destination."""
        return ("resume", "--dest", str(self.dest), "-q")

    def serve(self, served: Sequence[Served]) -> tuple[list[str], list[Want]]:
        """Mount ``served`` on the hostile server under this fault's prefix; the targets and the wants."""
        targets = self.server.mount(self.prefix, served)
        return targets, [want(t, s) for t, s in zip(targets, served, strict=True)]

    def started(self, at_least: int = 1, within: float = 15.0) -> None:
        """Wait until this fault's URLs have had ``at_least`` requests (a command is downloading)."""
        deadline = time.monotonic() + within
        while self.server.requests(self.prefix) < at_least and time.monotonic() < deadline:
            time.sleep(0.01)

    def observe(
        self,
        wants: Sequence[Want],
        *,
        words: tuple[str, ...] = (),
        finisher: int | None = None,
        damaged: str | None = None,
        notes: Sequence[str] = (),
    ) -> Case:
        """The :class:`Case` the checks judge: the journal read back and the sandbox snapshotted, now.

        The arguments are :class:`Case`'s; :meth:`freeze` must have been called.
        """
        assert self.before is not None, "the fault must freeze() its sandbox once its setup is done"
        records, error = self.status()
        return self.case(wants, records, error, words=words, finisher=finisher, damaged=damaged, notes=notes)

    def case(
        self, wants: Sequence[Want], records: list[dict[str, object]] | None, error: str, **options: Any
    ) -> Case:
        """A :class:`Case` of this sandbox with the given records, snapshotted now."""
        assert self.before is not None, "the fault must freeze() its sandbox once its setup is done"
        options["notes"] = list(options.get("notes", ()))
        options.setdefault("midway", list(self.midway))
        return Case(
            list(wants),
            list(self.runs),
            records,
            error,
            self.before,
            snapshot(self.root),
            dict(self.planted),
            self.dest,
            self.home,
            **options,
        )

    def status(self) -> tuple[list[dict[str, object]] | None, str]:
        """The journal's records as ``headwater status --json`` prints them, or (None, why not)."""
        process = self.start("status", "--json")
        try:
            process.popen.wait(120)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
            return None, "`headwater status` did not end within 120 s"
        out = process.out_path.read_text(errors="replace")
        err = process.err_path.read_text(errors="replace").strip()
        if process.popen.returncode != 0:
            return None, self.tidy(f"exit {process.popen.returncode}: {_last_line(err)}")
        try:
            records = json.loads(out)
        except ValueError as exc:
            return None, f"exit 0 but not JSON ({exc}): {out[:100]!r}"
        for record in records:
            if isinstance(record.get("error"), str):
                record["error"] = self.tidy(record["error"])
        return records, self.tidy(err)

    def plant(self, path: Path, data: bytes) -> Path:
        """Write ``data`` at ``path`` now: a file that must be there, unchanged, when the fault ends."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.planted[path] = sha256(data)
        return path

    def mount_tmpfs(self, folder: Path, options: str) -> bool:
        """Mount a tmpfs with ``options`` on ``folder`` (made if missing); False if not allowed (not root)."""
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, check=False
        )
        if done.returncode != 0:
            return False
        self.mounts.append(folder)
        return True

    def cleanup(self) -> None:
        """Kill the commands still running, unmount what :meth:`mount_tmpfs` mounted."""
        for popen in self.processes:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        for folder in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
        self.mounts.clear()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(nothing on stderr)"


def want(target: str, served: Served) -> Want:
    """The download of ``target``, answered by ``served``: what it may hold, whether it must complete."""
    return Want(target, frozenset(sha256(v) for v in served.contents()), served.deliver, served.path or "/")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(root: Path) -> dict[Path, str]:
    """Every file and link under ``root``: path -> sha256 of the bytes (``link:TARGET`` for a link)."""
    found: dict[Path, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[path] = f"link:{os.readlink(path)}"
                continue
            if not stat.S_ISREG(mode):
                found[path] = f"special:{stat.S_IFMT(mode):o}"
                continue
            try:
                with path.open("rb") as handle:
                    found[path] = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as exc:
                found[path] = f"unreadable:{exc.errno}"
    return found
