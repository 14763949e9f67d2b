"""The live page in a real headless browser: Debian's `chromium` driven by Playwright (no browser download).
The page loads with no failed request, shows the model's vocabulary and names the words of a prompt it does not
know; a prompt starts a stream whose canvas (read with getImageData) shows the colour the prompt names; a frame
that does not decode is skipped and drawing goes on; the event log stays bounded; a switched prompt's colour
follows; a page of another origin cannot open the stream. A screenshot is saved (under the test's tmp folder, or
where CAUSVID_SCREENSHOT says: CAUSVID_SCREENSHOT=docs/serve_screenshot.png remakes the README's). Waits are on
page conditions (Playwright's wait_for_function), never on a clock."""
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from causvid.config import load_config
from causvid.pipelines.text_to_video import load_components
from causvid.serve.__main__ import TOY_PROMPTS, toy_vocabulary
from causvid.serve.app import ServeOptions, create_app
from causvid.serve.server import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LIMIT_MS = 60_000  # a hang fails the test instead of blocking the suite
A, B = "a red square moving left", "a blue circle moving up"
CANVAS = "(() => { const c = document.getElementById('screen'); " \
         "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def canvas_colour(rgba) -> str:
    """'red' or 'blue': which channel dominates the pixels that are not the toy's grey background (51)."""
    pixels = np.asarray(rgba, dtype=int).reshape(-1, 4)[:, :3]
    shape = np.abs(pixels - 51).sum(-1) > 120
    r, _, b = pixels[shape].mean(0)
    return "red" if r > b else "blue"


class OtherOrigin:
    """`with OtherOrigin(folder) as url:` a plain static server of `folder` on another port (another origin)."""

    def __init__(self, folder):
        handler = lambda *a, **k: SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


def test_the_page_streams_draws_and_switches_prompts(tmp_path):
    components = load_components(ROOT / "checkpoints" / "toy")
    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    app = create_app(components, config, ServeOptions(model_name="cf_dmd_chunkwise (checkpoints/toy)", fps=0,
                                                      suggestions=TOY_PROMPTS, vocabulary=toy_vocabulary()))
    (tmp_path / "index.html").write_text("<!doctype html><title>another site</title>")
    with BackgroundServer(app) as url, OtherOrigin(tmp_path) as other, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1020, "height": 640})
            failed = []
            page.on("response", lambda r: failed.append((r.url, r.status)) if r.status >= 400 else None)
            page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
            page.goto(url)
            page.wait_for_selector(".chip", timeout=LIMIT_MS)  # /healthz answered: suggestions are listed
            assert page.locator(".chip").count() == len(TOY_PROMPTS)
            assert "cf_dmd_chunkwise" in page.text_content("#model")
            vocabulary = page.text_content("#vocabulary")
            assert all(word in vocabulary for word in ["red", "yellow", "triangle", "circle", "left", "down"])

            page.fill("#prompt", "a purple dog jumping left")  # named before anything is sent
            assert page.text_content("#unknown").startswith("the model does not know: purple, dog, jumping (")
            page.fill("#prompt", A)
            assert page.text_content("#unknown") == ""
            page.click("#go")
            page.wait_for_function("window.framesDrawn >= 20", timeout=LIMIT_MS)
            assert page.text_content("#go") == "Switch"
            assert page.text_content("#current") == A
            assert page.eval_on_selector("#screen", "c => [c.width, c.height]") == [32, 32]
            assert canvas_colour(page.evaluate(CANVAS)) == "red"

            # a frame that does not decode, and a flood of events: drawing goes on, the log stays bounded
            page.evaluate("for (let i = 0; i < 500; i++) onMessage({data: JSON.stringify({type: 'noise', i})});"
                          "onMessage({data: new Blob([new Uint8Array([1, 2, 3])])})")
            page.wait_for_function("window.framesBad === 1", timeout=LIMIT_MS)
            drawn = page.evaluate("window.framesDrawn")
            page.wait_for_function(f"window.framesDrawn >= {drawn + 12}", timeout=LIMIT_MS)
            assert page.evaluate("window.events.length") == 100

            page.fill("#prompt", B)
            page.click("#go")
            page.wait_for_function("window.promptsApplied >= 1", timeout=LIMIT_MS)
            drawn = page.evaluate("window.framesDrawn")
            page.wait_for_function(f"window.framesDrawn >= {drawn + 36}", timeout=LIMIT_MS)  # three more blocks
            assert canvas_colour(page.evaluate(CANVAS)) == "blue"
            assert page.text_content("#current") == B
            assert float(page.text_content("#fps")) > 0 and page.text_content("#latency").endswith(" s")
            shot = Path(os.environ.get("CAUSVID_SCREENSHOT") or tmp_path / "serve_screenshot.png")
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 0

            page.click("#stop")
            assert page.text_content("#go") == "Start" and page.text_content("#state") == "idle"
            assert page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 204  # what browsers ask for
            assert not failed  # no 404, no failed request

            # a page of another origin (another port) cannot open the stream
            page.goto(other)
            opened = page.evaluate("""url => new Promise(done => {
                const ws = new WebSocket(url);
                ws.onopen = () => done("open");
                ws.onclose = () => done("refused"); })""", url.replace("http://", "ws://") + "/stream")
            assert opened == "refused"
        finally:
            browser.close()
