"""The hostile server's behaviours: one table, and the fault that runs ``headwater get`` on each row.

Each :class:`Behaviour` names what the server does, the URLs it serves
(:class:`~hostile.Served`, with the bytes they stand for and the replies
they get), and what a failure's message must name. The fault mounts the
URLs, runs ``headwater get http`` on them in the sandbox and hands what it
observed to the checks.
"""

from __future__ import annotations

import email.utils
import gzip
import json
from collections.abc import Callable

import attrs
from faultbox import KIB, LIMIT, MIB, Sandbox, blob, sha256, want
from faultcheck import Case
from hostile import Reply, Served

SMALL, HALF = 256 * KIB, 128 * KIB
LARGE, LHALF = 9 * MIB, 9 * MIB // 2  # past the http source's 4 MiB socket path and 8 MiB early resume record
D, D2 = blob(1, SMALL), blob(2, SMALL)
L = blob(3, LARGE)
MINE = b"a file the user already had in the destination\n"
NEVER = b"\0never served"

#: Seconds after which a command counts as hung: a stall (the issue: fail within a minute, plus
#: start-up); a server that says "come back later" forever (any sane bound is shorter).
STALL_LIMIT, RETRY_LIMIT = 65.0, 120.0

#: Words one of which a failure's error must hold, by kind of fault.
CONNECTION = ("connection", "broken", "closed", "protocol", "incomplete")
STALL = ("stall", "timed out", "timeout")
RETRY = ("429", "503", "retry")
CHECKSUM = ("sha256", "checksum")


def header(name: str, value: str) -> tuple[tuple[str, str], ...]:
    return ((name, value),)


def cd(value: str) -> tuple[tuple[str, str], ...]:
    """A Content-Disposition header line."""
    return header("Content-Disposition", value)


def sha_of(data: bytes) -> str:
    return f"#sha256={sha256(data)}"


# -- the table ---------------------------------------------------------------------


