"""A final name that is already taken: rename (the default), skip and overwrite, for every builtin source."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from localhttp import LocalServer, Resource, serving
from waiting import wait_until

import headwater._files as files
import headwater_file
from headwater import (
    Engine,
    ExistingFileKept,
    InvalidPolicyError,
    PartFile,
    PolicyOverride,
    RatePolicy,
    SQLiteStore,
    State,
    destination,
    hookimpl,
    land,
    safe_filename,
)
from headwater._files import MAX_NAME_BYTES, numbered, split_extension
from headwater_http import HttpSource
from headwater_ytdlp import YtDlpSource

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = (tmp_path / "dest").resolve()
    path.mkdir()
    return path


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as srv:
        yield srv


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the landing rule see a filesystem without hard links (FAT, some network filesystems)."""

    def refuse(src: object, dst: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted (no hard links here)")

    monkeypatch.setattr(files.os, "link", refuse)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def part_with(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# -- the names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("song.flac", "song (1).flac", "song (2).flac"),
        ("README", "README (1)", "README (2)"),
        ("archive.tar.gz", "archive (1).tar.gz", "archive (2).tar.gz"),
        ("data.csv.zst", "data (1).csv.zst", "data (2).csv.zst"),
        ("v1.2.gz", "v1 (1).2.gz", "v1 (2).2.gz"),
        ("a (1).txt", "a (1) (1).txt", "a (1) (2).txt"),
        ("Mr. Smith goes", "Mr. Smith goes (1)", "Mr. Smith goes (2)"),
        ("report." + "e" * 20, "report." + "e" * 20 + " (1)", "report." + "e" * 20 + " (2)"),
    ],
)
def test_numbered_names(dest: Path, name: str, first: str, second: str) -> None:
    assert numbered(dest / name, 1) == dest / first
    assert numbered(dest / name, 2) == dest / second


def test_numbered_names_stay_within_the_name_limit() -> None:
    for name in ("y" * 300 + ".flac", "é" * 300 + ".mp3", "x" * 300, "z" * 195 + ".tar.gz"):
        base = Path(safe_filename(name))
        assert len(base.name.encode()) == MAX_NAME_BYTES or len(base.name.encode()) == MAX_NAME_BYTES - 1
        for number in (1, 10, 9999):
            made = numbered(base, number).name
            assert len(made.encode()) <= MAX_NAME_BYTES, made
            assert made.endswith(f" ({number}){split_extension(base.name)[1]}")
            assert safe_filename(made) == made
    # 199 bytes; the stem gets 192 of them, which would end inside an "é": it ends before it
    assert numbered(Path("a" + "é" * 97 + ".mp3"), 1).name == "a" + "é" * 95 + " (1).mp3"


@given(st.text(), st.integers(1, files.MAX_NUMBER))
def test_numbered_names_of_any_safe_name_are_safe_and_distinct(name: str, number: int) -> None:
    base = safe_filename(name)
    made = numbered(Path(base), number).name
    assert safe_filename(made) == made
    assert len(made.encode()) <= MAX_NAME_BYTES
    assert made != base and made != numbered(Path(base), number + 1).name


# -- the landing rule ------------------------------------------------------------


def test_rename_keeps_a_file_already_there(dest: Path) -> None:
    mine = part_with(dest, "notes.txt", b"the user's own notes")
    landed = land(part_with(dest, "x.part", b"downloaded"), dest / "notes.txt")
    assert landed == dest / "notes (1).txt"
    assert mine.read_bytes() == b"the user's own notes"
    assert landed.read_bytes() == b"downloaded"
    assert names(dest) == ["notes (1).txt", "notes.txt"]


def test_rename_never_follows_a_link_at_a_name(dest: Path, tmp_path: Path) -> None:
    victim = part_with(tmp_path, "victim", b"precious")
    (dest / "a.bin").symlink_to(victim)
    (dest / "a (1).bin").symlink_to(tmp_path / "nowhere")  # dangling: still taken
    landed = land(part_with(dest, "p", b"new"), dest / "a.bin")
    assert landed == dest / "a (2).bin" and landed.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("links", ["hard links", "no hard links"])
