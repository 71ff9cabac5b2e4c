"""Shared fixtures: the HAM10000 test split shipped in data/ham10000-test (every clone has it), the
full dataset for the few tests about all of it (skipped where it is absent), and tiny but real weights.

The tiny weights come from the real code path: `derm.train.train` for one epoch on a few dozen of the
shipped images at low resolution, then `derm.export.export` into a temporary weights folder. The
shipped images are all test images of weights/split.csv, so `fixture_split` splits them again,
grouped by lesion, into train/val/test for these tiny runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import pytest

from derm import catalog, data

REPO = Path(__file__).resolve().parent.parent
TINY_HW = (48, 64)
UPLOAD_HW = (450, 600)  # what users upload: the size of the dataset's originals


def write_squashed_mask_set(data_dir: Path, folder: Path, ids: list[str], prefix: str = "") -> None:
    """Real images and masks squashed to 256x256 into folder/images and folder/masks, named like
    isic2018_task1's copies (<id>.jpg, <id>_segmentation.png): a second mask source for the tests."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for image_id in ids:
        image = cv2.imread(str(data_dir / "images" / f"{image_id}.jpg"))
        mask = cv2.imread(str(data_dir / "masks" / f"{image_id}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / "images" / f"{prefix}{image_id}.jpg"), cv2.resize(image, (256, 256)))
        cv2.imwrite(str(folder / "masks" / f"{prefix}{image_id}_segmentation.png"),
                    cv2.resize(mask, (256, 256), interpolation=cv2.INTER_NEAREST))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shipped test split: real images, masks and metadata, laid out like the full dataset."""
    return data.resolve_data_dir(data.TEST_SUBSET_DIR)


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """The complete HAM10000, only for tests about all of it; they skip where it is absent."""
    try:
        return data.resolve_data_dir()
    except data.DataNotFoundError as exc:
        pytest.skip(f"needs the full HAM10000: {exc}")


@pytest.fixture(scope="session")
def fixture_split(tmp_path_factory, data_dir: Path) -> Path:
    """train/val/test of the shipped images (lesion-grouped, stratified, 80/10/10) for tiny runs."""
    path = tmp_path_factory.mktemp("split") / "split.csv"
    table = data.load_table(data_dir)
    data.write_split(table, data.make_split(table, seed=0), path)
    return path


@pytest.fixture(scope="session")
def original_image(tmp_path_factory, data_dir: Path) -> Path:
    """A 600x450 dermatoscopic photo, as users upload: a shipped 200x150 test image scaled 3x.

    The dataset's 600x450 originals are not shipped; the models see every upload at their own input
    size anyway, and the upload paths (decoding, odd formats, masks at the input size) need the size.
    """
    small = cv2.imread(str(data_dir / "images" / f"{catalog.EXAMPLE_ID}.jpg"))
    path = tmp_path_factory.mktemp("upload") / f"{catalog.EXAMPLE_ID}.jpg"
    cv2.imwrite(str(path), cv2.resize(small, UPLOAD_HW[::-1], interpolation=cv2.INTER_CUBIC),
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


TINY_MEMBERS = {"resnet18": ["resnet18", "resnet18_2"], "resnet50": ["resnet50"]}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, data_dir, fixture_split) -> dict[str, Path]:
    """One-epoch runs of ResNet18, ResNet50 and the U-Net on 64 shipped images at 48x64."""
    from derm.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    split = root / "split.csv"
    shutil.copyfile(fixture_split, split)
    os.environ["DERM_RUNS"] = str(root)
    out = {}
    # as shipped: the ResNet18 slot averages a network with colour constancy and one without, so the
    # export, the app and evaluation run both kinds of classifier and a slot of two members
    for name, task, arch, colour in (("resnet18", "classifier", "resnet18", "shades_of_gray"),
                                     ("resnet18_plain", "classifier", "resnet18", "none"),
                                     ("resnet50", "classifier", "resnet50", "none"), ("unet", "segmenter", None, "none")):
        config = TrainConfig.for_task(task, arch, epochs=1, limit=64, height=TINY_HW[0], width=TINY_HW[1],
                                      batch_size=16, data=str(data_dir), split=str(split), unet_width=8,
                                      colour=colour)
        out[name] = train(config, root / name, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_runs) -> Path:
    from derm.export import export

    out = tmp_path_factory.mktemp("weights")
    classifiers = {"resnet18": tiny_runs["resnet18"], "resnet18_2": tiny_runs["resnet18_plain"],
                   "resnet50": tiny_runs["resnet50"]}
    export(classifiers, tiny_runs["unet"], out, limit=32, members=TINY_MEMBERS)
    return out
