"""Many users at once: a fixed pool of single-thread inference worker processes, and a first-come,
first-served line in front of it that tells each waiting request its place.

Why processes and not threads: on a 2-core machine the app's Streamlit process is busy in Python
(drawing every user's page) while the models run. A forward pass in a thread of that process
hands the GIL back and forth between its ~200 operators, and each hand-back waits for the busy
Python thread: a ResNet50 pass took 4.4x as long beside one busy Python thread as alone. A worker
process has its own interpreter, its own models and one torch thread, so two workers keep both cores
doing convolutions, and one analysis never records another user's pass (Grad-CAM's hooks). Memory
is bounded by construction: `workers` processes, each holding at most `max_models` weights folders,
whatever the number of users; waiting requests hold only their image.

A worker is `python -m derm.serving --fd N`, talking pickled (method, weights, args) messages over a
socket pair; it exits when the app closes its end (also when the app dies), so nothing outlives the
server.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

WORKERS_ENV = "DERM_WORKERS"  # how many inference workers; 0 runs the models in the app's own process
MAX_DEFAULT_WORKERS = 4  # each worker holds its own copy of the models (~1.5 GB with torch)
POLL_S = 0.25  # how often a waiting request checks its place
REMIND_S = 2.0  # an unchanged place is told again this rarely: each telling redraws that user's page


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class PoolConfig:
    """How the app serves many users: one single-thread worker per core by default."""

    workers: int = field(default_factory=lambda: min(usable_cores(), MAX_DEFAULT_WORKERS))
    threads_per_worker: int = 1
    max_models: int = 2           # weights folders a worker keeps loaded (a promoted run beside the shipped ones)
    start_timeout_s: float = 300  # loading torch and the models on a busy machine
    request_timeout_s: float = 300  # one analysis; a worker silent for longer is replaced
    wait_timeout_s: float = 900   # the longest a request waits in line before it is told to retry

    @classmethod
    def from_env(cls) -> PoolConfig:
        """$DERM_WORKERS overrides the number of workers (0: no workers, models in the app's process)."""
        text = os.environ.get(WORKERS_ENV, "").strip()
        if not text:
            return cls()
        try:
            workers = int(text)
        except ValueError:
            raise ValueError(f"${WORKERS_ENV} must be a whole number of workers, not {text!r}") from None
        if workers < 0:
            raise ValueError(f"${WORKERS_ENV} must be 0 or more, not {workers}")
        return cls(workers=workers)


class ServingError(RuntimeError):
    """A request the pool could not answer (a worker failed, or the line was too long); the message says
    what to do, for the page to show as it is."""


@dataclass(frozen=True)
class Place:
    """Where a waiting request stands: `ahead` requests are before it in line, `busy` are being served
    by `workers` workers, of which `ready` have finished loading the models."""

    ahead: int
    busy: int
    workers: int
    ready: int

    def message(self) -> str:
        """What a waiting user reads."""
        if self.ready == 0:
            return "Starting the models (once after the server starts)…"
        if self.ahead == 0:
            return f"You are next: {self.busy} other {'analysis is' if self.busy == 1 else 'analyses are'} running."
        return (f"You are number {self.ahead + 1} in line: {self.ahead} "
                f"{'analysis waits' if self.ahead == 1 else 'analyses wait'} before yours, and "
                f"{self.busy} {'is' if self.busy == 1 else 'are'} running on {self.ready} "
                f"{'worker' if self.ready == 1 else 'workers'}.")


class Line:
    """First come, first served: a request holds a ticket until one of `slots` is free and it is first."""

    def __init__(self, slots: int):
        self._slots = slots
        self._busy = 0
        self._waiting: deque[int] = deque()
        self._next_ticket = 0
        self._changed = threading.Condition()

    def set_slots(self, slots: int) -> None:
        with self._changed:
            self._slots = slots
            self._changed.notify_all()

    def place(self, ticket: int) -> tuple[int, int]:
        """(requests ahead of this ticket, requests being served)."""
        with self._changed:
            return self._waiting.index(ticket), self._busy

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return self._busy

    @contextmanager
    def turn(self, on_wait: Callable[[int, int], None] | None = None, timeout_s: float = 900) -> Iterator[None]:
        """Wait for this request's turn (calling on_wait(ahead, busy) when the place changes, and every
        REMIND_S while it does not), hold a slot inside the block, give it back afterwards. Leaving early
        (an exception in on_wait, e.g. the user's browser left) gives the place up."""
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting.append(ticket)
        served, told, told_at = False, None, 0.0
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with self._changed:
                    if self._waiting[0] == ticket and self._busy < self._slots:
                        self._waiting.popleft()
                        self._busy += 1
                        served = True
                        self._changed.notify_all()
                        break
                    ahead, busy = self._waiting.index(ticket), self._busy
                    if time.monotonic() > deadline:
                        raise ServingError("The server is too busy right now: please try again in a minute.")
                if on_wait is not None and ((ahead, busy) != told or time.monotonic() - told_at >= REMIND_S):
                    on_wait(ahead, busy)
                    told, told_at = (ahead, busy), time.monotonic()
                with self._changed:
                    self._changed.wait(POLL_S)
            yield
        finally:
            with self._changed:
                if served:
                    self._busy -= 1
                else:
                    self._waiting.remove(ticket)
                self._changed.notify_all()


class Worker:
    """One inference process and the app's end of its socket."""

    def __init__(self, config: PoolConfig, warm_weights: Path | None):
        self.config = config
        self._warm_weights = warm_weights
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.ready = threading.Event()
        self.failure: str | None = None

    def start(self) -> None:
        """Launch the process; `ready` is set once it has loaded (and warmed up) the models."""
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "derm.serving", "--fd", str(theirs.fileno()),
                   "--threads", str(self.config.threads_per_worker), "--max-models", str(self.config.max_models)]
        if self._warm_weights is not None:
            command += ["--warm", str(self._warm_weights)]
        self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                        cwd=Path(__file__).resolve().parent.parent)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.ready.clear()
        self.failure = None
        threading.Thread(target=self._await_ready, daemon=True, name="derm-worker-start").start()

    def _await_ready(self) -> None:
        try:
            if not self.conn.poll(self.config.start_timeout_s):
                raise TimeoutError(f"no answer within {self.config.start_timeout_s:.0f} s")
            status, detail = self.conn.recv()
            if status != "ready":
                raise RuntimeError(detail)
            self.ready.set()
        except (OSError, EOFError, RuntimeError, TimeoutError) as exc:
            self.failure = f"the inference worker did not start: {exc}"
            self.ready.set()  # waiters wake up and see the failure

    def call(self, method: str, weights_dir: Path, *args: Any) -> Any:
        """One request, answered or a ServingError; a worker that died or fell silent is replaced."""
        self.ready.wait(self.config.start_timeout_s)
        if self.failure:  # one more start: a worker killed from outside comes back
            self.restart()
            self.ready.wait(self.config.start_timeout_s)
        if self.failure or not self.ready.is_set():
            raise ServingError(f"The models could not be loaded ({self.failure or 'the worker did not start'}).")
        try:
            self.conn.send((method, str(weights_dir), args))
            if not self.conn.poll(self.config.request_timeout_s):
                raise TimeoutError(f"no answer within {self.config.request_timeout_s:.0f} s")
            status, value = self.conn.recv()
        except (OSError, EOFError, TimeoutError) as exc:
            self.restart()
            raise ServingError(f"The analysis was interrupted ({exc or 'the worker stopped'}): please try again.") from exc
        if status == "error":
            raise ServingError(value)
        return value

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout_s: float = 10) -> None:
        """Close the socket (the worker exits on its own), then make sure it has."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class InferencePool:
    """`workers` inference processes behind one first-come, first-served line. With workers=0 the
    models run in this process (one request at a time), for machines where processes cannot start."""

    def __init__(self, config: PoolConfig | None = None, warm_weights: str | Path | None = None,
                 in_process: Callable[[str], Any] | None = None):
        """in_process(weights_dir) gives this process's Predictor when workers=0 (the app passes its cached
        one, so the models are not loaded twice); by default the pool loads its own."""
        self.config = config or PoolConfig.from_env()
        self._in_process = in_process
        self._workers = [Worker(self.config, Path(warm_weights) if warm_weights else None)
                         for _ in range(self.config.workers)]
        self._idle: deque[Worker] = deque(self._workers)
        self._idle_lock = threading.Lock()
        self._local: dict[str, Any] = {}  # weights folder -> Predictor, when workers=0
        self.line = Line(max(1, self.config.workers))
        for worker in self._workers:
            worker.start()

    @property
    def workers(self) -> int:
        return len(self._workers)

    def ready(self) -> int:
        return sum(w.ready.is_set() and not w.failure for w in self._workers)

    def place(self, ahead: int, busy: int) -> Place:
        return Place(ahead, busy, self.workers, self.ready() if self._workers else 1)

    def analyse(self, weights_dir: str | Path, rgb, on_wait: Callable[[Place], None] | None = None):
        """Predictor.analyse on a free worker: a derm.pipeline.Result."""
        return self._request("analyse", Path(weights_dir), (rgb,), on_wait)

    def analyse_and_explain(self, weights_dir: str | Path, rgb, on_wait: Callable[[Place], None] | None = None):
        """(Result, Grad-CAM of its predicted class, or None when the gate refused the image) in one turn:
        a page needs both, and a second turn would wait behind every analysis that came in meanwhile."""
        return self._request("analyse_and_explain", Path(weights_dir), (rgb,), on_wait)

    def gradcam(self, weights_dir: str | Path, rgb, class_name: str, model_name: str | None = None,
                on_wait: Callable[[Place], None] | None = None):
        """Predictor.gradcam on a free worker: the heat map at the image's size."""
        return self._request("gradcam", Path(weights_dir), (rgb, class_name, model_name), on_wait)

    def worker_pid(self, on_wait: Callable[[Place], None] | None = None, hold_s: float = 0.0) -> int:
        """The process id of the worker that answers (after holding it hold_s): which worker served."""
        return self._request("pid", Path("."), (hold_s,), on_wait)

    def _request(self, method: str, weights_dir: Path, args: tuple, on_wait: Callable[[Place], None] | None) -> Any:
        tell = (lambda ahead, busy: on_wait(self.place(ahead, busy))) if on_wait else None
        if not self._workers:
            with self.line.turn(tell, self.config.wait_timeout_s):
                if self._in_process is not None and method != "pid":
                    return predictor_method(self._in_process(str(weights_dir)), method, args)
                return run_method(self._local, self.config.max_models, method, weights_dir, args)
        with self.line.turn(tell, self.config.wait_timeout_s):
            worker = self._take_idle()
            try:
                return worker.call(method, weights_dir, *args)
            finally:
                with self._idle_lock:
                    self._idle.append(worker)

    def _take_idle(self) -> Worker:
        """An idle worker, preferring one that has finished loading (the line guarantees one is idle)."""
        with self._idle_lock:
            for worker in self._idle:
                if worker.ready.is_set() and not worker.failure:
                    self._idle.remove(worker)
                    return worker
            return self._idle.popleft()

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()


