"""More users than one server holds: two app replicas behind nginx on loopback, configured by the shipped
deploy/nginx-derm.conf (only its addresses changed). Both replicas serve, and a browser session
sticks to one: its page, websocket, upload and images all come from the same replica, and a real
Chromium browser session on each replica gets its diagnosis with both overlays.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from derm.local_app import CHROMIUM, CHROMIUM_ARGS, free_port, start_app, stop_group
from derm.local_app import wait_for_http as wait_until_answering

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "deploy" / "nginx-derm.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
START_TIMEOUT_S = 90
WAIT_MS = 180_000
PROBE_KEYS = 24  # cookie keys tried to find one per replica (a consistent hash spreads them)

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Chromium is not installed (apt-get install chromium)"),
]


def wait_for_http(url: str, process: subprocess.Popen, log: Path) -> None:
    try:
        wait_until_answering(url, process, START_TIMEOUT_S)
    except RuntimeError as exc:
        pytest.fail(f"{exc}:\n{log.read_text()}")


def nginx_config(folder: Path, listen: int, replicas: list[int]) -> Path:
    """The shipped snippet with this test's ports, inside a minimal nginx main config writing only to folder."""
    snippet = CONF.read_text()
    upstreams = re.findall(r"server 127\.0\.0\.1:\d+;", snippet)
    assert len(upstreams) == 2, "the shipped config lists two replicas"
    for line, port in zip(upstreams, replicas):
        snippet = snippet.replace(line, f"server 127.0.0.1:{port};", 1)
    assert "listen 80;" in snippet
    snippet = snippet.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may then read the temporary folders
    config = folder / "nginx.conf"
    config.write_text(f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
                      f"daemon off;\nevents {{ worker_connections 256; }}\nhttp {{\n    access_log {folder / 'access.log'};\n"
                      f"{temp}\n{snippet}\n}}\n")
    return config


@pytest.fixture(scope="module")
def proxy(tiny_weights, tmp_path_factory) -> Iterator[tuple[str, list[int]]]:
    """Two `streamlit run` replicas and nginx in front, all on loopback; everything stopped afterwards."""
    folder = tmp_path_factory.mktemp("replicas")
    (folder / "no-dataset").mkdir()
    env = {**os.environ, "DERM_WEIGHTS": str(tiny_weights), "DERM_RUNS": str(folder / "runs"),
           "DERM_DATA": str(folder / "no-dataset"), "DERM_CACHE": str(folder / "cache"), "DERM_GALLERY_LIMIT": "40",
           "DERM_WORKERS": "0"}  # two replicas on two cores: each runs its models in its own process
    ports, started = [free_port(), free_port()], []
    try:
        for index, port in enumerate(ports):
            log = folder / f"replica{index}.log"
            with open(log, "w") as out:
                started.append(start_app(port, env, out))
            wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", started[-1], log)
        listen = free_port()
        log = folder / "nginx.out"
        with open(log, "w") as out:
            started.append(subprocess.Popen([NGINX, "-p", str(folder), "-e", str(folder / "error.log"), "-c",
                                             str(nginx_config(folder, listen, ports))],
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_http(f"http://127.0.0.1:{listen}/_stcore/health", started[-1], log)
        yield f"http://127.0.0.1:{listen}", ports
    finally:
        for process in reversed(started):
            stop_group(process)


def get(url: str, key: str | None = None) -> tuple[str, str | None]:
    """(the replica that answered, the sticky key the proxy set) for one request with an optional cookie."""
    request = urllib.request.Request(url, headers={"Cookie": f"derm_replica={key}"} if key else {})
    with urllib.request.urlopen(request, timeout=30) as answer:
        cookie = SimpleCookie()
        for header in answer.headers.get_all("Set-Cookie", []):  # Streamlit sets its own cookies too
            cookie.load(header)
        return answer.headers["X-Derm-Replica"], cookie["derm_replica"].value if "derm_replica" in cookie else None


def replica_keys(url: str) -> dict[str, str]:
    """A new browser's first request gets a key; the key then always reaches the same replica."""
    keys = {}
    for _ in range(PROBE_KEYS):
        replica, key = get(f"{url}/_stcore/health")
        assert key, "the proxy sets a sticky cookie"
        assert {get(f"{url}/_stcore/health", key) for _ in range(4)} == {(replica, key)}
        keys.setdefault(replica, key)
        if len(keys) == 2:
            break
    return keys


def test_both_replicas_serve_and_a_browser_session_sticks_to_one(proxy):
    from playwright.sync_api import expect, sync_playwright

    url, ports = proxy
    keys = replica_keys(url)
    assert sorted(keys) == sorted(f"127.0.0.1:{p}" for p in ports), "new browsers are spread over both replicas"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for replica, key in keys.items():
                context = browser.new_context(viewport={"width": 1400, "height": 2400})
                context.add_cookies([{"name": "derm_replica", "value": key, "url": url}])
                answered = []
                context.on("response", lambda response: answered.append(response.headers.get("x-derm-replica")))
                page = context.new_page()
                page.goto(url)
                page.get_by_role("heading", name="Diagnose a lesion photo").wait_for(timeout=WAIT_MS)
                page.get_by_test_id("stButton").get_by_role("button", name="Analyse", exact=True).first.click()
                page.get_by_text("Most likely:").wait_for(timeout=WAIT_MS)
                expect(page.get_by_text("Grad-CAM of")).to_be_visible(timeout=WAIT_MS)
                expect(page.get_by_text("U-Net lesion outline")).to_be_visible(timeout=WAIT_MS)
                page.wait_for_function("""() => {
                    const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                    return imgs.length >= 9 && imgs.every(img => img.complete && img.naturalWidth > 0);
                }""", timeout=WAIT_MS)  # the 7 examples and both overlays: media only this browser's replica has
                expect(page.locator('[data-testid="stException"]')).to_have_count(0)
                context.close()
                assert len(answered) > 10 and set(answered) == {replica}, set(answered)
        finally:
            browser.close()
