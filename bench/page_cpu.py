"""What one result costs each side, CPU seconds: the browser drawing the Diagnose page, the app server, the
inference workers. Several users at once on one machine share the cores, so these add up in their wait.

    python bench/page_cpu.py --results 8

Starts `streamlit run streamlit_app.py` on a free loopback port, and for each of `--results` shipped test
images opens the Diagnose page in a fresh browser context (Debian's Chromium through Playwright), uploads
the image and waits for the whole page (bench/load.py's PAGE_SHOWN: "Models: ..." drawn, every image
decoded). Each process tree's CPU time (Linux /proc) is read before the upload and a second after the page
is complete; printed are the medians per result, after two warm-up results.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from load import PAGE_SHOWN, Server  # noqa: E402  (bench/load.py: the same server and the same "whole page")

from derm import data  # noqa: E402
from derm.local_app import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

SIDES = {"browser": ("chrom",), "server": ("streamlit",), "workers": ("derm.serving",)}


def cpu_seconds() -> Counter:
    """CPU seconds so far of every running process, summed per side (by its command line)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total: Counter = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        side = next((s for s, marks in SIDES.items() if any(m in command for m in marks)), None)
        if side:
            total[side] += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def one_result(browser, url: str, image: Path) -> dict[str, float]:
    context = await browser.new_context(viewport={"width": 1400, "height": 2400})
    page = await context.new_page()
    await page.goto(url)
    await page.locator("input[type=file]").wait_for(state="attached", timeout=120_000)
    await page.wait_for_timeout(1500)  # the first page settled
    before = cpu_seconds()
    await page.locator("input[type=file]").set_input_files(str(image))
    await page.wait_for_function(PAGE_SHOWN, timeout=120_000, polling=100)
    await page.wait_for_timeout(1000)  # what the browser still does after the last element arrived
    after = cpu_seconds()
    await context.close()
    return {side: after[side] - before[side] for side in SIDES}


async def measure(results: int) -> None:
    from playwright.async_api import async_playwright

    images = sorted((data.TEST_SUBSET_DIR / "images").glob("*.jpg"))[:results + 2]
    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder) / "streamlit.log")
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                costs = [await one_result(browser, server.url, image) for image in images]
                await browser.close()
        finally:
            server.stop()
    measured = costs[2:]
    print(f"CPU seconds per result (median of {len(measured)}): "
          + ", ".join(f"{side} {statistics.median(c[side] for c in measured):.2f}" for side in SIDES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=8, help="results measured, after two warm-up results")
    asyncio.run(measure(parser.parse_args().results))


if __name__ == "__main__":
    main()