# ----------------------------------------------------------------------------- the worker process


def predictor_for(predictors: OrderedDict, max_models: int, weights_dir: Path):
    """The Predictor of a weights folder, keeping at most max_models loaded (least recently used out)."""
    from derm.pipeline import Predictor

    key = str(weights_dir)
    if key in predictors:
        predictors.move_to_end(key)
    else:
        predictors[key] = Predictor(weights_dir)
        while len(predictors) > max_models:
            predictors.popitem(last=False)
    return predictors[key]


def run_method(predictors: OrderedDict, max_models: int, method: str, weights_dir: Path, args: tuple) -> Any:
    """What a request asks for, computed here."""
    if method == "pid":
        time.sleep(min(float(args[0]), 60.0))
        return os.getpid()
    return predictor_method(predictor_for(predictors, max_models, weights_dir), method, args)


def predictor_method(predictor, method: str, args: tuple) -> Any:
    """One request on a loaded Predictor."""
    if method == "analyse":
        return predictor.analyse(*args)
    if method == "analyse_and_explain":
        result = predictor.analyse(*args)
        return result, predictor.gradcam(args[0], result.label) if result.in_domain else None
    if method == "gradcam":
        return predictor.gradcam(*args)
    raise ValueError(f"unknown request {method!r}")


def warm_up(predictors: OrderedDict, max_models: int, weights_dir: Path) -> None:
    """Load the models and run one throw-away analysis and Grad-CAM: the first pass of each kernel is slow."""
    import numpy as np

    from derm.classes import CLASSES

    grey = np.full((150, 200, 3), 128, dtype=np.uint8)
    predictor = predictor_for(predictors, max_models, weights_dir)
    predictor.analyse(grey)
    predictor.gradcam(grey, CLASSES[0])


