"""HAM10000 on disk -> one table, an honest split, a decoded uint8 cache and normalisation stats.

Everything downstream (training, evaluation, the app's explorer) reads the same `split.csv`, so they
all agree on which images are the test set.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from derm.classes import CLASS_INDEX, CLASSES

if TYPE_CHECKING:  # pandas is imported where a table is read: a diagnosis reads none (cold start)
    import pandas as pd

DATA_ENV = "DERM_DATA"
CACHE_ENV = "DERM_CACHE"
SPLIT_ENV = "DERM_SPLIT"
REPO_ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "weights/split.csv"
# the test split's images, masks and metadata rows, committed (scripts/make_test_subset.py builds it)
TEST_SUBSET_DIR = REPO_ROOT / "data" / "ham10000-test"


class DataNotFoundError(FileNotFoundError):
    """The HAM10000 folder is missing or incomplete; the message says where we looked."""


def default_data_dir() -> Path:
    """$DERM_DATA if set, else `data/ham10000` in the repo, else `../shared/ham10000` beside it."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    for candidate in (REPO_ROOT / "data" / "ham10000", REPO_ROOT.parent / "shared" / "ham10000"):
        if candidate.is_dir():
            return candidate
    return REPO_ROOT / "data" / "ham10000"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder to use, checked to hold metadata and images."""
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    has_labels = (path / "HAM10000_metadata.csv").is_file() or (path / "GroundTruth.csv").is_file()
    if not (has_labels and (path / "images").is_dir()):
        raise DataNotFoundError(
            f"HAM10000 not found at {path}: expected HAM10000_metadata.csv (or GroundTruth.csv) and "
            f"images/. Set ${DATA_ENV} or pass --data (see docs/data.md)."
        )
    return path


def default_split() -> str:
    """$DERM_SPLIT if set, else the shipped weights/split.csv: the split a run uses unless told.

    The tests point it at a split of the shipped test images, so runs launched the way the app
    launches them (a child process, no --split) train without the full dataset.
    """
    return os.environ.get(SPLIT_ENV) or DEFAULT_SPLIT


@dataclass(frozen=True)
class ImageSource:
    """Where HAM10000 images come from: the full dataset, or only the test split shipped in the repo."""

    path: Path
    complete: bool  # False: the shipped test split only (enough for everything that shows test images)

    def summary(self) -> str:
        """One line for the app: which images are available and what that means."""
        shown = self.path.relative_to(REPO_ROOT) if self.path.is_relative_to(REPO_ROOT) else self.path
        if self.complete:
            return f"the full dataset at `{shown}`"
        return (f"the test split shipped with derm (`{shown}`): the full dataset was not found, so training "
                f"is not available (set ${DATA_ENV}, see docs/data.md)")


def image_source(data_dir: str | Path | None = None, subset_dir: Path = TEST_SUBSET_DIR) -> ImageSource:
    """The full dataset when found, else the shipped test split: showing test images needs no download.

    Raises DataNotFoundError only when neither is there (a checkout without data/ham10000-test).
    """
    try:
        path = resolve_data_dir(data_dir)
    except DataNotFoundError as missing:
        try:
            return ImageSource(resolve_data_dir(subset_dir), complete=False)
        except DataNotFoundError:
            raise missing from None
    return ImageSource(path, complete=path.resolve() != subset_dir.resolve())


def cache_dir() -> Path:
    """Where decoded arrays live: $DERM_CACHE or ~/.cache/derm (never inside the repo)."""
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "derm")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- the table


PATIENT_COLUMNS = ("age", "sex", "localization")


def load_table(data_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per image: image_id, lesion_id, label, label_idx, dx_type, the patient's age, sex and the
    lesion's body site (localization; missing where the source has none), image_path, mask_path.

    Reads the official metadata when present; otherwise the ISIC 2018 one-hot GroundTruth.csv, where
    each image is its own lesion (the format has no lesion ids). Read once per version of that file
    (the app asks on every redraw); each caller gets its own copy.
    """
    root = resolve_data_dir(data_dir)
    meta = root / "HAM10000_metadata.csv"
    source = meta if meta.is_file() else root / "GroundTruth.csv"
    stat = source.stat()
    return _read_table(str(root), source.name, stat.st_size, stat.st_mtime_ns).copy()


@lru_cache(maxsize=8)
def _read_table(root: str, file_name: str, size: int, mtime_ns: int) -> pd.DataFrame:
    import pandas as pd

    table = pd.read_csv(os.path.join(root, file_name))
    if file_name == "HAM10000_metadata.csv":
        table["label"] = table["dx"].str.upper()
    else:
        table = pd.DataFrame({
            "image_id": table["image"],
            "lesion_id": table["image"],
            "label": table[list(CLASSES)].idxmax(axis=1),
            "dx_type": "unknown",
        })
    unknown = set(table["label"]) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown labels in {root}: {sorted(unknown)}")
    table = table.sort_values("image_id").reset_index(drop=True)
    table["label_idx"] = table["label"].map(CLASS_INDEX).astype(int)
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    table["image_path"] = [os.path.join(images, f"{i}.jpg") for i in table["image_id"]]
    table["mask_path"] = [os.path.join(masks, f"{i}_segmentation.png") for i in table["image_id"]]
    for column in PATIENT_COLUMNS:  # the ISIC 2018 one-hot format has no patient metadata
        if column not in table:
            table[column] = None
    columns = ["image_id", "lesion_id", "label", "label_idx", "dx_type", *PATIENT_COLUMNS, "image_path", "mask_path"]
    return table[columns]