@attrs.frozen
class Behaviour:
    """One row of the table of server behaviours: what is served, and what a failure must say.

    Attributes:
        name: what the server does, in words.
        served: the URLs headwater is asked for (each a wanted download), in order.
        helpers: URLs mounted too but not asked for (redirect targets).
        words: a failed download's error must name one of these.
        limit: seconds each command gets before it counts as hung.
        plant: files put in the destination first (name, bytes): they must stay as they are.
        left: files put in the destination first as a killed run leaves them (name, bytes); headwater
            may use or remove them.
        links: symbolic links put in the destination first (name, target; ``{root}`` is the sandbox).
        args: more options for ``get``.
        each: one ``get`` per URL, one after the other, instead of one ``get`` for all.
        exits: the exit statuses ``get`` may end with; None: 0 if all completed, else 1.
        config: a headwater.toml to use.
        quick: part of ``--quick``.
    """

    name: str
    served: tuple[Served, ...]
    helpers: tuple[Served, ...] = ()
    words: tuple[str, ...] = ()
    limit: float = LIMIT
    plant: tuple[tuple[str, bytes], ...] = ()
    left: tuple[tuple[str, bytes], ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    each: bool = False
    exits: frozenset[int] | None = None
    config: str = ""
    quick: bool = True


def B(name: str, *served: Served, **options: object) -> Behaviour:  # noqa: N802 (reads as a table row)
    return Behaviour(name, served, **options)  # type: ignore[arg-type]


def once(first: Reply, then: Reply | None = None) -> tuple[Reply, ...]:
    """The first request gets ``first``, every later one ``then`` (default: an honest answer)."""
    return (first, then or Reply())


def hops(count: int, last: str) -> tuple[Served, ...]:
    """``count`` redirects hop0 -> hop1 -> ... -> ``last``."""
    names = [f"hop{i}" for i in range(count)] + [last]
    return tuple(
        Served(names[i], NEVER, (Reply(status=302, headers=header("Location", names[i + 1])),))
        for i in range(1, count)
    )


def resume_record(url: str) -> bytes:
    """The http source's ``.part.json`` for ``url`` with ETag "v1" (``{url}``: the fault's first URL)."""
    return json.dumps({"url": url, "validator": '"v1"', "total": SMALL}).encode()


GONE = Reply(status=302, headers=header("Location", "file:///etc/passwd"))
RA1 = header("Retry-After", "1")
CL_LIE = f"HTTP/1.1 200 OK\r\nContent-Length: {SMALL}\r\nContent-Length: {SMALL + 7}\r\n\r\n".encode() + D
NO_COLON = f"HTTP/1.1 200 OK\r\nthis line has no colon\r\nContent-Length: {SMALL}\r\n\r\n".encode() + D
BAD_CHUNK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
CONTINUE = (
    b"HTTP/1.1 100 Continue\r\n\r\n" + f"HTTP/1.1 200 OK\r\nContent-Length: {SMALL}\r\n\r\n".encode() + D
)
HTTP10 = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + D
LAST_MODIFIED = header("Last-Modified", email.utils.formatdate(1_700_000_000, usegmt=True))
MANY_HEADERS = tuple((f"X-Filler-{i}", "y" * 20) for i in range(5000))

BEHAVIOURS: tuple[Behaviour, ...] = (
    # resuming: what comes back after a broken connection
    B("drop mid-body once; the resume is served", Served("a.bin", D, once(Reply(cut=HALF)))),
    B("reset (RST) mid-body once", Served("a.bin", D, once(Reply(cut=HALF, reset=True)))),
    B("drop mid-body once, no validator (restart)", Served("a.bin", D, once(Reply(cut=HALF)), etag=None)),
    B(
        "drop once; weak ETag, resume on Last-Modified",
        Served("a.bin", D, once(Reply(cut=HALF)), etag='W/"w1"', headers=LAST_MODIFIED),
    ),
    B(
        "drop every 16 KiB (more breaks than resumes)",
        Served("a.bin", D, (Reply(cut=16 * KIB),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "drop before any body byte, every time",
        Served("a.bin", D, (Reply(cut=0),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "drop before any body byte, once",
        Served("a.bin", D, once(Reply(cut=0)), deliver=False),
        words=CONNECTION,
    ),
    B(
        "200 with the whole body to a Range request",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(ranges=False))),
    ),
    B(
        "206 from another offset than asked",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(range_start=1000))),
    ),
    B(
        "206 whose Content-Range total is smaller (issue item 2)",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(range_total=HALF + 4096)), deliver=False),
    ),
    B(
        "206 whose Content-Range total is larger",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(range_total=SMALL + 5000)), deliver=False),
    ),
    B(
        "changed ETag on resume, 206 of the new version anyway",
        Served(
            "a.bin",
            D,
            once(Reply(cut=HALF), Reply(body=D2, etag='"v2"', if_range=False)),
            versions=(D, D2),
            deliver=False,
        ),
    ),
    B(
        "changed resource on resume, If-Range honoured (200)",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(body=D2, etag='"v2"')), versions=(D, D2)),
    ),
    B(
        "same ETag, other bytes on resume, sha256 given",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(body=D2)), fragment=sha_of(D), deliver=False),
        words=CHECKSUM,
    ),
    B(
        "416 to the resume, then served",
        Served(
            "a.bin",
            D,
            (
                Reply(cut=HALF),
                Reply(status=416, headers=header("Content-Range", f"bytes */{SMALL}")),
                Reply(),
            ),
        ),
    ),
    B(
        "416 to every request after a drop",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(status=416)), deliver=False),
        words=("416",),
    ),
    B(
        "503 Retry-After: 1 to the resume, then served",
        Served("a.bin", D, (Reply(cut=HALF), Reply(status=503, headers=RA1), Reply())),
    ),
    B(
        "garbage Content-Range on the 206",
        Served("a.bin", D, once(Reply(cut=HALF), Reply(content_range="bytes */*"))),
    ),
    B(
        "206 to a request without Range",
        Served(
            "a.bin",
            D,
            (
                Reply(
                    status=206, body=D[1000:2000], headers=header("Content-Range", f"bytes 1000-1999/{SMALL}")
                ),
            ),
            deliver=False,
        ),
    ),
    # lengths and framing
    B(
        "Content-Length longer than the body, then close",
        Served("a.bin", D, (Reply(length=SMALL + 1000, close=True),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "Content-Length shorter than the body, sha256 given",
        Served("a.bin", D, (Reply(length=HALF),), fragment=sha_of(D), deliver=False),
        words=CHECKSUM,
    ),
    B(
        "Content-Length shorter; the rest poisons the kept-alive connection",
        Served(
            "a.bin",
            D,
            (Reply(length=HALF, trailing=b"HTTP/1.1 200 OK\r\n"),),
            versions=(D, D[:HALF]),
            deliver=False,
        ),
        Served("b.bin", D2),
        config="[sources.http]\nconcurrency = 1\n",
    ),
    B("no Content-Length: the body ends at close", Served("a.bin", D, (Reply(no_length=True),))),
    B(
        "no Content-Length, cut short, sha256 given",
        Served("a.bin", D, (Reply(no_length=True, cut=HALF),), fragment=sha_of(D), deliver=False),
        words=CHECKSUM,
    ),
    B("chunked body", Served("a.bin", D, (Reply(chunked=True),))),
    B("chunked body cut mid-chunk once", Served("a.bin", D, once(Reply(chunked=True, cut=HALF + 5)))),
    B(
        "chunk size that is not hex",
        Served("a.bin", D, (Reply(raw=BAD_CHUNK),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "Content-Length and chunked at once",
        Served(
            "a.bin",
            D,
            (Reply(chunked=True, headers=header("Content-Length", "10")),),
            versions=(D, D[:10]),
            deliver=False,
        ),
    ),
    B(
        "two different Content-Length headers",
        Served("a.bin", D, (Reply(raw=CL_LIE),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "Content-Length: -1",
        Served("a.bin", D, (Reply(length=-1, close=True),), deliver=False),
        words=CONNECTION,
    ),
    B("an empty body", Served("empty.bin", b"")),
    B("204 No Content to a GET", Served("a.bin", D, (Reply(status=204),), versions=(b"",), deliver=False)),
    B(
        "304 Not Modified to a plain GET",
        Served("a.bin", D, (Reply(status=304),), versions=(), deliver=False),
    ),
    B(
        "302 without a Location",
        Served("a.bin", D, (Reply(status=302, body=b"<html>moved</html>"),), versions=(), deliver=False),
    ),
    B("100 Continue before the answer", Served("a.bin", D, (Reply(raw=CONTINUE),))),
    B("an HTTP/1.0 answer, body ends at close", Served("a.bin", D, (Reply(raw=HTTP10),))),
    # stalls and slowness
    B(
        "body stalls halfway once (then served)",
        Served("a.bin", D, once(Reply(stall=HALF))),
        limit=STALL_LIMIT,
        quick=False,
    ),
    B(
        "body stalls halfway, every resume stalls too (issue item 9)",
        Served("a.bin", D, once(Reply(stall=HALF), Reply(stall=1000)), deliver=False),
        words=STALL,
        limit=STALL_LIMIT,
        quick=False,
    ),
    B(
        "accepts, reads the request, never answers",
        Served("a.bin", D, (Reply(silent=True),), deliver=False),
        words=STALL,
        limit=STALL_LIMIT,
        quick=False,
    ),
    B("headers trickled a byte every 20 ms", Served("a.bin", D, (Reply(head_pace=0.02),))),
    B("body trickled, 16 KiB every 0.2 s", Served("a.bin", D, (Reply(pace=0.2),))),
    # come back later
    B(
        "429 Retry-After: 1, forever (issue item 3)",
        Served("a.bin", D, (Reply(status=429, headers=RA1),), deliver=False),
        words=RETRY,
        limit=RETRY_LIMIT,
        quick=False,
    ),
    B(
        "503 Retry-After: 1, forever",
        Served("a.bin", D, (Reply(status=503, headers=RA1),), deliver=False),
        words=RETRY,
        limit=RETRY_LIMIT,
        quick=False,
    ),
    B(
        "429 Retry-After as an HTTP date 1 s ahead, forever",
        Served("a.bin", D, (Reply(status=429, retry_in=1.0),), deliver=False),
        words=RETRY,
        limit=RETRY_LIMIT,
        quick=False,
    ),
    B(
        "429 Retry-After: 0, forever",
        Served("a.bin", D, (Reply(status=429, headers=header("Retry-After", "0")),), deliver=False),
        words=RETRY,
        limit=RETRY_LIMIT,
        quick=False,
    ),
    B(
        "503 Retry-After: 1 forever, with a --via fallback",
        Served("a.bin", D, (Reply(status=503, headers=RA1),), deliver=False),
        words=RETRY,
        limit=RETRY_LIMIT,
        args=("--via", "file"),
        quick=False,
    ),
    B("429 Retry-After: 1 once, then served", Served("a.bin", D, once(Reply(status=429, headers=RA1)))),
    B(
        "503 Retry-After as a date 1 s ahead once, then served",
        Served("a.bin", D, once(Reply(status=503, retry_in=1.0))),
    ),
    B(
        "429 with a garbage Retry-After",
        Served("a.bin", D, (Reply(status=429, headers=header("Retry-After", "soon")),), deliver=False),
        words=RETRY,
    ),
    B(
        "429 with Retry-After: 86400",
        Served("a.bin", D, (Reply(status=429, headers=header("Retry-After", "86400")),), deliver=False),
        words=RETRY,
    ),
    B(
        "429 with a negative Retry-After",
        Served("a.bin", D, (Reply(status=429, headers=header("Retry-After", "-5")),), deliver=False),
        words=RETRY,
    ),
    B("500 once, then served", Served("a.bin", D, once(Reply(status=500)), deliver=False), words=("500",)),
    B("404", Served("a.bin", D, (Reply(status=404),), deliver=False), words=("404",)),
    # redirects
    B(
        "redirect loop to itself",
        Served("loop", D, (Reply(status=302, headers=header("Location", "loop")),), deliver=False),
        words=("redirect",),
    ),
    B(
        "30 redirects in a row",
        Served("hop0", D, (Reply(status=302, headers=header("Location", "hop1")),), deliver=False),
        helpers=hops(30, "end"),
        words=("redirect",),
    ),
    B(
        "redirect to another path, then served",
        Served("start", D, (Reply(status=302, headers=header("Location", "real/name.bin")),)),
        helpers=(Served("real/name.bin", D),),
    ),
    B(
        "redirect to file:///etc/passwd",
        Served("a.bin", D, (GONE,), deliver=False),
        words=("redirect", "file:"),
    ),
    B(
        "redirect to a name with encoded ../ and a NUL",
        Served("start", D, (Reply(status=302, headers=header("Location", "..%2F..%2Fescape%00.txt")),)),
        helpers=(Served("..%2F..%2Fescape%00.txt", D),),
    ),
    # names: Content-Disposition, URLs, links
    B(
        "Content-Disposition with ../ traversal",
        Served("a.bin", D, headers=cd('attachment; filename="../../../escape.txt"')),
    ),
    B(
        "Content-Disposition with an absolute path",
        Served("a.bin", D, headers=cd('attachment; filename="{root}/outside/abs.txt"')),
    ),
    B(
        "Content-Disposition filename* with an encoded NUL",
        Served("a.bin", D, headers=cd("attachment; filename*=UTF-8''a%00b.txt")),
    ),
    B(
        "Content-Disposition with a raw NUL byte",
        Served("a.bin", D, headers=cd('attachment; filename="a\0b.txt"'), deliver=False),
    ),
    B(
        "Content-Disposition with a 5,000-character name",
        Served("a.bin", D, headers=cd(f'attachment; filename="{"n" * 5000}.txt"')),
    ),
    B(
        "Content-Disposition of 300 three-byte characters",
        Served("a.bin", D, headers=cd("attachment; filename*=UTF-8''" + "%E2%82%AC" * 300 + ".txt")),
    ),
    B("Content-Disposition naming .bashrc", Served("a.bin", D, headers=cd('attachment; filename=".bashrc"'))),
    B("Content-Disposition naming CON", Served("a.bin", D, headers=cd('attachment; filename="CON"'))),
    B(
        "Content-Disposition with a right-to-left override",
        Served("a.bin", D, headers=cd("attachment; filename*=UTF-8''evil%E2%80%AEgnp.exe")),
    ),
    B(
        "Content-Disposition filename* in an unknown charset",
        Served("a.bin", D, headers=cd("attachment; filename*=x-nosuch''name.bin")),
    ),
    B("Content-Disposition naming ..", Served("a.bin", D, headers=cd('attachment; filename=".."'))),
    B("URL ending in a slash (no name)", Served("", D)),
    B(
        "two URLs, one name, two gets one after the other (issue item 1)",
        Served("one/data.bin", D),
        Served("two/data.bin", D2),
        each=True,
    ),
    B("two URLs, one name, in one get", Served("one/data.bin", D), Served("two/data.bin", D2)),
    B(
        "Content-Disposition names two downloads alike (issue item 1)",
        Served("a.bin", D, headers=cd('attachment; filename="same.bin"')),
        Served("b.bin", D2, headers=cd('attachment; filename="same.bin"')),
        each=True,
    ),
    B(
        "Content-Disposition names a file the user has",
        Served("a.bin", D, headers=cd('attachment; filename="notes.txt"')),
        plant=(("notes.txt", MINE),),
    ),
    B(
        "Content-Disposition names another download's .part",
        Served("x.bin", D, (Reply(pace=0.1),)),
        Served("b.bin", D2, headers=cd('attachment; filename="x.bin.part"')),
    ),
    B(
        "Content-Disposition names another download's .part.json",
        Served("big.bin", L, (Reply(pace=0.003),)),
        Served("b.bin", D2, headers=cd('attachment; filename="big.bin.part.json"')),
        limit=60.0,
    ),
    B(
        "a link in the destination, at the name, pointing outside",
        Served("a.bin", D, headers=cd('attachment; filename="link.txt"'), deliver=False),
        links=(("link.txt", "{root}/outside/victim.txt"),),
    ),
    B(
        "a link in the destination, at the .part name, pointing outside",
        Served("a.bin", D, deliver=False),
        links=(("a.bin.part", "{root}/outside/victim.txt"),),
    ),
    # encodings and headers
    B("Content-Encoding: gzip over a plain body", Served("a.bin", D, (Reply(encoding_lie=True),))),
    B(
        "a gzip body although identity was asked",
        Served("a.bin", D, (Reply(gzip=True),), versions=(D, gzip.compress(D, mtime=0))),
    ),
    B(
        "a gzip body, sha256 of the decoded bytes",
        Served("a.bin", D, (Reply(gzip=True),), fragment=sha_of(D), deliver=False),
        words=CHECKSUM,
    ),
    B(
        "a 200 KiB header",
        Served("a.bin", D, (Reply(headers=header("X-Big", "a" * 200_000)),), deliver=False),
        words=CONNECTION,
    ),
    B("5,000 headers", Served("a.bin", D, (Reply(headers=MANY_HEADERS),), deliver=False), words=CONNECTION),
    B(
        "a header line without a colon",
        Served("a.bin", D, (Reply(raw=NO_COLON),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "not HTTP at all (an SSH banner)",
        Served("a.bin", D, (Reply(raw=b"SSH-2.0-OpenSSH_9.6\r\n"),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "closes the connection without a word",
        Served("a.bin", D, (Reply(raw=b""),), deliver=False),
        words=CONNECTION,
    ),
    B(
        "nothing listens on the port",
        Served("a.bin", D, url="http://127.0.0.1:9/a.bin", deliver=False),
        words=("connect",),
    ),
    B(
        "an https:// URL to a plain-HTTP server",
        Served("a.bin", D, deliver=False, url="https://127.0.0.1:{port}/tls"),
        words=("tls", "ssl", "connect", "connection", "timed out"),
    ),
    # checksums
    B("wrong sha256 fragment", Served("a.bin", D, fragment=sha_of(D2), deliver=False), words=CHECKSUM),
    B(
        "sha256 fragment in upper case",
        Served("a.bin", D, fragment=sha_of(D).upper().replace("#SHA256", "#sha256")),
    ),
    B(
        "invalid sha256 fragment, refused at submit (issue item 9)",
        Served("a.bin", D, fragment="#sha256=xyz", deliver=False),
        exits=frozenset({2}),
    ),
    B("right sha256, body cut once", Served("a.bin", D, once(Reply(cut=HALF)), fragment=sha_of(D))),
    # what a killed run left in the destination
    B(
        "a 0-byte .part.json beside a .part, left by a killed run (issue item 9)",
        Served("a.bin", D),
        left=(("a.bin.part", D[:HALF]), ("a.bin.part.json", b"")),
    ),
    B(  # another download's resumable .part: headwater leaves it alone (docs/sources.md), so it is planted
        "a .part and .part.json of another URL under the same name",
        Served("a.bin", D),
        plant=(("a.bin.part", D2[:HALF]), ("a.bin.part.json", resume_record("http://elsewhere/a.bin"))),
    ),
    B(
        "a .part longer than the resource, with its resume record",
        Served("a.bin", D),
        left=(("a.bin.part", D + b"extra"), ("a.bin.part.json", resume_record("{url}"))),
    ),
    # large bodies: the socket fast path and the early resume record
    B("9 MiB body dropped halfway once", Served("big.bin", L, once(Reply(cut=LHALF))), limit=60.0),
    B(
        "9 MiB body, 206 with a smaller total on resume",
        Served("big.bin", L, once(Reply(cut=LHALF), Reply(range_total=LHALF + 4096)), deliver=False),
        limit=60.0,
    ),
    B(
        "9 MiB body, Content-Length longer, then close",
        Served("big.bin", L, (Reply(length=LARGE + 1000, close=True),), deliver=False),
        words=CONNECTION,
        limit=60.0,
    ),
)


def server_fault(row: Behaviour) -> Callable[[Sandbox], Case]:
    """The fault that runs ``headwater get http`` on the URLs of ``row``, served as it says."""

    def run(box: Sandbox) -> Case:
        served = [_placed(s, box) for s in row.served]
        targets = box.server.mount(box.prefix, [*served, *(_placed(s, box) for s in row.helpers)])[
            : len(served)
        ]
        for name, data in row.plant:
            box.plant(box.dest / name, data)
        for name, data in row.left:
            (box.dest / name).write_bytes(data.replace(b"{url}", targets[0].encode()))
        for name, to in row.links:
            (box.dest / name).symlink_to(to.format(root=box.root))
        if row.config:
            (box.home / "headwater.toml").write_text(row.config)
        box.freeze()
        for group in [[t] for t in targets] if row.each else [targets]:
            box.headwater(
                "get",
                "http",
                *group,
                "--dest",
                str(box.dest),
                "-q",
                *row.args,
                limit=row.limit,
                allowed=row.exits,
            )
        return box.observe([want(t, s) for t, s in zip(targets, served, strict=True)], words=row.words)

    return run


def _placed(served: Served, box: Sandbox) -> Served:
    """``served`` with ``{root}`` and ``{port}`` filled in for this sandbox."""
    fill = {"root": str(box.root), "port": str(box.server.port)}
    return attrs.evolve(
        served,
        headers=tuple((k, v.replace("{root}", fill["root"])) for k, v in served.headers),
        url=served.url.format(**fill) if served.url else None,
    )
