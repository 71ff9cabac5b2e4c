"""End to end in a real browser: `streamlit run`, Chromium (Debian's, driven by Playwright), an
uploaded full-size photo, the diagnosis and both overlays on screen, and a screenshot to look at.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
START_TIMEOUT_S = 60
WAIT_MS = 180_000  # generous: the first answer includes loading the models on a busy machine

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Chromium is not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture
def app_url(tiny_weights, tmp_path) -> Iterator[str]:
    """A real `streamlit run` on a free local port; always terminated, with its whole process group."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "DERM_WEIGHTS": str(tiny_weights), "DERM_RUNS": str(tmp_path / "runs")}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_upload_in_a_real_browser_shows_the_diagnosis_and_overlays(app_url, original_image):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "diagnose.png"
    screenshot.unlink(missing_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(f"{app_url}/model_card")  # a bookmarked page on a fresh server gets the app's own navigation
            page.get_by_role("heading", name="Model card").wait_for(timeout=WAIT_MS)
            expect(page.get_by_test_id("stSidebar").get_by_text("Test-set explorer")).to_be_visible()
            expect(page.get_by_test_id("stSidebar").get_by_text("Weights", exact=True)).to_be_visible()
            page.goto(app_url)
            page.get_by_role("heading", name="Diagnose a lesion photo").wait_for(timeout=WAIT_MS)
            page.locator("input[type=file]").set_input_files(str(original_image))
            page.get_by_text("Most likely:").wait_for(timeout=WAIT_MS)
            images = page.locator('[data-testid="stImage"] img')
            images.nth(1).wait_for(timeout=WAIT_MS)
            page.wait_for_function("""() => {
                const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                return imgs.length >= 2 && imgs.every(img => img.complete && img.naturalWidth > 0);
            }""", timeout=WAIT_MS)
            expect(page.get_by_text("U-Net lesion outline")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("Grad-CAM of")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("not a diagnosis").first).to_be_visible()
            expect(page.locator('[data-testid="stException"]')).to_have_count(0)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
