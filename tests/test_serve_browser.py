"""The web page in a real browser: Debian's chromium, driven by Playwright, against a served engine.

Playwright cannot download its own browser here, so it drives
/usr/bin/chromium (``.ci/run`` installs the Debian package). The test logs
in through the page's ``#token=`` link, adds a download and watches it
complete, cancels a running one, pauses a source, and saves a screenshot
in its tmp folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from instrumented import InstrumentedSource
from served import TOKEN, serving

import headwater_file
from headwater import RatePolicy, State

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"no browser at {CHROMIUM}: apt-get install chromium"
)
def test_the_page_adds_watches_cancels_and_pauses(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    inst = InstrumentedSource("inst", RatePolicy(concurrency=2))
    source = tmp_path / "song.flac"
    source.write_bytes(b"f" * 5000)
    plugins = {"file": headwater_file, "inst": inst}
    with serving(tmp_path / "dest", plugins) as served, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

            page.goto(f"{served.url}/#token={TOKEN}")
            page.wait_for_selector("#connection.live")
            assert "token" not in page.url  # the token left the address bar

            # Add a download and watch it complete.
            page.select_option("#add-source", "file")
            page.fill("#add-targets", str(source))
            page.click("#add-form button[type=submit]")
            done = page.wait_for_selector("#download-rows tr[data-state=completed]")
            assert "song.flac" in done.inner_text()
            assert (tmp_path / "dest" / "song.flac").read_bytes() == source.read_bytes()

            # Cancel a running one.
            page.select_option("#add-source", "inst")
            page.fill("#add-targets", "block:browser")
            page.click("#add-form button[type=submit]")
            running = page.wait_for_selector("#download-rows tr[data-state=running]")
            download_id = running.get_attribute("data-id")
            page.click(f"#download-rows tr[data-id='{download_id}'] button.cancel")
            page.wait_for_selector(f"#download-rows tr[data-id='{download_id}'][data-state=cancelled]")
            assert served.engine.get(download_id or "").state is State.CANCELLED

            # Pause a source.
            page.click("#source-rows tr[data-source=inst] button")
            page.wait_for_selector("#source-rows tr[data-source=inst] .paused")
            assert served.engine.paused() == ["inst"]

            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert not problems, problems
        finally:
            browser.close()
            inst.release_all()
    assert (tmp_path / "page.png").stat().st_size > 10_000
