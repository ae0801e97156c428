"""HTTP benchmark: headwater's http source against curl (one 1 GiB file) and aria2c (2,000 x 64 KiB).

The files are made in a temporary folder (never committed) and served from
127.0.0.1 by :func:`serve`, an asyncio HTTP/1.1 keep-alive server in its own
process that sends file bodies with ``sendfile(2)`` (zero-copy), so the
server is not what limits the clients. headwater fsyncs each file before its
rename, curl and aria2c do not, so curl is also timed with an fsync after.

Every run writes into a folder of its own that no file was ever deleted
from, after a ``sync``. (a)'s 1 GiB file is deleted right after it is timed,
so no client writes its 1 GiB while another's still holds page cache (on a
VM, memory the guest has not used lately costs page faults to fill). (b)'s
files are kept until the end: on an ext4 without a journal (this machine's root)
the inode allocator skips, one by one, inodes deleted in the last minute, so
creating 2,000 files right after deleting 2,000 others spends most of its
time there; aria2c then managed about 480 files/s instead of over 1,000.

(b) also times httpx alone: the same 16 threads, one ``httpx.Client`` each,
bodies read and thrown away, no files and no engine; the ceiling for any
client built on httpx on this machine. And httpx + files: the same, each
body written to a ``.part`` that is fsynced, linked to its name and
unlinked, the file work headwater does at the least, without its checks.
And http source: the builtin source's ``download_impl`` called on the same
16 threads without the engine, to set what the source and its landing add
against httpx + files.

``--file-variants`` adds two more rows to (b), to show the floor of the file
work: httpx + O_TMPFILE (the cheapest durable landing measured: a file with
no name, fsynced, then linked to its name; Linux only) and httpx + in place
(each body written straight to its name, no ``.part``, no fsync: what
aria2c does, and not durable).

    python bench/http.py [--big-mib 1024] [--small 2000] [--small-kib 64] [--jobs 16] [--dir DIR]
                         [--also-jobs 4 8] [--file-variants]

``--also-jobs`` adds rows for headwater at other concurrencies on (b), to
show how the client's throughput depends on the number of worker threads.
"""

from __future__ import annotations

import os
import sys

# This file is called http.py: drop its own folder from the import path so that
# ``import http`` (by httpx, through the http source) finds the standard library.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import unquote  # noqa: E402

import httpx  # noqa: E402

from headwater import DownloadContext, Engine, Job, RatePolicy, State  # noqa: E402
from headwater_http import HttpSource  # noqa: E402

# -- the server ----------------------------------------------------------------