def test_concurrent_landings_of_one_name_each_get_their_own(dest: Path, links: str, request) -> None:
    """N threads, released together by a barrier, land N parts on one name: N files, none replaced."""
    if links == "no hard links":
        request.getfixturevalue("no_hard_links")
    count = 24
    payloads = [os.urandom(1000) + bytes([i]) for i in range(count)]
    parts = [part_with(dest, f"{i}.part", data) for i, data in enumerate(payloads)]
    barrier = threading.Barrier(count)
    landed: list[Path | BaseException] = [Path()] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            landed[i] = land(parts[i], dest / "same.bin")
        except BaseException as exc:
            landed[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not [r for r in landed if isinstance(r, BaseException)]
    assert len(set(landed)) == count
    assert {p.read_bytes() for p in landed} == set(payloads)  # each file holds exactly one download
    for i, path in enumerate(landed):
        assert path.read_bytes() == payloads[i]
    assert names(dest) == sorted(["same.bin"] + [f"same ({n}).bin" for n in range(1, count)])


def test_without_hard_links_an_existing_file_is_still_kept(dest: Path, no_hard_links: None) -> None:
    part_with(dest, "a.txt", b"old")
    assert land(part_with(dest, "p", b"new"), dest / "a.txt") == dest / "a (1).txt"
    assert (dest / "a.txt").read_bytes() == b"old"
    with pytest.raises(ExistingFileKept):
        land(part_with(dest, "q", b"newer"), dest / "a.txt", "skip")
    assert names(dest) == ["a (1).txt", "a.txt"]


def test_skip_keeps_the_file_and_deletes_the_part(dest: Path) -> None:
    part_with(dest, "a.txt", b"old")
    with pytest.raises(ExistingFileKept) as kept:
        land(part_with(dest, "p", b"new"), dest / "a.txt", "skip")
    assert kept.value.path == str(dest / "a.txt")
    assert names(dest) == ["a.txt"] and (dest / "a.txt").read_bytes() == b"old"
    assert land(part_with(dest, "p", b"new"), dest / "b.txt", "skip") == dest / "b.txt"


def test_skip_refuses_a_name_taken_by_a_folder(dest: Path) -> None:
    (dest / "a.txt").mkdir()
    with pytest.raises(FileExistsError, match="not a regular file"):
        land(part_with(dest, "p", b"new"), dest / "a.txt", "skip")


def test_overwrite_replaces(dest: Path) -> None:
    part_with(dest, "a.txt", b"old")
    assert land(part_with(dest, "p", b"new"), dest / "a.txt", "overwrite") == dest / "a.txt"
    assert names(dest) == ["a.txt"] and (dest / "a.txt").read_bytes() == b"new"


def test_no_free_name_left_fails_and_keeps_the_part(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_NUMBER", 2)
    for name in ("a.txt", "a (1).txt", "a (2).txt"):
        part_with(dest, name, b"taken")
    part = part_with(dest, "p", b"new")
    with pytest.raises(FileExistsError, match="no free name"):
        land(part, dest / "a.txt")
    assert part.read_bytes() == b"new"


def test_a_part_left_as_a_second_link_of_a_landed_file_is_not_written_through(dest: Path) -> None:
    """A process killed between linking and unlinking leaves ``x.part`` as a second name of ``x``."""
    landed = part_with(dest, "x.bin", b"a complete download")
    os.link(landed, dest / "x.bin.part")
    part = PartFile(dest, destination(dest, "x.bin"))  # empties a stale .part: must not empty x.bin
    part.write(b"next")
    assert part.land() == dest / "x (1).bin"
    assert landed.read_bytes() == b"a complete download"


def test_partfile_skip_refuses_before_writing(dest: Path) -> None:
    part_with(dest, "a.bin", b"old")
    with pytest.raises(ExistingFileKept):
        PartFile(dest, destination(dest, "a.bin"), existing="skip")
    assert names(dest) == ["a.bin"]


# -- the choice: policy, submit, record ---------------------------------------------


def test_the_policy_field_is_validated() -> None:
    assert RatePolicy().existing == "rename"
    assert RatePolicy(existing="skip").existing == "skip"
    with pytest.raises(InvalidPolicyError, match="existing must be one of 'rename', 'skip', 'overwrite'"):
        RatePolicy(existing="replace")  # type: ignore[arg-type]


def test_submit_refuses_an_unknown_choice(dest: Path) -> None:
    with (
        Engine(dest, plugins={"file": headwater_file}) as engine,
        pytest.raises(ValueError, match="existing must be one of"),
    ):
        engine.submit("file", "/etc/hostname", existing="keep")  # type: ignore[arg-type]


def copy_with(engine: Engine, src: Path, **kwargs: object) -> object:
    return engine.wait([engine.submit("file", str(src), **kwargs)], timeout=20)[0]


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return part_with(tmp_path, "song.flac", b"downloaded song")


def test_file_source_by_default_keeps_the_users_file(dest: Path, song: Path) -> None:
    part_with(dest, "song.flac", b"the user's song")
    with Engine(dest, plugins={"file": headwater_file}) as engine:
        first, second = copy_with(engine, song), copy_with(engine, song)
    assert (first.state, second.state) == (State.COMPLETED, State.COMPLETED)
    assert (first.file_path, second.file_path) == (str(dest / "song (1).flac"), str(dest / "song (2).flac"))
    assert (dest / "song.flac").read_bytes() == b"the user's song"
    assert not first.skipped and first.size == first.transferred == len(b"downloaded song")


def test_skip_is_completed_with_the_file_already_there(dest: Path, song: Path) -> None:
    part_with(dest, "song.flac", b"the user's song")
    with Engine(dest, plugins={"file": headwater_file}) as engine:
        rec = copy_with(engine, song, existing="skip")
    assert rec.state is State.COMPLETED and rec.skipped and rec.error is None
    assert rec.file_path == str(dest / "song.flac") and rec.size == len(b"the user's song")
    assert rec.transferred == 0
    assert names(dest) == ["song.flac"] and (dest / "song.flac").read_bytes() == b"the user's song"


def test_overwrite_only_when_asked(dest: Path, song: Path) -> None:
    part_with(dest, "song.flac", b"the user's song")
    with Engine(dest, plugins={"file": headwater_file}) as engine:
        rec = copy_with(engine, song, existing="overwrite")
    assert rec.state is State.COMPLETED and not rec.skipped and rec.file_path == str(dest / "song.flac")
    assert names(dest) == ["song.flac"] and (dest / "song.flac").read_bytes() == b"downloaded song"


def test_the_source_policy_is_the_default_and_a_download_choice_wins(dest: Path, song: Path) -> None:
    part_with(dest, "song.flac", b"the user's song")
    policies = {"file": PolicyOverride({"existing": "skip"})}
    with Engine(dest, plugins={"file": headwater_file}, policies=policies) as engine:
        assert engine.sources()[0].policy.existing == "skip"
        by_policy = copy_with(engine, song)
        by_download = copy_with(engine, song, existing="rename")
    assert by_policy.skipped and by_policy.existing is None
    assert not by_download.skipped and by_download.existing == "rename"
    assert by_download.file_path == str(dest / "song (1).flac")


def test_the_choice_is_journaled_and_honoured_after_a_restart(dest: Path, song: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    part_with(dest, "song.flac", b"the user's song")
    with Engine(dest, plugins={"file": headwater_file}, store=SQLiteStore(journal)) as engine:
        engine.pause("file")
        rid = engine.submit("file", str(song), existing="skip")
    with Engine(dest, plugins={"file": headwater_file}, store=SQLiteStore(journal), hold=True) as engine:
        engine.resume("file")
        assert engine.start_held() == [rid]
        rec = engine.wait([rid], timeout=20)[0]
    assert rec.state is State.COMPLETED and rec.skipped and rec.existing == "skip"
    assert names(dest) == ["song.flac"]


class _KeepsAfterCancel:
    """A source that says "kept" only once its download is cancelled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = threading.Event()

    @hookimpl
    def download_impl(self, job, ctx):
        self.started.set()
        ctx.cancelled.wait(20)
        raise ExistingFileKept(self.path)


def test_a_cancel_never_deletes_the_file_a_skip_kept(dest: Path) -> None:
    users = part_with(dest, "users.txt", b"mine")
    plugin = _KeepsAfterCancel(users)
    with Engine(dest, plugins={"keeper": plugin}) as engine:
        rid = engine.submit("keeper", "x")
        assert plugin.started.wait(10)
        assert engine.cancel(rid)
        engine.close()  # waits for download_impl to return and its outcome to be handled
        assert engine.get(rid).state is State.CANCELLED
    assert users.read_bytes() == b"mine"


# -- http ------------------------------------------------------------------------


def http_engine(dest: Path, **kwargs: object) -> Engine:
    return Engine(dest, plugins={"http": HttpSource(read_timeout=5)}, **kwargs)  # type: ignore[arg-type]


def test_http_two_servers_one_name_at_once_land_two_files(dest: Path) -> None:
    """Two servers serve /data.bin; both downloads run at once and both land, each intact."""
    one, two = os.urandom(200_000), os.urandom(300_000)
    gates = [threading.Semaphore(0), threading.Semaphore(0)]
    with serving() as first, serving() as second, http_engine(dest) as engine:
        urls = [
            first.add("/data.bin", Resource(one, gate=gates[0], chunk=50_000)),
            second.add("/data.bin", Resource(two, gate=gates[1], chunk=50_000)),
        ]
        ids = [engine.submit("http", url) for url in urls]
        wait_until(  # both writing
            lambda: len([p for p in dest.iterdir() if p.name.endswith(".part")]) >= 2,
            10,
            lambda: names(dest),
            step=0.01,
        )
        for gate in gates:
            gate.release(100)
        records = engine.wait(ids, timeout=30)
    assert [r.state for r in records] == [State.COMPLETED, State.COMPLETED], [r.error for r in records]
    paths = [Path(r.file_path) for r in records]
    assert sorted(p.name for p in paths) == ["data (1).bin", "data.bin"]
    assert [p.read_bytes() for p in paths] == [one, two]
    assert names(dest) == ["data (1).bin", "data.bin"]


def test_http_content_disposition_of_one_name_never_replaces_the_earlier_file(
    server: LocalServer, dest: Path
) -> None:
    """The issue's case: two URLs whose server names both files report.pdf, one after the other."""
    header = {"content-disposition": 'attachment; filename="report.pdf"'}
    bodies = [b"first report", b"second report"]
    urls = [server.add(f"/r{i}", Resource(body, headers=header)) for i, body in enumerate(bodies)]
    with http_engine(dest) as engine:
        records = [engine.wait([engine.submit("http", url)], timeout=20)[0] for url in urls]
    assert [r.file_path for r in records] == [str(dest / "report.pdf"), str(dest / "report (1).pdf")]
    assert [Path(r.file_path).read_bytes() for r in records] == bodies


def test_http_with_no_free_name_fails_saying_so_and_keeps_what_is_there(
    server: LocalServer, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_NUMBER", 1)
    part_with(dest, "a.bin", b"one")
    part_with(dest, "a (1).bin", b"two")
    url = server.add("/a.bin", Resource(b"new" * 1000))
    with http_engine(dest) as engine:
        rec = engine.wait([engine.submit("http", url)], timeout=20)[0]
    assert rec.state is State.FAILED and "no free name for 'a.bin'" in rec.error
    assert (dest / "a.bin").read_bytes() == b"one" and (dest / "a (1).bin").read_bytes() == b"two"


def test_http_skip_reads_no_body(server: LocalServer, dest: Path) -> None:
    """The body is held back by a gate nobody opens: only a download that reads no body ends."""
    part_with(dest, "big.iso", b"the user's iso")
    url = server.add("/big.iso", Resource(os.urandom(100_000), gate=threading.Semaphore(0)))
    with http_engine(dest) as engine:
        rec = engine.wait([engine.submit("http", url, existing="skip")], timeout=4)[0]
    assert rec.state is State.COMPLETED and rec.skipped, rec.error
    assert rec.file_path == str(dest / "big.iso")
    assert names(dest) == ["big.iso"] and (dest / "big.iso").read_bytes() == b"the user's iso"


def test_http_skip_when_the_file_appears_during_the_download(server: LocalServer, dest: Path) -> None:
    gate = threading.Semaphore(0)
    url = server.add("/late.bin", Resource(os.urandom(100_000), gate=gate, chunk=20_000))
    with http_engine(dest) as engine:
        rid = engine.submit("http", url, existing="skip")
        wait_until(lambda: (dest / "late.bin.part").exists(), 10, step=0.01)
        part_with(dest, "late.bin", b"arrived meanwhile")
        gate.release(100)
        rec = engine.wait([rid], timeout=20)[0]
    assert rec.state is State.COMPLETED and rec.skipped, rec.error
    assert names(dest) == ["late.bin"] and (dest / "late.bin").read_bytes() == b"arrived meanwhile"


def test_http_leaves_another_urls_resumable_part_alone(server: LocalServer, dest: Path) -> None:
    """A kept ``x.bin.part`` of URL A is not emptied by URL B of the same name; A resumes from it later."""
    data_a, data_b = os.urandom(100_000), os.urandom(50_000)
    res_a = Resource(data_a)
    url_a = server.add("/a/x.bin", res_a)
    url_b = server.add("/b/x.bin", Resource(data_b))
    part_with(dest, "x.bin.part", data_a[:40_000])
    (dest / "x.bin.part.json").write_text(json.dumps({"url": url_a, "validator": '"v1"', "total": 100_000}))
    with http_engine(dest) as engine:
        b = engine.wait([engine.submit("http", url_b)], timeout=20)[0]
        assert b.state is State.COMPLETED and Path(b.file_path).read_bytes() == data_b
        assert (dest / "x.bin.part").read_bytes() == data_a[:40_000]
        a = engine.wait([engine.submit("http", url_a)], timeout=20)[0]
    assert a.state is State.COMPLETED and Path(a.file_path).read_bytes() == data_a
    assert a.file_path == str(dest / "x (1).bin")
    assert res_a.requests[-1].get("range") == "bytes=40000-"  # A asked only for the rest
    assert names(dest) == ["x (1).bin", "x.bin"]


# -- yt-dlp --------------------------------------------------------------------------


def ytdlp_engine(dest: Path) -> Engine:
    return Engine(dest, plugins={"yt-dlp": YtDlpSource()}, policies={"yt-dlp": RatePolicy(1, 0)})


def test_ytdlp_renames_skips_and_overwrites(server: LocalServer, dest: Path) -> None:
    pytest.importorskip("yt_dlp")
    media = os.urandom(50_000)
    resource = Resource(media, headers={"content-type": "video/mp4"})
    url = server.add("/media/clip.mp4", resource)
    part_with(dest, "clip [clip].mp4", b"the user's clip")
    with ytdlp_engine(dest) as engine:
        renamed = engine.wait([engine.submit("yt-dlp", url)], timeout=50)[0]
        fetched = len(resource.requests)
        skipped = engine.wait([engine.submit("yt-dlp", url, existing="skip")], timeout=50)[0]
        probes = len(resource.requests) - fetched
        overwritten = engine.wait([engine.submit("yt-dlp", url, existing="overwrite")], timeout=50)[0]
    assert renamed.state is State.COMPLETED, renamed.error
    assert renamed.file_path == str(dest / "clip [clip] (1).mp4")
    assert Path(renamed.file_path).read_bytes() == media
    assert skipped.state is State.COMPLETED and skipped.skipped, skipped.error
    assert skipped.file_path == str(dest / "clip [clip].mp4")
    assert probes < fetched  # the skip stopped before the media transfer
    assert overwritten.state is State.COMPLETED and overwritten.file_path == str(dest / "clip [clip].mp4")
    assert (dest / "clip [clip].mp4").read_bytes() == media
    assert names(dest) == ["clip [clip] (1).mp4", "clip [clip].mp4"]
