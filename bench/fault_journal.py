"""Damaged journals and bad input: what a command does with a journal or arguments it cannot use.

A damaged journal may be refused (exit status 3, a message naming it) but
never rewritten behind the user's back; damage that spoils one record must
not lock out the rest (issue item 9). Bad input gets exit status 2 and a
message naming the problem, and runs nothing.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from fault_server import D
from faultbox import KIB, LIMIT, Sandbox, blob, sha256
from faultcheck import Case, Want

from headwater._schema import APPLICATION_ID, MIGRATIONS


def old_journal(path: Path, version: int) -> None:
    """A journal as a headwater of schema ``version`` left it, with no records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        for step in range(1, version + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


# -- damaged journals ---------------------------------------------------------------


def history(box: Sandbox, count: int = 5) -> list[Want]:
    """Five completed ``file`` downloads in the journal; their files become planted (they must stay)."""
    names = []
    for i in range(count):
        src = box.src / f"old{i}.bin"
        src.write_bytes(blob(200 + i, 10 * KIB))
        names.append(str(src))
    box.headwater("get", "file", *names, "--dest", str(box.dest), "-q", limit=LIMIT)
    box.runs.clear()  # the setup is not the fault
    wants = []
    for i, name in enumerate(names):
        data = blob(200 + i, 10 * KIB)
        box.planted[box.dest / f"old{i}.bin"] = sha256(data)
        wants.append(Want(name, frozenset({sha256(data)}), True, f"old{i}.bin"))
    return wants


#: A way to damage a journal: changes the file, returns the target of the one record it spoiled (or None).
Damage = Callable[[Path, random.Random], "str | None"]


def flip_bytes(where: str) -> Damage:
    """16 bytes of the journal flipped, in its 100-byte header or anywhere after it."""

    def damage(journal: Path, rng: random.Random) -> None:
        data = bytearray(journal.read_bytes())
        low, high = (0, 100) if where == "header" else (100, len(data))
        for _ in range(16):
            data[rng.randrange(low, high)] ^= 0xFF
        journal.write_bytes(bytes(data))

    return damage


def truncate_half(journal: Path, rng: random.Random) -> None:
    journal.write_bytes(journal.read_bytes()[: journal.stat().st_size // 2])


def append_garbage(journal: Path, rng: random.Random) -> None:
    with journal.open("ab") as out:
        out.write(rng.randbytes(10_000))


def spoil_row(change: Callable[[dict[str, object]], str]) -> Damage:
    """One record's JSON replaced by ``change(record)``, the rest left whole."""

    def damage(journal: Path, rng: random.Random) -> str:
        with sqlite3.connect(journal) as conn:
            rows = conn.execute("SELECT id, data FROM records ORDER BY id").fetchall()
            download_id, text = rng.choice(rows)
            record = json.loads(text)
            conn.execute("UPDATE records SET data = ? WHERE id = ?", (change(record), download_id))
        conn.close()
        return str(record["target"])

    return damage


def unknown_state(record: dict[str, object]) -> str:
    return json.dumps({**record, "state": "bogus"})


def garbage_wal(journal: Path, rng: random.Random) -> None:
    journal.with_name(journal.name + "-wal").write_bytes(rng.randbytes(40_000))


def junk_sessions(journal: Path, rng: random.Random) -> None:
    """The session folder holds a folder, an unreadable file and a dangling link named like locks."""
    folder = journal.with_name(journal.name + ".sessions")
    folder.mkdir(exist_ok=True)
    (folder / "dir.lock").mkdir()
    (folder / "noperm.lock").write_text("1")
    (folder / "noperm.lock").chmod(0)
    (folder / "dangling.lock").symlink_to(folder / "nowhere" / "x")


def empty_journal(journal: Path, rng: random.Random) -> None:
    journal.write_bytes(b"")


JOURNAL_DAMAGE: tuple[tuple[str, Damage, bool], ...] = (
    # (what, how, whether headwater must still read it: a damaged file may be refused, never rewritten)
    ("16 bytes flipped after the header", flip_bytes("body"), False),
    ("16 bytes flipped in the header", flip_bytes("header"), False),
    ("journal cut to half its size", truncate_half, False),
    ("10 kB of garbage appended", append_garbage, False),
    ("one row that is not JSON (issue item 9)", spoil_row(lambda record: "{oops"), True),
    ("one row whose JSON is a list", spoil_row(lambda record: "[]"), True),
    ("one row with an unknown state", spoil_row(unknown_state), True),
    ("a garbage -wal file beside it", garbage_wal, True),
    ("junk in the sessions folder", junk_sessions, True),
    ("an empty journal file", empty_journal, False),
)


def journal_fault(damage: Damage, readable: bool) -> Callable[[Sandbox], Case]:
    """Damage a journal holding five completed downloads; then ``status``, a new ``get``, ``resume``.

    ``readable``: the damage leaves every other record intact, so every
    command must go on working (and show the rest). Otherwise a command may
    refuse the journal (exit 3, naming it), but must leave it as it is.
    """

    def run(box: Sandbox) -> Case:
        wants = history(box)
        spoiled = damage(box.journal, box.rng)
        new = box.src / "new.bin"
        new.write_bytes(D)
        box.freeze()
        assert box.before is not None
        damaged = None if readable else box.before.get(box.journal, "")
        box.headwater("status", limit=LIMIT, allowed=frozenset({0, 3}))
        box.headwater(
            "get", "file", str(new), "--dest", str(box.dest), "-q", limit=LIMIT, allowed=frozenset({0, 3})
        )
        box.headwater(*box.resume(), limit=LIMIT, allowed=frozenset({0, 3}))
        fresh = Want(str(new), frozenset({sha256(D)}), readable, "new.bin")
        kept = [w for w in wants if w.target != spoiled]
        return box.observe([*kept, fresh] if readable else [fresh], damaged=damaged)

    return run


def foreign_database(box: Sandbox) -> Case:
    """Another program's SQLite file where the journal goes: refused (exit 3), never touched."""
    with sqlite3.connect(box.journal) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()
    box.plant(box.journal, box.journal.read_bytes())
    box.plant(box.src / "in.bin", D)
    box.freeze()
    box.headwater("status", limit=LIMIT, allowed=frozenset({3}), says=("another program",))
    box.headwater(*box.get(str(box.src / "in.bin"), source="file"), limit=LIMIT, allowed=frozenset({3}))
    return box.observe([], damaged=box.planted[box.journal])


def newer_schema(box: Sandbox) -> Case:
    """A journal from a newer headwater: refused (exit 3), never touched."""
    old_journal(box.journal, 2)
    with sqlite3.connect(box.journal) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    box.plant(box.journal, box.journal.read_bytes())
    box.freeze()
    box.headwater("status", limit=LIMIT, allowed=frozenset({3}), says=("newer",))
    box.headwater(*box.resume(), limit=LIMIT, allowed=frozenset({3}), says=("newer",))
    return box.observe([], damaged=box.planted[box.journal])


def journal_is_a_folder(box: Sandbox) -> Case:
    """A folder where the journal file goes: refused (exit 3, naming the journal)."""
    box.plant(box.src / "in.bin", D)
    box.journal.mkdir(parents=True)
    box.freeze()
    box.headwater("status", limit=LIMIT, allowed=frozenset({3}), says=("journal",))
    box.headwater(
        *box.get(str(box.src / "in.bin"), source="file"),
        limit=LIMIT,
        allowed=frozenset({3}),
        says=("journal",),
    )
    return box.observe([], damaged="")


# -- bad input -----------------------------------------------------------------------


def bad_input(argv: tuple[str, ...], says: tuple[str, ...], config: str = "") -> Callable[[Sandbox], Case]:
    """A command with bad input: exit status 2, a message naming the problem, nothing run."""

    def run(box: Sandbox) -> Case:
        if config:
            (box.home / "headwater.toml").write_text(config)
        src = box.plant(box.src / "in.bin", D)
        box.freeze()
        filled = tuple(a.replace("{src}", str(src)).replace("{dest}", str(box.dest)) for a in argv)
        box.headwater(*filled, limit=LIMIT, allowed=frozenset({2}), says=says)
        return box.observe([Want(str(src), frozenset({sha256(D)}), False, "in.bin")])

    return run


def file_fault(make: Callable[[Path], Path], words: tuple[str, ...]) -> Callable[[Sandbox], Case]:
    """``get file`` on a local target that is not a plain file: it fails with ``words``, quickly."""

    def run(box: Sandbox) -> Case:
        target = make(box.src)
        box.freeze()
        box.headwater("get", "file", str(target), "--dest", str(box.dest), "-q", limit=LIMIT)
        return box.observe([Want(str(target), frozenset(), False, target.name)], words=words)

    return run


def fifo(src: Path) -> Path:
    path = src / "pipe"
    os.mkfifo(path)
    return path


def folder(src: Path) -> Path:
    path = src / "folder"
    path.mkdir()
    return path
