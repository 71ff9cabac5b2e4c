"""Pack the training data a remote GPU needs into one file small enough to copy there (64 MiB at most).

The train and validation JPEGs of HAM10000 travel as they are. Masks (600x450 PNGs for HAM10000) are
decoded here at the run's input size with `derm.data.decode_mask` and stored as 1-bit PNGs, which the
loader reads back unchanged (checked for every mask), so a segmenter trained there sees the same
targets as one trained here. With --extra-masks, that folder's train and val rows (images as they are,
masks likewise) join as `data/isic2018/`. Everything goes into one .tgz: thousands of small files would
count for more than their bytes. The test split stays on the machine it is on.

    python scripts/gpu_data.py --out data/gpu_data.tgz --mask-size 144 192 --extra-masks ../shared/isic2018_task1
    # on the GPU: tar xzf data/gpu_data.tgz  (gives data/ham10000/ and data/isic2018/ in the checkout)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from derm.data import attach_split, decode_mask, load_table, mask_set_pairs, resolve_data_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def write_sized_mask(job: tuple[str, str, tuple[int, int]]) -> None:
    """The mask as the loader would decode it at `size`, stored so that it decodes to the same pixels."""
    source, target, size = job
    mask = decode_mask(source, size)
    Image.fromarray(mask * 255).convert("1").save(target, optimize=True)
    if not np.array_equal(decode_mask(target, size), mask):
        raise RuntimeError(f"{target} does not decode to the mask of {source}")


def stage(data_dir: Path, extra: Path | None, split_csv: Path, size: tuple[int, int], root: Path,
          masks: bool = True) -> list:
    """Copy the train and val images under root/data/; returns the mask jobs for write_sized_mask
    (none without masks: classifiers, teachers and their students read the images alone)."""
    ham, isic = root / "data" / "ham10000", root / "data" / "isic2018"
    table = attach_split(load_table(data_dir), split_csv)
    table = table[table["split"] != "test"]
    sources = {ham: list(zip(table["image_path"], table["mask_path"]))}
    extra_splits = ("train", "val") if masks else ("train",)  # as unlabelled images, only its train split is read
    if extra is not None:
        sources[isic] = [pair for split in extra_splits for pair in zip(*mask_set_pairs(extra, split))]
    jobs = []
    for folder, items in sources.items():
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        for image_path, mask_path in items:
            shutil.copy(image_path, folder / "images")
            if masks:
                jobs.append((mask_path, str(folder / "masks" / Path(mask_path).name), size))
    shutil.copy(data_dir / "HAM10000_metadata.csv", ham)
    if extra is not None:
        table = pd.read_csv(extra / "split.csv")
        table[table["split"].isin(extra_splits)].to_csv(isic / "split.csv", index=False)
    return jobs


def pack_data(data_dir: Path, extra: Path | None, split_csv: Path, size: tuple[int, int], out: Path,
              masks: bool = True) -> int:
    """Write the .tgz; returns the number of masks in it."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = stage(data_dir, extra, split_csv, size, Path(tmp), masks)
        with ProcessPoolExecutor() as pool:
            list(pool.map(write_sized_mask, jobs, chunksize=200))
        with tarfile.open(out, "w:gz") as tar:
            tar.add(Path(tmp) / "data", arcname="data")
    return len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "gpu_data.tgz")
    parser.add_argument("--data", default=None, help="HAM10000 folder (default: $DERM_DATA or ../shared/ham10000)")
    parser.add_argument("--split", type=Path, default=REPO / "weights" / "split.csv")
    parser.add_argument("--mask-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"),
                        help="the segmenter's input size on the GPU")
    parser.add_argument("--extra-masks", type=Path, default=None, help="a folder in isic2018_task1's layout")
    parser.add_argument("--no-masks", action="store_true",
                        help="images alone, for classifiers (a teacher and its students): a smaller file")
    args = parser.parse_args()
    size = tuple(args.mask_size)
    masks = pack_data(resolve_data_dir(args.data), args.extra_masks, args.split, size, args.out, not args.no_masks)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, {masks} masks at {size[0]}x{size[1]}")


if __name__ == "__main__":
    main()
