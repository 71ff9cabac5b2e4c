"""Screenshots of real web pages, rendered by Chromium: a set the domain gate is measured on.

    python scripts/screenshot_pages.py --out /tmp/screens --count 120 /usr/share/doc /usr/lib/node_modules/npm
    python scripts/screenshot_pages.py --out /tmp/screens --url http://localhost:8501/ --url http://localhost:8501/explorer
    python scripts/screenshot_pages.py --out /tmp/diagnose --url http://localhost:8501/ --viewport 1280x1600 \
        --click Analyse --wait-for "Most likely:"     # the README's screenshot: the first example diagnosed

Takes HTML files found under the given folders (a fixed-seed sample of `--count`) and/or URLs, and
writes one PNG each at a viewport size drawn from common screens. Needs Debian's chromium and the
playwright package (both installed by .ci/run); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

VIEWPORTS = [(1366, 768), (1920, 1080), (1280, 800), (390, 844), (768, 1024), (1536, 864)]
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def html_files(folders: list[str], count: int, seed: int) -> list[Path]:
    """A fixed sample of HTML files over 3 kB, spread evenly over the given folders."""
    rng = random.Random(seed)
    picked: list[Path] = []
    for folder in folders:
        files = sorted(p for p in Path(folder).rglob("*.html") if p.stat().st_size > 3000)
        rng.shuffle(files)
        picked += files[: max(1, count // len(folders))]
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="folders to take HTML files from")
    parser.add_argument("--url", action="append", default=[], help="a page to screenshot (repeatable)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-ms", type=int, default=800, help="time for a page's scripts to draw")
    parser.add_argument("--viewport", help="WIDTHxHEIGHT for every page (default: drawn from common screens)")
    parser.add_argument("--click", help="click the first button of this name on each page before the screenshot")
    parser.add_argument("--wait-for", help="after the click, wait until this text is on the page")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [p.resolve().as_uri() for p in html_files(args.folders, args.count, args.seed)] if args.folders else []
    targets += args.url
    rng = random.Random(args.seed)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for i, target in enumerate(targets):
            width, height = (map(int, args.viewport.split("x")) if args.viewport else rng.choice(VIEWPORTS))
            page = browser.new_page(viewport={"width": width, "height": height})
            try:
                page.goto(target, timeout=20000)
                page.wait_for_timeout(args.wait_ms)
                if args.click:
                    page.get_by_role("button", name=args.click).first.click(timeout=60000)
                    page.mouse.move(0, 0)  # no hover tooltip in the picture
                if args.wait_for:
                    page.get_by_text(args.wait_for).first.wait_for(timeout=120000)
                    page.wait_for_timeout(args.wait_ms)
                page.screenshot(path=str(out / f"page_{i:04d}.png"))
            except Exception as exc:  # noqa: BLE001 - one broken page must not stop the others
                print(f"skipped {target}: {exc}")
            finally:
                page.close()
        browser.close()
    print(f"{len(list(out.glob('page_*.png')))} screenshots in {out}")


if __name__ == "__main__":
    main()
