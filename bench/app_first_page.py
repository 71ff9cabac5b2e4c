"""Seconds from `streamlit run` to the Diagnose page's examples on screen, from a cold server each time.

    python bench/app_first_page.py [--runs 5] [--fresh-clone] [--repo OTHER_CHECKOUT]

Each run starts `streamlit run streamlit_app.py` on a free loopback port, opens it in headless
Chromium (Debian's, driven by Playwright, as tests/test_browser.py does) as soon as the server answers,
and waits until the example images are loaded and decoded. Prints each run and the median, split into
server start (until /_stcore/health answers) and page (until the examples show). --fresh-clone hides the
full dataset, as on a fresh clone (the examples then come from the shipped test split either way).
--repo runs another checkout's app (e.g. an older release) with this checkout's weights, to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout, no install needed

from derm.local_app import CHROMIUM, CHROMIUM_ARGS, free_port, start_app, stop_group, wait_for_http  # noqa: E402

EXAMPLES = 7  # one test image per class


def one_run(browser, env: dict[str, str], repo: Path) -> tuple[float, float]:
    """(server start, page) seconds for one cold server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    server = start_app(port, env, repo=repo)
    try:
        wait_for_http(f"{url}/_stcore/health", server, 120, poll_s=0.05)
        healthy = time.perf_counter()
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url)
        page.wait_for_function("""(n) => {
            const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
            return imgs.length >= n && imgs.every(img => img.complete && img.naturalWidth > 0);
        }""", arg=EXAMPLES, timeout=120_000)
        shown = time.perf_counter()
        page.close()
        return healthy - start, shown - start
    finally:
        stop_group(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fresh-clone", action="store_true", help="hide the full HAM10000")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose app to start (default this one)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "DERM_WEIGHTS": os.environ.get("DERM_WEIGHTS", str(REPO / "weights"))}
    with tempfile.TemporaryDirectory() as empty, sync_playwright() as playwright:
        if args.fresh_clone:
            env["DERM_DATA"] = empty
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            runs = []
            for i in range(args.runs):
                healthy, shown = one_run(browser, env, args.repo.resolve())
                runs.append((healthy, shown))
                print(f"run {i + 1}: server answers {healthy:.2f} s, examples shown {shown:.2f} s", flush=True)
        finally:
            browser.close()
    print(f"median: server answers {statistics.median(r[0] for r in runs):.2f} s, "
          f"examples shown {statistics.median(r[1] for r in runs):.2f} s after `streamlit run`")


if __name__ == "__main__":
    main()
