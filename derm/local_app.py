"""The app on a loopback port, for the browser tests and the benches that drive it.

`streamlit run` starts in its own process group, so its inference workers stop with it; callers wait
for its health check, then stop the whole group. Debian's Chromium is the browser (Playwright cannot
download one here), with the flags it needs to run headless as root.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from derm.data import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(port: int, env: dict[str, str] | None = None, out: IO | None = None,
              repo: Path = REPO_ROOT) -> subprocess.Popen:
    """`streamlit run streamlit_app.py` of `repo` on 127.0.0.1:port; its output to `out` (default: dropped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(repo / "streamlit_app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=repo, env=env, stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float, poll_s: float = 0.3) -> None:
    """Until `url` answers 200; RuntimeError if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{Path(str(process.args[0])).name} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(poll_s)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
