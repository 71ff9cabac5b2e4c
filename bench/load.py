"""Many users at once: N headless-browser sessions upload a photo at the same moment to one app server
on this machine, and each must see the answer its own photo gets when it is alone.

    python bench/load.py --users 1 4 8 --repeats 3

Starts `streamlit run streamlit_app.py` on a free loopback port (or uses --url), drives Debian's
Chromium through Playwright (one browser, one isolated context per user), and prints per N the median
over the repeats of the p50 and the max time to result: from the upload to the diagnosis, the Grad-CAM
and the lesion outline on screen; and the same for the whole page (down to the models' table, the similar
cases and the downloads, which are drawn after the answer). Each user uploads a different 600x450 photo (a
shipped test image scaled 3x, as users upload originals); its answer (headline, measurements, both overlays' pixels as
served) is compared with the one the same photo got in a browser session of its own. Also printed: how many
waiting users saw their place in line, and the server's peak memory (the app and its workers).
Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from derm import catalog, data  # noqa: E402
from derm.local_app import CHROMIUM, CHROMIUM_ARGS, free_port, start_app, stop_group, wait_for_http  # noqa: E402

UPLOAD_HW = (450, 600)
START_TIMEOUT_S = 120
RESULT_TIMEOUT_MS = 300_000
LINE_TEXTS = ("in line", "You are next", "Starting the models")  # derm.serving.Place.message()
# Recorded in the page before the upload: did the user see their place in line while waiting? Only the
# changed nodes' text is read (textContent: no layout), so the probe itself costs the browser next to nothing.
WATCH_LINE = """(texts) => {
    window.__sawLine = false;
    const observer = new MutationObserver(records => {
        for (const record of records) {
            const text = record.target.textContent || '';
            if (texts.some(t => text.includes(t))) { window.__sawLine = true; observer.disconnect(); return; }
        }
    });
    observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
# The full result: the headline, both overlays' captions, the measurements' last row, and every image decoded. Polled
# every 100 ms in every browser session, so it reads textContent (innerText would force a layout of the page each time).
RESULT_SHOWN = """() => {
    const text = document.body.textContent;
    const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
    return text.includes('Most likely:') && text.includes('Grad-CAM of') && text.includes('U-Net lesion outline')
        && text.includes('Largest diameter')
        && imgs.length >= 2 && imgs.every(img => img.complete && img.naturalWidth > 0);
}"""
# The whole page: also the models' table, the similar cases and the downloads, down to the last line ("Models: ...").
PAGE_SHOWN = """() => {
    const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
    const captions = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')];
    return captions.some(c => c.textContent.startsWith('Models: '))
        && imgs.every(img => img.complete && img.naturalWidth > 0);
}"""
# What a user reads as their answer: headline, the tables (models, measurements), and the overlays' pixels (as served).
ANSWER = """async () => {
    const headline = [...document.querySelectorAll('h3')].map(h => h.innerText).find(t => t.includes('Most likely')) || '';
    const table = [...document.querySelectorAll('[data-testid="stMarkdownContainer"] table')].map(t => t.innerText).join('|');
    const overlays = [];
    for (const fig of document.querySelectorAll('[data-testid="stImage"]')) {
        const caption = fig.innerText;
        if (!caption.includes('Grad-CAM of') && !caption.includes('U-Net lesion outline')) continue;
        const img = fig.querySelector('img');
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        const digest = await crypto.subtle.digest('SHA-256', bytes);
        overlays.push(caption + ' ' + [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join(''));
    }
    return [headline, table, ...overlays.sort()].join('\\n');
}"""


@dataclass
class Outcome:
    seconds: float
    page_seconds: float
    answer: str
    saw_line: bool


def upload_images(count: int, folder: Path) -> list[Path]:
    """`count` different 600x450 photos from the shipped test split, one diagnosis after another."""
    table = data.load_table(data.TEST_SUBSET_DIR)
    rows = table.sort_values("image_id").groupby("label").head(count).copy()
    rows["rank"] = rows.groupby("label").cumcount()
    rows = rows.sort_values(["rank", "label"]).head(count)
    paths = []
    for _, row in rows.iterrows():
        small = cv2.imread(str(catalog.image_path(row)))
        path = folder / f"{row['image_id']}.jpg"
        cv2.imwrite(str(path), cv2.resize(small, UPLOAD_HW[::-1], interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


class Server:
    """`streamlit run` on a loopback port, in its own process group (its workers die with it)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w")
        self.process = start_app(self.port, out=self._log)
        try:
            wait_for_http(f"{self.url}/_stcore/health", self.process, START_TIMEOUT_S, poll_s=0.5)
        except RuntimeError as exc:
            self.stop()
            raise SystemExit(f"streamlit: {exc}; see {log}") from None

    def stop(self) -> None:
        stop_group(self.process)
        self._log.close()


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 1e6


class PeakMemory:
    """Samples a process tree's memory in the background until stopped."""

    def __init__(self, pid: int):
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def _sample(self, pid: int) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, tree_rss_mb(pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


async def open_session(browser, url: str):
    """A fresh browser context (its own cookies, its own browser session) on the Diagnose page."""
    context = await browser.new_context(viewport={"width": 1400, "height": 2400})
    page = await context.new_page()
    await page.goto(url, timeout=RESULT_TIMEOUT_MS)
    await page.get_by_role("heading", name="Diagnose a lesion photo").wait_for(timeout=RESULT_TIMEOUT_MS)
    await page.locator("input[type=file]").wait_for(state="attached", timeout=RESULT_TIMEOUT_MS)
    await page.evaluate(WATCH_LINE, list(LINE_TEXTS))
    return context, page


async def upload_and_wait(page, image: Path) -> Outcome:
    start = time.perf_counter()
    await page.locator("input[type=file]").set_input_files(str(image))
    await page.wait_for_function(RESULT_SHOWN, timeout=RESULT_TIMEOUT_MS, polling=100)
    seconds = time.perf_counter() - start
    await page.wait_for_function(PAGE_SHOWN, timeout=RESULT_TIMEOUT_MS, polling=100)
    page_seconds = time.perf_counter() - start
    errors = await page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count()
    answer = await page.evaluate(ANSWER)
    return Outcome(seconds, page_seconds, answer + (f"\n{errors} errors on the page" if errors else ""),
                   await page.evaluate("window.__sawLine"))


async def sessions_at_once(browser, url: str, images: list[Path]) -> list[Outcome]:
    """All browser sessions open the page first, then every one uploads at the same moment."""
    opened = await asyncio.gather(*(open_session(browser, url) for _ in images))
    try:
        return await asyncio.gather(*(upload_and_wait(page, image) for (_, page), image in zip(opened, images)))
    finally:
        await asyncio.gather(*(context.close() for context, _ in opened))


async def measure(url: str, users: list[int], repeats: int, images: list[Path], server_pid: int | None) -> bool:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            alone = {}
            for image in images[:max(users)]:  # also warms the server up: models loaded, kernels run once
                alone[image] = (await sessions_at_once(browser, url, [image]))[0].answer
            print(f"alone: {len(alone)} photos, each in a browser session of its own", flush=True)
            ok = True
            for n in users:
                p50s, maxes, page_p50s, page_maxes, own, saw, peaks = [], [], [], [], 0, 0, []
                for _ in range(repeats):
                    memory = PeakMemory(server_pid) if server_pid else None
                    outcomes = await sessions_at_once(browser, url, images[:n])
                    peaks.append(memory.stop() if memory else 0.0)
                    times = [o.seconds for o in outcomes]
                    p50s.append(statistics.median(times))
                    maxes.append(max(times))
                    page_p50s.append(statistics.median(o.page_seconds for o in outcomes))
                    page_maxes.append(max(o.page_seconds for o in outcomes))
                    own += sum(o.answer == alone[image] for o, image in zip(outcomes, images[:n]))
                    saw += sum(o.saw_line for o in outcomes)
                    for o, image in zip(outcomes, images[:n]):
                        if o.answer != alone[image]:
                            print(f"  {image.name}: a different answer than alone:\n{o.answer}\n  alone:\n"
                                  f"{alone[image]}", flush=True)
                ok &= own == n * repeats
                memory_text = f", server memory peak {max(peaks):,.0f} MB" if server_pid else ""
                print(f"users {n}: time to result p50 {statistics.median(p50s):.1f} s, "
                      f"max {statistics.median(maxes):.1f} s (medians of {repeats}; worst max {max(maxes):.1f} s); "
                      f"whole page p50 {statistics.median(page_p50s):.1f} s, "
                      f"max {statistics.median(page_maxes):.1f} s; "
                      f"own answer {own}/{n * repeats}, "
                      f"saw their place in line {saw}/{n * repeats}{memory_text}", flush=True)
            return ok
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8], help="sessions at once, one run per number")
    parser.add_argument("--repeats", type=int, default=3, help="runs per number of users (medians are printed)")
    parser.add_argument("--url", default=None, help="an app already running (default: start one on loopback)")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        raise SystemExit("needs Debian's Chromium: apt-get install -y chromium")
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise SystemExit("--url must be a loopback address (127.x.x.x, localhost or [::1])")
    if min(args.users) < 1 or args.repeats < 1:
        raise SystemExit("--users and --repeats must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        images = upload_images(max(args.users), Path(tmp))
        if len(images) < max(args.users):
            raise SystemExit(f"only {len(images)} different test images for {max(args.users)} users")
        server = None if args.url else Server(Path(tmp) / "streamlit.log")
        try:
            url = args.url or server.url
            print(f"server {url}, DERM_WORKERS={os.environ.get('DERM_WORKERS', '(one per core)')}", flush=True)
            ok = asyncio.run(measure(url, args.users, args.repeats, images, server.process.pid if server else None))
        finally:
            if server:
                server.stop()
    if not ok:
        raise SystemExit("some browser session did not show its own photo's answer")


if __name__ == "__main__":
    main()
