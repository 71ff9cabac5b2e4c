"""Many users at once (derm.serving): the first-come line and the places it reports, and real inference
worker processes on tiny weights: the same answers as the app's own Predictor, two requests served at
the same time by two processes, a third told its place, a killed worker replaced.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from derm import serving
from derm.classes import CLASSES
from derm.imageio import load_image
from derm.pipeline import Predictor

WAIT_S = 120  # every wait in these tests is bounded


def start_in_line(line: serving.Line, name: str, served: list[str], places: dict[str, list[int]],
                  release: threading.Event) -> threading.Thread:
    """A request that records its places while waiting, then holds its slot until `release`."""
    def request() -> None:
        with line.turn(lambda ahead, busy: places.setdefault(name, []).append(ahead), timeout_s=WAIT_S):
            served.append(name)
            release.wait(WAIT_S)
    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    return thread


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_line_serves_first_come_first_and_tells_each_its_place():
    line = serving.Line(slots=1)
    served, places, release = [], {}, threading.Event()
    threads = [start_in_line(line, "first", served, places, release)]
    wait_until(lambda: served == ["first"])
    for name in ("second", "third"):
        threads.append(start_in_line(line, name, served, places, release))
        wait_until(lambda name=name: name in places)
    wait_until(lambda: places["second"][-1] == 0 and places["third"][-1] == 1)
    assert line.waiting == 2 and line.busy == 1
    release.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert served == ["first", "second", "third"]
    assert line.waiting == 0 and line.busy == 0


def test_a_waiting_request_is_told_its_place_when_it_changes_not_at_every_check():
    line = serving.Line(slots=1)
    served, places, release = [], {}, threading.Event()
    first = start_in_line(line, "first", served, places, release)
    wait_until(lambda: served == ["first"])
    second = start_in_line(line, "second", served, places, release)
    wait_until(lambda: "second" in places)
    time.sleep(6 * serving.POLL_S)  # six checks of an unchanged place, within REMIND_S
    assert serving.REMIND_S > 7 * serving.POLL_S and places["second"] == [0]  # told once: each telling redraws a page
    third = start_in_line(line, "third", served, places, release)
    wait_until(lambda: "third" in places)
    release.set()
    for thread in (first, second, third):
        thread.join(WAIT_S)
    assert places["second"] == [0] and places["third"][0] == 1


def test_leaving_the_line_gives_the_place_up():
    line = serving.Line(slots=1)
    served, places, release = [], {}, threading.Event()
    first = start_in_line(line, "first", served, places, release)
    wait_until(lambda: served == ["first"])
    left = []

    def impatient() -> None:
        def leave(ahead: int, busy: int) -> None:
            raise KeyboardInterrupt  # as when Streamlit stops a script whose browser went away
        try:
            with line.turn(leave, timeout_s=WAIT_S):
                served.append("impatient")
        except KeyboardInterrupt:
            left.append(True)
    thread = threading.Thread(target=impatient, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert left == [True] and line.waiting == 0
    later = start_in_line(line, "later", served, places, release)
    wait_until(lambda: "later" in places)
    assert places["later"][-1] == 0  # the impatient request's place is free again
    release.set()
    first.join(WAIT_S)
    later.join(WAIT_S)
    assert served == ["first", "later"]


def test_a_request_that_waits_too_long_is_told_to_retry():
    line = serving.Line(slots=1)
    served, places, release = [], {}, threading.Event()
    first = start_in_line(line, "first", served, places, release)
    wait_until(lambda: served == ["first"])
    with pytest.raises(serving.ServingError, match="try again"):
        with line.turn(timeout_s=0.3):
            pass
    assert line.waiting == 0
    release.set()
    first.join(WAIT_S)


def test_a_place_reads_as_a_sentence():
    assert "number 3 in line" in serving.Place(ahead=2, busy=2, workers=2, ready=2).message()
    assert "2 analyses wait before yours" in serving.Place(ahead=2, busy=2, workers=2, ready=2).message()
    assert "You are next" in serving.Place(ahead=0, busy=1, workers=2, ready=2).message()
    assert "Starting the models" in serving.Place(ahead=0, busy=0, workers=2, ready=0).message()


def test_the_number_of_workers_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(serving.WORKERS_ENV, raising=False)
    assert serving.PoolConfig.from_env().workers == min(serving.usable_cores(), serving.MAX_DEFAULT_WORKERS)
    monkeypatch.setenv(serving.WORKERS_ENV, "0")
    assert serving.PoolConfig.from_env().workers == 0
    monkeypatch.setenv(serving.WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="whole number"):
        serving.PoolConfig.from_env()
    monkeypatch.setenv(serving.WORKERS_ENV, "-1")
    with pytest.raises(ValueError, match="0 or more"):
        serving.PoolConfig.from_env()


@pytest.fixture(scope="module")
def pool(tiny_weights):
    """Two real worker processes, warmed up on the tiny weights; always closed."""
    workers = serving.InferencePool(serving.PoolConfig(workers=2, start_timeout_s=WAIT_S, request_timeout_s=WAIT_S),
                                    warm_weights=tiny_weights)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture(scope="module")
def upload(original_image) -> np.ndarray:
    return load_image(original_image)


def test_workers_answer_exactly_as_the_apps_own_predictor(pool, tiny_weights, upload):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same kernels, the same bits
    try:
        here = Predictor(tiny_weights)
        expected, served = here.analyse(upload), pool.analyse(tiny_weights, upload)
        heats = {c: here.gradcam(upload, c) for c in (served.label, CLASSES[0])}
    finally:
        torch.set_num_threads(threads)
    assert served.probabilities == expected.probabilities
    assert served.per_model == expected.per_model and served.warnings == expected.warnings
    assert np.array_equal(served.mask, expected.mask)
    assert served.lesion == expected.lesion
    assert served.domain == expected.domain
    for name in expected.features:
        assert np.array_equal(served.features[name], expected.features[name])
    for class_name, heat in heats.items():
        np.testing.assert_array_equal(pool.gradcam(tiny_weights, upload, class_name), heat)
    together, heat = pool.analyse_and_explain(tiny_weights, upload)  # what the page asks for: one turn
    assert together.probabilities == expected.probabilities
    np.testing.assert_array_equal(heat, heats[expected.label])


def test_two_requests_run_at_once_on_two_processes_and_a_third_is_told_its_place(pool):
    wait_until(lambda: pool.ready() == 2)  # on a busy machine the second worker may still be loading its models
    pids, places = [], []

    def hold() -> None:
        pids.append(pool.worker_pid(hold_s=1.5))
    holders = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
    start = time.monotonic()
    for thread in holders:
        thread.start()
    wait_until(lambda: pool.line.busy == 2)
    third = pool.worker_pid(on_wait=places.append)
    for thread in holders:
        thread.join(WAIT_S)
    assert len(set(pids)) == 2 and os.getpid() not in pids  # two worker processes, neither the app
    assert third in pids
    assert time.monotonic() - start < 2 * 1.5  # the two holds overlapped instead of queueing
    assert places and places[0].ahead == 0 and places[0].busy == 2 and places[0].ready == 2
    assert "You are next" in places[0].message()


def test_a_killed_worker_is_replaced(pool, tiny_weights, upload):
    pids = {pool.worker_pid() for _ in range(4)}
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    outcomes = []
    for _ in range(4):  # the line hands out both workers; the dead one fails once, then is back
        try:
            outcomes.append(pool.worker_pid())
        except serving.ServingError as exc:
            assert "try again" in str(exc)
            outcomes.append(None)
    assert victim not in outcomes
    assert pool.analyse(tiny_weights, upload).label in CLASSES
    wait_until(lambda: pool.ready() == 2)


def test_without_workers_the_models_run_in_this_process(tiny_weights, upload):
    local = serving.InferencePool(serving.PoolConfig(workers=0))
    try:
        assert local.worker_pid() == os.getpid()
        places = []
        result = local.analyse(tiny_weights, upload, on_wait=places.append)
        assert result.label in CLASSES and result.mask is not None
        assert places == []  # nobody else waited: served at once
    finally:
        local.close()


def test_without_workers_the_app_passes_its_own_predictor(tiny_weights, upload):
    shared, asked = Predictor(tiny_weights), []

    def given(weights_dir: str) -> Predictor:
        asked.append(weights_dir)
        return shared
    local = serving.InferencePool(serving.PoolConfig(workers=0), in_process=given)
    try:
        result, heat = local.analyse_and_explain(tiny_weights, upload)
        assert asked == [str(tiny_weights)]  # no second copy of the models
        assert result.probabilities == shared.analyse(upload).probabilities
        assert heat.shape == upload.shape[:2]
    finally:
        local.close()
