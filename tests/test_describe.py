"""``ctx.describe``: a name and fields the source learns while downloading reach the record at once."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from waiting import wait_until

from headwater import (
    DownloadCancelled,
    Engine,
    FieldConflictError,
    Job,
    PluginError,
    SQLiteStore,
    State,
    hookimpl,
)
from headwater._display import _Bars
from headwater._reader import read_records
from headwater.cli import main


class Resolving:
    """Learns the title of a track when it starts, describes it, then waits for the test to let it finish."""

    def __init__(
        self, describe: dict[str, object] | None = None, display_name: str | None = "Artist - Title"
    ) -> None:
        self.fields = {"artist": "Artist", "track": 7} if describe is None else describe
        self.display_name = display_name
        self.described = threading.Event()
        self.go_on = threading.Event()

    @hookimpl
    def download_impl(self, job: Job, ctx) -> Path:
        ctx.progress(1, 10)
        if job.target == "late":  # describes only once the test says so
            self.go_on.wait(10)
            self.go_on.clear()
        ctx.describe(display_name=self.display_name, **self.fields)
        self.described.set()
        self.go_on.wait(10)
        if ctx.cancelled.is_set():
            ctx.describe(display_name="after the cancel")
            raise DownloadCancelled("stopped")
        path = ctx.dest_dir / f"{job.target}.flac"
        path.write_bytes(b"fLaC")
        return path


def test_describe_reaches_the_record_the_journal_status_and_json_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HEADWATER_HOME", str(home))
    journal = home / "journal.sqlite3"
    source = Resolving()
    with Engine(tmp_path / "dl", {"acme": source}, store=SQLiteStore(journal)) as engine:
        rid = engine.submit("acme", "12345")
        assert source.described.wait(10)
        running = engine.get(rid)
        assert running.state is State.RUNNING
        assert (running.display_name, running.name) == ("Artist - Title", "Artist - Title")
        assert running.extra == {"artist": "Artist", "track": 7}
        (journaled,) = read_records(journal)  # another reader sees it at once: it was committed
        assert journaled.display_name == "Artist - Title" and journaled.extra == {
            "artist": "Artist",
            "track": 7,
        }

        shown = CliRunner().invoke(main, ["status"])
        assert shown.exit_code == 0 and "Artist - Title" in shown.stdout
        (listed,) = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)
        assert listed["display_name"] == "Artist - Title" and listed["extra"] == {
            "artist": "Artist",
            "track": 7,
        }

        source.go_on.set()
        done = engine.wait([rid], timeout=10)[0]
        assert done.state is State.COMPLETED and done.name == "Artist - Title" and done.extra["track"] == 7

    with Engine(tmp_path / "dl", {"acme": Resolving()}, store=SQLiteStore(journal)) as restarted:
        again = restarted.get(rid)
    assert (again.display_name, again.extra) == ("Artist - Title", {"artist": "Artist", "track": 7})


def test_describe_keeps_the_fields_record_fields_gave_and_may_set_the_label(make_engine) -> None:
    class Labelled(Resolving):
        @hookimpl
        def record_fields(self, job: Job) -> dict[str, object]:
            return {"track_id": job.target, "track": 0}

    source = Labelled({"track": 3, "username": "acme_dl"}, display_name=None)
    engine = make_engine({"acme": source})
    source.go_on.set()
    done = engine.wait([engine.submit("acme", "9", display_name="given")], timeout=10)[0]
    assert done.display_name == "given"  # None leaves it as it was
    assert done.extra == {"track_id": "9", "track": 3} and done.username == "acme_dl"


@pytest.mark.parametrize(
    ("fields", "display_name", "error"),
    [
        ({"state": "completed"}, "x", FieldConflictError),
        ({"progress": 1.0}, "x", FieldConflictError),
        ({"cover": b"bytes"}, "x", PluginError),
        ({"tags": ["a"]}, "x", PluginError),
        ({"username": ""}, "x", PluginError),
        ({}, "", PluginError),
        ({}, 5, PluginError),
    ],
)
def test_describe_follows_the_rules_of_record_fields(make_engine, fields, display_name, error) -> None:
    source = Resolving(fields, display_name)
    engine = make_engine({"acme": source})
    done = engine.wait([engine.submit("acme", "1")], timeout=10)[0]
    assert done.state is State.FAILED and done.error.startswith(error.__name__ + ":")
    assert done.display_name is None and done.extra == {}


def test_describe_after_a_cancel_changes_nothing(make_engine) -> None:
    source = Resolving()
    engine = make_engine({"acme": source})
    rid = engine.submit("acme", "1")
    assert source.described.wait(10)
    engine.cancel(rid)
    source.go_on.set()  # the download describes again, then stops
    wait_until(lambda: engine.worker_stats()["acme"][1] == 0)
    record = engine.get(rid)
    assert record.state is State.CANCELLED and record.display_name == "Artist - Title"


def test_a_progress_bar_shows_the_name_described_after_it_was_drawn(make_engine) -> None:
    source = Resolving(display_name="Described Title")
    engine = make_engine({"acme": source})
    rid = engine.submit("acme", "late")
    wait_until(lambda: engine.get(rid).transferred == 1)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with _Bars(console, 1) as bars:
        bars.show(engine, [rid], {})  # drawn with the target as its name
        source.go_on.set()
        assert source.described.wait(10)
        bars.show(engine, [rid], {})
    assert "Described Title" in out.getvalue()
    source.go_on.set()
    engine.wait([rid], timeout=10)


def test_record_fields_keys_must_be_strings(make_engine) -> None:
    """One rule for record_fields and describe: a key that is not a str is refused at submit."""

    class NumberKeys(Resolving):
        @hookimpl
        def record_fields(self, job: Job) -> dict[object, object]:
            return {1: "x"}

    engine = make_engine({"acme": NumberKeys()})
    with pytest.raises(PluginError, match="record_fields of source 'acme'.*the key 1; keys must be str"):
        engine.submit("acme", "1")