async def _handle(root: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = line.split(" ", 2)
            path = root / unquote(target.split("?")[0]).lstrip("/")
            if method != "GET" or root not in path.resolve().parents or not path.is_file():
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                continue
            with path.open("rb") as body:
                size = os.fstat(body.fileno()).st_size
                writer.write(
                    f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\naccept-ranges: bytes\r\n"
                    f'etag: "{size}"\r\ncontent-type: application/octet-stream\r\n\r\n'.encode()
                )
                await writer.drain()
                await loop.sendfile(writer.transport, body)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(root: str, port_out: multiprocessing.SimpleQueue[int]) -> None:  # type: ignore[type-arg]
    """Serve files under ``root`` on 127.0.0.1 (port put on ``port_out``) until terminated."""

    async def main() -> None:
        server = await asyncio.start_server(
            lambda r, w: _handle(Path(root), r, w), "127.0.0.1", 0, backlog=512
        )
        port_out.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the clients ---------------------------------------------------------------


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of ``run()``: this process's threads plus child processes it waited for.

    The server process is not counted (it is waited for only at the end).
    """

    def cpu() -> float:
        mine = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return mine.ru_utime + mine.ru_stime + kids.ru_utime + kids.ru_stime

    wall, used = time.perf_counter(), cpu()
    run()
    return time.perf_counter() - wall, cpu() - used


def headwater_fetch(engine: Engine, urls: list[str]) -> None:
    """Submit ``urls`` to the http source of ``engine`` and wait for all of them."""
    records = engine.wait([engine.submit("http", u) for u in urls], timeout=3600)
    failed = [r for r in records if r.state is not State.COMPLETED]
    if failed:
        raise SystemExit(f"headwater: {len(failed)} downloads failed, first: {failed[0].error}")


def curl_fetch(url: str, out: Path, fsync: bool) -> None:
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), url], check=True)
    if fsync:
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def aria2c_fetch(list_file: Path, dest: Path, jobs: int) -> None:
    subprocess.run(
        [
            "aria2c",
            "-q",
            f"-j{jobs}",
            "-x1",
            "-s1",
            "--file-allocation=none",
            "--auto-file-renaming=false",
            "--allow-overwrite=true",
            "-d",
            str(dest),
            "-i",
            str(list_file),
        ],
        check=True,
    )


def new_folder(base: Path) -> Path:
    """A new empty folder under ``base``, made after everything written so far is on disk (``sync``)."""
    os.sync()
    return Path(tempfile.mkdtemp(dir=base))


def on_client_threads(urls: list[str], jobs: int, fetch: Callable[[httpx.Client, str], None]) -> None:
    """``fetch(client, url)`` for each of ``urls`` on ``jobs`` threads, one ``httpx.Client`` each."""
    clients = threading.local()
    made: list[httpx.Client] = []
    ssl_context = httpx.create_ssl_context()

    def get(url: str) -> None:
        client = getattr(clients, "client", None)
        if client is None:
            client = clients.client = httpx.Client(verify=ssl_context)
            made.append(client)
        fetch(client, url)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(get, urls))
    for client in made:
        client.close()


def httpx_fetch(urls: list[str], jobs: int) -> None:
    """GET ``urls`` on ``jobs`` threads, one httpx.Client each, reading each body and discarding it."""

    def get(client: httpx.Client, url: str) -> None:
        with client.stream("GET", url) as response:
            response.raise_for_status()
            for _ in response.iter_raw():
                pass

    on_client_threads(urls, jobs, get)


def get_durable(client: httpx.Client, url: str, dest: Path) -> None:
    """GET ``url`` into ``dest`` as headwater lands a file, with none of its checks.

    The body goes to ``<name>.part`` (created, appended to), which is
    fsynced, linked to ``<name>`` and unlinked: the file work every download
    of headwater's http source does at the least, without the lock, the
    resume record, the name checks and the engine.
    """
    final = dest / url.rsplit("/", 1)[1]
    part = f"{final}.part"
    with client.stream("GET", url) as response:
        response.raise_for_status()
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in response.iter_raw():
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.link(part, final)
    os.unlink(part)


def httpx_files_fetch(urls: list[str], jobs: int, dest: Path) -> None:
    """As :func:`httpx_fetch`, each body landed in ``dest`` by :func:`get_durable`."""
    on_client_threads(urls, jobs, partial(get_durable, dest=dest))


def source_fetch(urls: list[str], jobs: int, dest: Path) -> None:
    """The http source's ``download_impl`` for each of ``urls`` on ``jobs`` threads, into ``dest``; no engine.

    What the source and its landing (``PartFile``, the name checks, the
    resume record looked for, fsync, ``land``) cost beside
    :func:`httpx_files_fetch`'s bare file work; each thread has the
    source's own client.
    """
    source = HttpSource()
    logger = logging.getLogger("headwater.source.http")
    folder = dest.resolve()

    def get(url: str) -> None:
        source.download_impl(Job(url, "http", url), DownloadContext(folder, logger))

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(get, urls))


def httpx_tmpfile_fetch(urls: list[str], jobs: int, dest: Path) -> None:
    """As :func:`httpx_files_fetch`, each body written to a file without a name until it is complete.

    ``open(dest, O_TMPFILE)``, the body, fsync, then ``linkat`` of
    ``/proc/self/fd/N`` to its name: no ``.part`` is created or unlinked.
    Durable like the ``.part``, but a later call could not resume it.
    """

    def get(client: httpx.Client, url: str) -> None:
        final = dest / url.rsplit("/", 1)[1]
        with client.stream("GET", url) as response:
            response.raise_for_status()
            fd = os.open(dest, os.O_TMPFILE | os.O_WRONLY, 0o644)
            try:
                for chunk in response.iter_raw():
                    os.write(fd, chunk)
                os.fsync(fd)
                # src_dir_fd makes os.link call linkat(2), which alone can follow the /proc link.
                os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=fd, follow_symlinks=True)
            finally:
                os.close(fd)

    on_client_threads(urls, jobs, get)


def get_in_place(client: httpx.Client, url: str, dest: Path) -> None:
    """GET ``url`` straight to its name in ``dest``: no ``.part``, no fsync (not durable), as aria2c does."""
    with client.stream("GET", url) as response:
        response.raise_for_status()
        fd = os.open(dest / url.rsplit("/", 1)[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in response.iter_raw():
                os.write(fd, chunk)
        finally:
            os.close(fd)


def httpx_in_place_fetch(urls: list[str], jobs: int, dest: Path) -> None:
    """As :func:`httpx_fetch`, each body landed in ``dest`` by :func:`get_in_place`."""
    on_client_threads(urls, jobs, partial(get_in_place, dest=dest))


def make_files(root: Path, big_mib: int, small: int, small_kib: int) -> None:
    block = os.urandom(1 << 20)
    with (root / "big.bin").open("wb") as out:
        for _ in range(big_mib):
            out.write(block)
    (root / "small").mkdir()
    for i in range(small):
        (root / "small" / f"f{i:05d}.bin").write_bytes(os.urandom(small_kib * 1024))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="even: odd rounds reverse (b)")
    parser.add_argument("--also-jobs", type=int, nargs="*", default=[], help="more concurrencies for (b)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put files (default: a temp folder)")
    parser.add_argument(
        "--file-variants", action="store_true", help="(b) also httpx + O_TMPFILE and httpx + in place"
    )
    args = parser.parse_args()
    for tool in ("curl", "aria2c"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install curl aria2)")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        served = base / "served"
        served.mkdir()
        make_files(served, args.big_mib, args.small, args.small_kib)
        ports: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
        server = multiprocessing.Process(target=serve, args=(str(served), ports), daemon=True)
        server.start()
        try:
            port = ports.get()
            big_url = f"http://127.0.0.1:{port}/big.bin"
            small_urls = [f"http://127.0.0.1:{port}/small/f{i:05d}.bin" for i in range(args.small)]
            list_file = base / "list.txt"
            list_file.write_text("\n".join(small_urls) + "\n")
            big_bytes = args.big_mib << 20
            small_bytes = args.small * args.small_kib * 1024

            runs: dict[str, list[tuple[float, float]]] = {}

            def measure(client: str, run: Callable[[], object]) -> None:
                runs.setdefault(client, []).append(timed(run))

            out = base / "out"
            out.mkdir()

            def aria() -> None:
                dest = new_folder(out)
                measure(f"aria2c -j {args.jobs}", partial(aria2c_fetch, list_file, dest, args.jobs))

            def headwater_small(jobs: int) -> None:
                with Engine(new_folder(out), policies={"http": RatePolicy(jobs)}) as engine:
                    measure(f"headwater c={jobs}", partial(headwater_fetch, engine, small_urls))

            def bare_httpx() -> None:
                measure(f"httpx alone x{args.jobs}", partial(httpx_fetch, small_urls, args.jobs))

            def httpx_files() -> None:
                fetch = partial(httpx_files_fetch, small_urls, args.jobs, new_folder(out))
                measure(f"httpx + files x{args.jobs}", fetch)

            def source_alone() -> None:
                fetch = partial(source_fetch, small_urls, args.jobs, new_folder(out))
                measure(f"http source x{args.jobs}", fetch)

            def variant(label: str, fetch: Callable[[list[str], int, Path], None]) -> Callable[[], None]:
                def run() -> None:
                    measure(
                        f"httpx + {label} x{args.jobs}",
                        partial(fetch, small_urls, args.jobs, new_folder(out)),
                    )

                return run

            headwaters = [partial(headwater_small, jobs) for jobs in [args.jobs, *args.also_jobs]]
            small = [aria, *headwaters, bare_httpx, httpx_files, source_alone]
            if args.file_variants:
                small += [
                    variant("O_TMPFILE", httpx_tmpfile_fetch),
                    variant("in place", httpx_in_place_fetch),
                ]
            for round_ in range(args.rounds):
                for client, sync in (("curl", False), ("curl + fsync", True)):
                    folder = new_folder(out)
                    measure(client, partial(curl_fetch, big_url, folder / "big.bin", fsync=sync))
                    shutil.rmtree(folder)
                folder = new_folder(out)
                with Engine(folder, policies={"http": RatePolicy(concurrency=1)}) as engine:
                    measure("headwater", partial(headwater_fetch, engine, [big_url]))
                shutil.rmtree(folder)
                for run in small if round_ % 2 == 0 else reversed(small):  # odd rounds: reverse order
                    run()
            shutil.rmtree(out)
        finally:
            server.terminate()
            server.join(5)

    median = {client: statistics.median(t for t, _ in times) for client, times in runs.items()}
    cpu = {client: statistics.median(c for _, c in times) for client, times in runs.items()}
    where = "tmpfs" if args.dir and str(args.dir).startswith("/dev/shm") else "disk"
    folder = args.dir or tempfile.gettempdir()
    print(f"{args.rounds} rounds, medians; files written to {where} ({folder}); CPU = client's user+sys")
    print(f"{'workload':<20} {'client':<22} {'wall s':>7} {'MiB/s':>7} {'files/s':>8} {'CPU s':>6}")
    for client, seconds in median.items():
        big = client in ("curl", "curl + fsync", "headwater")
        work = f"(a) 1 x {args.big_mib} MiB" if big else f"(b) {args.small} x {args.small_kib} KiB"
        if client.startswith(("httpx", "http source")):
            work += " *"
        size = big_bytes if big else small_bytes
        count = 1 if big else args.small
        rate = size / seconds / (1 << 20)
        per_second = count / seconds
        print(f"{work:<20} {client:<22} {seconds:>7.2f} {rate:>7.1f} {per_second:>8.1f} {cpu[client]:>6.2f}")
    print()
    hw_small = median[f"headwater c={args.jobs}"]
    aria = median[f"aria2c -j {args.jobs}"]
    print(f"(a) headwater vs curl:         {median['curl'] / median['headwater']:.2f}x  (target >= 0.9x)")
    print(f"(a) headwater vs curl + fsync: {median['curl + fsync'] / median['headwater']:.2f}x")
    print(f"(b) headwater vs aria2c:       {aria / hw_small:.2f}x  (target >= 1.0x)")
    bare = median[f"httpx alone x{args.jobs}"]
    files = median[f"httpx + files x{args.jobs}"]
    print(f"(b) httpx alone vs aria2c:     {aria / bare:.2f}x  (* no files written: the ceiling for httpx)")
    print(f"(b) headwater vs httpx alone:  {bare / hw_small:.2f}x  (target >= 0.8x)")
    print(f"(b) httpx + files vs httpx alone: {bare / files:.2f}x  (* the file work alone, no engine)")
    print(f"(b) headwater vs httpx + files:   {files / hw_small:.2f}x")
    alone = f"http source x{args.jobs}"
    cpu_ratio = cpu[alone] / cpu[f"httpx + files x{args.jobs}"]
    speed = files / median[alone]
    print(f"(b) http source vs httpx + files: {speed:.2f}x, CPU {cpu_ratio:.2f}x (* no engine)")
    for label in ("O_TMPFILE", "in place"):
        if f"httpx + {label} x{args.jobs}" in median:
            ratio = bare / median[f"httpx + {label} x{args.jobs}"]
            print(f"(b) httpx + {label} vs httpx alone: {ratio:.2f}x")
    for jobs in args.also_jobs:
        print(f"(b) headwater c={jobs} vs aria2c: {aria / median[f'headwater c={jobs}']:.2f}x")
    print(
        f"CPU per GiB, (a): curl {cpu['curl'] * (1 << 30) / big_bytes:.2f} s, headwater "
        f"{cpu['headwater'] * (1 << 30) / big_bytes:.2f} s"
    )


if __name__ == "__main__":
    main()
