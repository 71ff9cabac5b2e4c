"""End to end in a real browser: `streamlit run`, Chromium (Debian's, driven by Playwright), an
uploaded full-size photo, the diagnosis and both overlays on screen, one click on an example, one on
a similar case, the explorer's images for a clicked cell, and screenshots to look at. The server runs as in a fresh
clone: the full HAM10000 is hidden, so the images come from the test split shipped in the repo.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from derm.local_app import CHROMIUM, CHROMIUM_ARGS, free_port, start_app, stop_group, wait_for_http

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
START_TIMEOUT_S = 60
WAIT_MS = 180_000  # generous: the first answer includes loading the models on a busy machine
SIMILAR_GALLERY = 40  # similar cases from the first 40 shipped test images: seconds to embed

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="Chromium is not installed (apt-get install chromium)")


def wait_until_healthy(url: str, server, log: Path) -> None:
    try:
        wait_for_http(f"{url}/_stcore/health", server, START_TIMEOUT_S, poll_s=0.5)
    except RuntimeError as exc:
        pytest.fail(f"streamlit: {exc}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def app_url(tiny_weights, tmp_path_factory) -> Iterator[str]:
    """A real `streamlit run` on a free local port; always terminated, with its whole process group."""
    tmp_path = tmp_path_factory.mktemp("browser")
    (tmp_path / "no-dataset").mkdir()
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "DERM_WEIGHTS": str(tiny_weights), "DERM_RUNS": str(tmp_path / "runs"),
           "DERM_DATA": str(tmp_path / "no-dataset"), "DERM_GALLERY_LIMIT": str(SIMILAR_GALLERY),
           "DERM_CACHE": str(tmp_path / "cache")}
    with open(log, "w") as out:
        server = start_app(port, env, out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log)
        yield url
    finally:
        stop_group(server)


@contextlib.contextmanager
def browser_page() -> Iterator:
    """A fresh Chromium page (1400 x 2400), closed afterwards whatever happens."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 2400})
        finally:
            browser.close()


def wait_for_loaded_images(page, at_least: int) -> None:
    """Streamlit images are on screen and decoded (not placeholders or broken links)."""
    page.wait_for_function("""(n) => {
        const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
        return imgs.length >= n && imgs.every(img => img.complete && img.naturalWidth > 0);
    }""", arg=at_least, timeout=WAIT_MS)


def test_upload_in_a_real_browser_shows_the_diagnosis_and_overlays(app_url, original_image):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "diagnose.png"
    screenshot.unlink(missing_ok=True)
    with browser_page() as page:
        page.goto(f"{app_url}/model_card")  # a bookmarked page on a fresh server gets the app's own navigation
        page.get_by_role("heading", name="Model card").wait_for(timeout=WAIT_MS)
        expect(page.get_by_test_id("stSidebar").get_by_text("Test-set explorer")).to_be_visible()
        expect(page.get_by_test_id("stSidebar").get_by_text("Weights", exact=True)).to_be_visible()
        page.goto(app_url)
        page.get_by_role("heading", name="Diagnose a lesion photo").wait_for(timeout=WAIT_MS)
        page.locator("input[type=file]").set_input_files(str(original_image))
        # while the models start (seconds), the corner says "Running…" in still text, the running figure hidden
        running = page.wait_for_function("""() => {
            const box = document.querySelector('[data-testid="stStatusWidget"] > div');
            const figure = document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
            return box && figure && [getComputedStyle(box, '::before').content, getComputedStyle(figure).display];
        }""", timeout=WAIT_MS).json_value()
        assert running == ['"Running…"', "none"]
        page.get_by_text("Most likely:").wait_for(timeout=WAIT_MS)
        wait_for_loaded_images(page, 2)
        expect(page.get_by_text("U-Net lesion outline")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_text("Grad-CAM of")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_text("not a diagnosis").first).to_be_visible()
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def test_the_first_example_gives_a_result_in_a_real_browser(app_url):
    from playwright.sync_api import expect

    from derm.catalog import EXAMPLES
    from derm.classes import CLASSES, FULL_NAMES

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "diagnose-example.png"
    screenshot.unlink(missing_ok=True)
    with browser_page() as page:
        page.goto(app_url)
        page.get_by_role("heading", name="Diagnose a lesion photo").wait_for(timeout=WAIT_MS)
        expect(page.get_by_test_id("stSidebar").get_by_text("test split shipped with derm")).to_be_visible()
        wait_for_loaded_images(page, len(CLASSES))  # the examples row
        page.get_by_test_id("stButton").get_by_role("button", name="Analyse", exact=True).first.click()
        page.get_by_text("Most likely:").wait_for(timeout=WAIT_MS)
        first = EXAMPLES[CLASSES[0]]
        expect(page.get_by_text(f"HAM10000 ground truth for {first}")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_text(f"{FULL_NAMES[CLASSES[0]]} ({CLASSES[0]})").first).to_be_visible()
        expect(page.get_by_text("U-Net lesion outline")).to_be_visible(timeout=WAIT_MS)
        wait_for_loaded_images(page, len(CLASSES) + 2)  # and Grad-CAM and the outline
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def expected_first_case(tiny_weights: Path, image_id: str, tmp_path: Path) -> str:
    """The case the server should rank first for a shipped image, computed here with the same code."""
    from derm import catalog, data
    from derm.imageio import load_image
    from derm.pipeline import Predictor
    from derm.retrieval import similar

    os.environ[data.CACHE_ENV] = str(tmp_path)
    try:
        predictor = Predictor(tiny_weights)
        table = data.load_table(data.TEST_SUBSET_DIR)
        row = catalog.find_image(table, image_id)
        rgb = load_image(catalog.image_path(row))
        gallery = similar.build_gallery(predictor, data.ImageSource(data.TEST_SUBSET_DIR, complete=False),
                                        limit=SIMILAR_GALLERY)
        query = similar.query_for(predictor, rgb, predictor.analyse(rgb).features, row["lesion_id"])
        return str(similar.find_similar(gallery, query, similar.SimilarConfig()).cases["image_id"].iloc[0])
    finally:
        os.environ.pop(data.CACHE_ENV)


