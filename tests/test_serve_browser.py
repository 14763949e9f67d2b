"""The live page in a real headless browser: Debian's `chromium` driven by Playwright (no browser download).
The page loads, a prompt starts a stream, >= 20 frames are drawn on the canvas (the page counts its draws in
`window.framesDrawn`), a switched prompt is accepted and frames keep coming; a screenshot is saved (under the
test's tmp folder, or where CAUSVID_SCREENSHOT says: CAUSVID_SCREENSHOT=docs/serve_screenshot.png remakes the
README's). Waits are on page conditions (Playwright's wait_for_function), never on a clock."""
import os
import shutil
from pathlib import Path

import pytest

from causvid.config import load_config
from causvid.pipelines.text_to_video import load_components
from causvid.serve.__main__ import TOY_PROMPTS
from causvid.serve.app import ServeOptions, create_app
from causvid.serve.server import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LIMIT_MS = 60_000  # a hang fails the test instead of blocking the suite

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def test_the_page_streams_draws_and_switches_prompts(tmp_path):
    components = load_components(ROOT / "checkpoints" / "toy")
    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    app = create_app(components, config, ServeOptions(model_name="cf_dmd_chunkwise (checkpoints/toy)", fps=0,
                                                      suggestions=TOY_PROMPTS))
    with BackgroundServer(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1020, "height": 640})
            page.goto(url)
            page.wait_for_selector(".chip", timeout=LIMIT_MS)  # /healthz answered: suggestions are listed
            assert page.locator(".chip").count() == len(TOY_PROMPTS)
            assert "cf_dmd_chunkwise" in page.text_content("#model")

            page.fill("#prompt", "a red square moving left")
            page.click("#go")
            page.wait_for_function("window.framesDrawn >= 20", timeout=LIMIT_MS)
            assert page.text_content("#go") == "Switch"
            assert page.text_content("#current") == "a red square moving left"
            assert page.eval_on_selector("#screen", "c => [c.width, c.height]") == [32, 32]

            page.fill("#prompt", "a blue circle moving up")
            page.click("#go")
            page.wait_for_function("window.promptsApplied >= 1", timeout=LIMIT_MS)
            drawn = page.evaluate("window.framesDrawn")
            page.wait_for_function(f"window.framesDrawn >= {drawn + 36}", timeout=LIMIT_MS)  # three more blocks
            assert page.text_content("#current") == "a blue circle moving up"
            assert not page.text_content("#error")
            assert float(page.text_content("#fps")) > 0 and page.text_content("#latency").endswith(" s")
            shot = Path(os.environ.get("CAUSVID_SCREENSHOT") or tmp_path / "serve_screenshot.png")
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 0

            page.click("#stop")
            assert page.text_content("#go") == "Start" and page.text_content("#state") == "idle"
        finally:
            browser.close()