def serve(conn: Connection, threads: int, max_models: int, warm: Path | None) -> None:
    """Answer requests until the app closes its end of the socket."""
    import torch

    torch.set_num_threads(threads)
    predictors: OrderedDict = OrderedDict()
    if warm is not None:
        try:
            warm_up(predictors, max_models, warm)
        except Exception as exc:  # noqa: BLE001 - the requests name their own weights; they will say what is wrong
            print(f"derm worker {os.getpid()}: could not warm up on {warm}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
    try:
        conn.send(("ready", os.getpid()))
    except (OSError, EOFError):
        return
    while True:
        try:
            method, weights_dir, args = conn.recv()
        except (EOFError, OSError):
            return  # the app has gone
        try:
            reply = ("ok", run_method(predictors, max_models, method, Path(weights_dir), args))
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the worker
            reply = ("error", f"The analysis failed: {type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (OSError, EOFError):
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An inference worker of the app (started by derm.serving).")
    parser.add_argument("--fd", type=int, required=True, help="the worker's end of the socket pair")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-models", type=int, default=2)
    parser.add_argument("--warm", type=Path, default=None, help="weights folder to load and warm up at start")
    args = parser.parse_args(argv)
    serve(Connection(args.fd), args.threads, args.max_models, args.warm)


if __name__ == "__main__":
    main()