# ----------------------------------------------------------------------------- the split


def make_split(table: pd.DataFrame, seed: int = 0) -> pd.Series:
    """80/10/10 split stratified by class and grouped by lesion: no lesion is in two splits.

    StratifiedGroupKFold with 10 folds: one fold is test, the next is validation, eight are train.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # here: a second of import the app and CLI skip

    import pandas as pd

    folds = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
    split = pd.Series("train", index=table.index, name="split")
    fold_ids = list(folds.split(table, table["label_idx"], groups=table["lesion_id"]))
    split.iloc[fold_ids[0][1]] = "test"
    split.iloc[fold_ids[1][1]] = "val"
    return split


def write_split(table: pd.DataFrame, split: pd.Series, path: str | Path) -> None:
    import pandas as pd

    pd.DataFrame({"image_id": table["image_id"], "split": split}).to_csv(path, index=False)


def read_split(path: str | Path) -> pd.DataFrame:
    import pandas as pd

    split = pd.read_csv(path)
    if set(split.columns) != {"image_id", "split"} or not set(split["split"]) <= set(SPLITS):
        raise ValueError(f"{path} is not a split file (columns image_id,split; train/val/test)")
    return split


def attach_split(table: pd.DataFrame, split_path: str | Path) -> pd.DataFrame:
    """The table with a `split` column from split.csv; images not in the file are dropped."""
    split = read_split(split_path)
    return table.merge(split, on="image_id", how="inner")


def ensure_split(table: pd.DataFrame, split_path: str | Path, seed: int = 0) -> pd.DataFrame:
    """Read split.csv if it exists, else make it (deterministic from `seed`) and write it."""
    split_path = Path(split_path)
    if not split_path.is_file():
        split_path.parent.mkdir(parents=True, exist_ok=True)
        write_split(table, make_split(table, seed), split_path)
    return attach_split(table, split_path)


# ----------------------------------------------------------------------------- decoding and cache


def decode_image(path: str | Path, size_hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 HxWx3 at `size_hw`, resized with area interpolation (how HAM10000 was downscaled)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return resize_rgb(rgb, size_hw)


def resize_rgb(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    height, width = size_hw
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    shrinking = rgb.shape[0] > height
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


def decode_mask(path: str | Path, size_hw: tuple[int, int]) -> np.ndarray:
    """Binary uint8 HxW (0/1): area-resized then thresholded, smoother than nearest at 1/4 scale."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot decode {path}")
    height, width = size_hw
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    return (mask >= 128).astype(np.uint8)


def mask_set_pairs(root: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Image and mask paths of one split of a folder in isic2018_task1's layout (images/<id>.jpg,
    masks/<id>_segmentation.png, split.csv with image_id,split): a second source of lesion masks."""
    import pandas as pd

    root = Path(root)
    table = pd.read_csv(root / "split.csv")
    ids = table.loc[table["split"] == split, "image_id"]
    return ([str(root / "images" / f"{i}.jpg") for i in ids],
            [str(root / "masks" / f"{i}_segmentation.png") for i in ids])


def _cache_key(paths: list[str], size_hw: tuple[int, int], kind: str) -> str:
    """Changes when the files, their sizes/mtimes or the resolution change."""
    digest = hashlib.sha1(f"{kind}:{size_hw}".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def cached_array(paths: list[str], size_hw: tuple[int, int], kind: str, progress: bool = True) -> np.ndarray:
    """Decode `paths` once into an N x H x W (x3) uint8 array stored in the cache, then memory-map it.

    kind is "image" or "mask". The file name carries a key of the inputs, so a change of data or
    resolution builds a new cache instead of reusing a stale one.
    """
    key = _cache_key(paths, size_hw, kind)
    target = cache_dir() / f"{kind}_{size_hw[0]}x{size_hw[1]}_{len(paths)}_{key}.npy"
    if target.is_file():
        return np.load(target, mmap_mode="r")
    decode = decode_image if kind == "image" else decode_mask
    shape = (len(paths), *size_hw, 3) if kind == "image" else (len(paths), *size_hw)
    tmp = target.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    iterator = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc=f"caching {kind}s {size_hw[0]}x{size_hw[1]}", unit="img")
    for i, p in enumerate(iterator):
        out[i] = decode(p, size_hw)
    out.flush()
    del out
    os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


# ----------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def channel_stats(images: np.ndarray, chunk: int = 512) -> Normalization:
    """Per-channel mean/std in [0, 1] over N x H x W x 3 uint8 images, streamed in chunks."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        total_sq += (block**2).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / count
    std = np.sqrt(total_sq / count - mean**2)
    return Normalization(tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std))


def split_counts(table: pd.DataFrame) -> dict:
    """Images per class per split, for reports and the split test."""
    return json.loads(table.groupby(["split", "label"]).size().unstack(fill_value=0).to_json(orient="index"))
