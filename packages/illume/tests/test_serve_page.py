"""The page at `/` in a real browser (Playwright driving Debian's Chromium) against the live server:
draw, ask about the drawing, edit it, and a conversation; every picture shown is one the server
drew. Writes a screenshot (ILLUME_SCREENSHOTS, default the test's temp folder).

Needs Chromium (`apt-get install chromium`); skipped where it is missing, except under
ILLUME_REQUIRE_BROWSER=1 (.ci/run), where a missing browser fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from illume.pipeline import IllumePipeline
from illume.serve import ServeSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("ILLUME_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is missing: apt-get install chromium (see .ci/run)")
        pytest.skip("Chromium is missing: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


def test_the_page_draws_asks_edits_and_converses(browser, pipeline_dir, live_server, tmp_path):
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2
    with live_server(create_app(pipe, ServeSettings())) as server:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url + "/")
        assert page.title() == "ILLUME"

        page.click("#draw-go")
        drawn = page.wait_for_selector("#draw-out img", timeout=60_000)
        assert drawn.get_attribute("src").startswith("data:image/png;base64,")
        assert page.evaluate("document.querySelector('#draw-out img').naturalWidth") > 0

        page.click("#ask-go")  # about the drawing just made
        page.wait_for_function(
            "document.querySelector('#ask-out').textContent.startsWith('Answer:')", timeout=60_000
        )

        page.click("#edit-go")  # the last drawing, edited
        edited = page.wait_for_selector("#edit-out img", timeout=60_000)
        assert edited.get_attribute("src") != drawn.get_attribute("src")

        page.click("#chat-go")
        page.wait_for_selector("#chatlog .assistant", timeout=60_000)
        assert "You: Draw a green triangle." in page.inner_text("#chatlog")

        shots = Path(os.environ.get("ILLUME_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "serve_page.png"), full_page=True)
        for status in ("#draw-status", "#ask-status", "#edit-status", "#chat-status"):
            assert page.inner_text(status) == "", page.inner_text(status)
        assert not errors, errors