def test_a_similar_case_click_analyses_that_case_in_a_real_browser(app_url, tiny_weights, tmp_path):
    from playwright.sync_api import expect

    from derm.catalog import EXAMPLES
    from derm.classes import CLASSES

    first = EXAMPLES[CLASSES[0]]
    expected = expected_first_case(tiny_weights, first, tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "diagnose-similar.png"
    screenshot.unlink(missing_ok=True)
    with browser_page() as page:
        page.goto(app_url)
        page.get_by_role("heading", name="Diagnose a lesion photo").wait_for(timeout=WAIT_MS)
        buttons = page.get_by_test_id("stButton")
        buttons.get_by_role("button", name="Analyse", exact=True).first.click()
        expect(page.get_by_text(f"HAM10000 ground truth for {first}")).to_be_visible(timeout=WAIT_MS)
        show = buttons.get_by_role("button", name="Show similar confirmed cases")
        vote = page.get_by_text("Vote of the")
        show.or_(vote).first.wait_for(timeout=WAIT_MS)
        if show.count():  # absent when this server already built the gallery
            show.click()
        vote.wait_for(timeout=WAIT_MS)
        wait_for_loaded_images(page, len(CLASSES) + 1)  # the examples row, then the strip of the 8 similar cases
        expect(page.get_by_text(re.compile("^Models: "))).to_be_visible(timeout=WAIT_MS)  # the page's last line
        table = page.locator("table").filter(has_text="similarity")  # a column per case, numbered
        expect(table.locator("tr").filter(has_text="image").locator("td").nth(1)).to_have_text(expected)
        picker = page.get_by_role("radiogroup", name="Analyse one of these cases")  # a row of numbered pills
        expect(picker.get_by_role("radio")).to_have_count(8)
        picker.get_by_role("radio", name="1", exact=True).click()  # the most similar case
        expect(page.get_by_text(f"HAM10000 ground truth for {expected}")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def test_the_explorer_shows_a_clicked_cells_images_in_a_real_browser(app_url, tiny_weights):
    from playwright.sync_api import expect

    from derm import explorer

    frame = explorer.load_predictions(tiny_weights)
    cells = explorer.confusion_cells(frame, "ensemble")
    busiest = int(cells["count"].to_numpy().argmax())  # markers are drawn in the order of these cells
    expected = min(int(cells["count"].iloc[busiest]), 12)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "explorer.png"
    screenshot.unlink(missing_ok=True)
    with browser_page() as page:
        page.goto(f"{app_url}/explorer")
        page.get_by_role("heading", name="Test-set explorer").wait_for(timeout=WAIT_MS)
        markers = page.locator(".scatterlayer .trace .points path")
        markers.nth(busiest).wait_for(timeout=WAIT_MS)
        matrix = page.locator(".js-plotly-plot").first.bounding_box()
        assert matrix["width"] >= 450 and matrix["height"] >= 450  # once ~230 px wide in a wide column
        markers.nth(busiest).click(force=True)
        true, pred = cells["true"].iloc[busiest], cells["pred"].iloc[busiest]
        page.get_by_text(f"test images of {explorer_name(true)}").wait_for(timeout=WAIT_MS)
        wait_for_loaded_images(page, expected)
        # Streamlit buttons only: each selectbox has an "Open" button of its own
        opens = page.get_by_test_id("stButton").get_by_role("button", name="Open", exact=True)
        expect(opens).to_have_count(expected)
        opens.first.click()
        expect(page.get_by_text("U-Net lesion outline")).to_be_visible(timeout=WAIT_MS)
        wait_for_loaded_images(page, expected + 2)
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        assert pred in page.get_by_test_id("stMarkdown").filter(has_text="test images of").first.inner_text()
        page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000


def explorer_name(label: str) -> str:
    from derm.classes import FULL_NAMES

    return f"{FULL_NAMES[label]} ({label})"
