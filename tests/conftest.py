"""Shared fixtures: the real HAM10000 (skips cleanly where it is absent) and tiny but real weights.

The tiny weights come from the real code path: `derm.train.train` for one epoch on a few dozen real
images at low resolution, then `derm.export.export` into a temporary weights folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from derm import data

REPO = Path(__file__).resolve().parent.parent
TINY_HW = (48, 64)


def _data_or_skip() -> Path:
    try:
        return data.resolve_data_dir()
    except data.DataNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _data_or_skip()


@pytest.fixture(scope="session")
def original_image(data_dir: Path) -> Path:
    """A real full-size (600x450) dermatoscopic photo, as users upload."""
    return sorted((data_dir / "originals").glob("*.jpg"))[0]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """One-epoch runs of ResNet18, ResNet50 and the U-Net on 64 real images at 48x64."""
    from derm.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    split = root / "split.csv"
    shutil.copyfile(REPO / "weights" / "split.csv", split)
    os.environ["DERM_RUNS"] = str(root)
    out = {}
    for name, task, arch in (("resnet18", "classifier", "resnet18"), ("resnet50", "classifier", "resnet50"),
                             ("unet", "segmenter", None)):
        config = TrainConfig.for_task(task, arch, epochs=1, limit=64, height=TINY_HW[0], width=TINY_HW[1],
                                      batch_size=16, split=str(split), unet_width=8)
        out[name] = train(config, root / name, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_runs) -> Path:
    from derm.export import export

    out = tmp_path_factory.mktemp("weights")
    export({"resnet18": tiny_runs["resnet18"], "resnet50": tiny_runs["resnet50"]}, tiny_runs["unet"], out, limit=32)
    return out
