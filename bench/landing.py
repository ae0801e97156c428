"""Landing benchmark: ways to put 2,000 small files durably at their names, on 16 threads, no network.

Issue 14 asks whether the file work of the http source (a ``.part``
created, written, fsynced, hard-linked to its name and unlinked) has a
cheaper durable form for a small body of known length. Each variant below
lands the same bodies (``--size`` KiB in 16 KiB writes, as the body arrives
from the socket, unless it says one write) from ``--jobs`` threads into a
new folder, after a ``sync``; rounds alternate the order. The table gives
medians: files/s, and the process's user and system CPU per file.

Durable variants (the file at its name is complete and fsynced, a crash
leaves nothing partial at a name):

- ``.part``: what headwater's http source does at the least (bench/http.py's
  "httpx + files" row); ``as PartFile`` adds what its ``PartFile`` and the
  source do besides: O_NOFOLLOW, flock, fstat, the resume record looked for,
  the name checked with lstat.
- ``fdatasync``: the same with fdatasync(2) instead of fsync(2).
- ``O_TMPFILE``: a file with no name (Linux), fsynced, then ``linkat`` of
  ``/proc/self/fd/N`` to its name: no ``.part`` name created or unlinked.

References, not durable or not safe: ``O_EXCL`` creates the final name
first and writes into it (a crash leaves a partial file there); ``in
place`` writes the final name without fsync (what aria2c does).

    python bench/landing.py [--dir /tmp] [--files 2000] [--size 64] [--jobs 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

Land = Callable[[str, str, Sequence[bytes]], None]


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        os.write(fd, chunk)


def part_link(
    folder: str, name: str, chunks: Sequence[bytes], sync: Callable[[int], None] = os.fsync
) -> None:
    """``<name>.part`` created and written, synced, hard-linked to ``name``, unlinked."""
    final = f"{folder}/{name}"
    part = f"{final}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _write_all(fd, chunks)
        sync(fd)
    finally:
        os.close(fd)
    os.link(part, final)
    os.unlink(part)


def as_partfile(folder: str, name: str, chunks: Sequence[bytes]) -> None:
    """:func:`part_link` with the system calls headwater's PartFile and http source add around it."""
    final = f"{folder}/{name}"
    part = f"{final}.part"
    os.path.islink(final)  # destination(): a link at the name?
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.fstat(fd)  # size, and a second link left by a killed landing
        os.fstat(fd)  # io.FileIO's own
        with contextlib.suppress(FileNotFoundError):  # the resume record
            os.close(os.open(f"{part}.json", os.O_RDONLY))
        _write_all(fd, chunks)
        os.fsync(fd)
        os.link(part, final)
        os.unlink(part)
    finally:
        os.close(fd)
    os.lstat(final)  # the engine's check of the landed file


def tmpfile_link(folder: str, name: str, chunks: Sequence[bytes]) -> None:
    """A file without a name in ``folder``, written and fsynced, then linked to ``name``."""
    fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
    try:
        _write_all(fd, chunks)
        os.fsync(fd)
        # src_dir_fd makes os.link call linkat(2), which alone can follow the /proc link.
        os.link(f"/proc/self/fd/{fd}", f"{folder}/{name}", src_dir_fd=fd, follow_symlinks=True)
    finally:
        os.close(fd)


def straight_to_name(folder: str, name: str, chunks: Sequence[bytes], *, excl: bool, sync: bool) -> None:
    """The final name itself written: created with O_EXCL and fsynced (not safe: partial on a crash),
    or truncated and not fsynced (not durable)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else os.O_TRUNC)
    fd = os.open(f"{folder}/{name}", flags, 0o644)
    try:
        _write_all(fd, chunks)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def variants(body: bytes) -> dict[str, tuple[Land, Sequence[bytes]]]:
    chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    return {
        ".part, fsync, link, unlink": (part_link, chunks),
        ".part ..., one write": (part_link, [body]),
        ".part ..., as PartFile": (as_partfile, chunks),
        ".part, fdatasync, link, unlink": (
            lambda folder, name, data: part_link(folder, name, data, os.fdatasync),
            chunks,
        ),
        "O_TMPFILE, fsync, linkat": (tmpfile_link, chunks),
        "O_TMPFILE ..., one write": (tmpfile_link, [body]),
        "O_EXCL final, fsync (unsafe)": (partial(straight_to_name, excl=True, sync=True), chunks),
        "in place, no fsync (not durable)": (partial(straight_to_name, excl=False, sync=False), chunks),
    }


def run(base: str, land: Land, chunks: Sequence[bytes], files: int, jobs: int) -> tuple[float, float, float]:
    """Wall seconds, user and system CPU seconds of landing ``files`` files in a new folder under ``base``."""
    os.sync()
    folder = tempfile.mkdtemp(dir=base)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda i: land(folder, f"f{i:05d}.bin", chunks), range(files)))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    if len(os.listdir(folder)) != files:
        raise SystemExit(f"{folder}: expected {files} files")
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to land (default: the temp folder)"
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="KiB per file")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    table = variants(os.urandom(args.size * 1024))
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in table}
    # Folders are kept until the end: deleting files right before creating others slows
    # this machine's ext4 (see docs/benchmarks.md, "Output folders").
    with tempfile.TemporaryDirectory(dir=args.dir) as base:
        for round_ in range(args.rounds):
            order = list(table) if round_ % 2 == 0 else list(reversed(table))
            for label in order:
                land, chunks = table[label]
                runs[label].append(run(base, land, chunks, args.files, args.jobs))
    load = os.getloadavg()[0]
    print(f"{args.files} x {args.size} KiB on {args.jobs} threads into {args.dir}, medians of {args.rounds}")
    print(f"rounds (load average {load:.1f} at the end); CPU = this process's, per file")
    print(f"{'variant':<34} {'files/s':>8} {'user µs':>8} {'sys µs':>7} {'CPU µs':>7}")
    for label, times in runs.items():
        wall = statistics.median(t[0] for t in times)
        user = statistics.median(t[1] for t in times) / args.files * 1e6
        system = statistics.median(t[2] for t in times) / args.files * 1e6
        print(f"{label:<34} {args.files / wall:>8.0f} {user:>8.0f} {system:>7.0f} {user + system:>7.0f}")


if __name__ == "__main__":
    main()
