"""A folder of images through the models on every core: one process per core, each with its own
single-thread Predictor, batches handed out in order.

For commands with thousands of images to get through (`similar-gallery`, `similar-eval`); the app's
requests go through derm.serving instead, one user's image at a time.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import TypeVar

from derm.pipeline import Predictor

B = TypeVar("B")
R = TypeVar("R")
_predictor: Predictor | None = None  # a worker process's own, loaded once by _start


def _start(weights_dir: str, bf16: bool) -> None:
    global _predictor
    import torch

    torch.set_num_threads(1)  # one core each: the processes, not threads, share the machine
    _predictor = Predictor(weights_dir, bf16=bf16, load_gate=False)


def _run(work: Callable[[Predictor, B], R], batch: B) -> R:
    return work(_predictor, batch)


def map_batches(predictor: Predictor, work: Callable[[Predictor, B], R], batches: Sequence[B],
                workers: int) -> Iterator[R]:
    """work(predictor, batch) for each batch, in order: in this process when workers <= 1, else on
    `workers` processes that load the same weights (`work` must be a module-level function or a partial
    of one, so that it can be sent to them)."""
    if workers <= 1 or len(batches) < 2:
        for batch in batches:
            yield work(predictor, batch)
        return
    spawn = multiprocessing.get_context("spawn")  # never fork a process that holds runtime threads
    with ProcessPoolExecutor(min(workers, len(batches)), mp_context=spawn, initializer=_start,
                             initargs=(str(predictor.weights_dir), predictor.bf16)) as pool:
        yield from pool.map(partial(_run, work), batches)
