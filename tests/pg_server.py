"""PostgreSQL servers for the cluster's tests: the shared one, and private ones.

A test that must stop or restart its server starts a private one
(:func:`private_postgres`): ``initdb`` in a temporary folder, ``pg_ctl``
on a free port, run as the ``postgres`` user when the tests run as root
(the server refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import attrs
import psycopg
import pytest

#: The shared server of the project's machines.
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

#: Where Debian's PostgreSQL 15 keeps its programs.
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def reachable(url: str) -> str | None:
    """None if ``url`` answers, else why not."""
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return str(exc).strip()
    return None


def rows(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    """The rows ``query`` answers on a connection of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def session_lock_held(url: str, owner: str) -> bool:
    """Whether the store session ``owner`` holds its lock (a live session does)."""
    with psycopg.connect(url) as conn:  # a transaction, rolled back: the lock is let go at once
        found = conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (owner,)).fetchone()
        return not (found and found[0])


def drop(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class PrivateServer:
    """A PostgreSQL server of one test's own, in ``folder``, on ``port``."""

    folder: Path
    port: int
    runner: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, check: bool = True) -> None:
        """Run ``pg_ctl`` on this server (``start``, ``stop``, ``restart``), waiting until it is done."""
        command = [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "log"),
            "-w",
        ]
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [*self.runner, *command, "-m", "fast", "-o", options, *args],
            check=check,
            capture_output=True,
            timeout=60,
        )


def _runner() -> list[str] | None:
    """How to run the server's programs: as ``postgres`` when we are root; None if that cannot be done."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return None if runuser is None else [runuser, "-u", "postgres", "--"]


@contextmanager
def private_postgres() -> Iterator[PrivateServer]:
    """A new server, started; stopped and deleted afterwards. Skips the test, saying why, if it cannot be."""
    runner = _runner()
    if not (PG_BIN / "initdb").exists() or runner is None:
        pytest.skip(
            f"a private PostgreSQL cannot be started here ({PG_BIN}/initdb missing, or running as root "
            "with no postgres user and runuser)"
        )
    folder = Path(tempfile.mkdtemp(prefix="hw-pg-"))
    try:
        if runner:
            shutil.chown(folder, "postgres")
        subprocess.run(
            [
                *runner,
                str(PG_BIN / "initdb"),
                "-D",
                str(folder / "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server = PrivateServer(folder, free_port(), runner)
        server.ctl("start")
        try:
            yield server
        finally:
            server.ctl("stop", check=False)  # a test may have stopped it
    finally:
        shutil.rmtree(folder, ignore_errors=True)
