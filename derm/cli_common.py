"""What every `python -m derm` command module shares: image arguments, loading the weights, reading the
images, a progress bar.

Its own module so that derm/cli.py, derm/cli_report.py and derm/retrieval/cli.py import these from here
rather than from each other. Nothing heavy at import time (tests/test_cold_start.py checks `--help`): the
models, the image decoder and tqdm load inside the functions, when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from derm.pipeline import Predictor


def add_image_inputs(p: argparse.ArgumentParser) -> None:
    """The image paths and --weights, worded the same for every command that reads images."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (JPEG, PNG, BMP, TIFF, WebP)")
    p.add_argument("--weights", help="weights folder (default weights/ or $DERM_WEIGHTS)")


def load_predictor(weights: str | None, load_gate: bool = True) -> Predictor | None:
    """The Predictor for these weights, or None after one line on stderr saying why they cannot load."""
    from derm.pipeline import Predictor
    from derm.weights import WeightsNotFoundError

    try:
        return Predictor(weights, load_gate=load_gate)
    except (WeightsNotFoundError, ValueError, KeyError) as exc:
        print(f"derm: cannot load weights: {exc}", file=sys.stderr)
        return None


def images(paths: list[str]) -> Iterator[tuple[str, np.ndarray | None]]:
    """(path, rgb) for each readable image; one line on stderr for each that is not."""
    from derm.imageio import ImageError, load_image

    for path in paths:
        try:
            yield path, load_image(path)
        except ImageError as exc:
            print(f"derm: {exc}", file=sys.stderr)
            yield path, None


def progress(items: Iterable, total: int, desc: str) -> Iterable:
    """A progress bar with ETA on stderr when there is more than a handful of images."""
    if total < 5:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr)
