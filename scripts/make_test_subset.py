"""Build data/ham10000-test/: derm's HAM10000 test split, shipped so a fresh clone works without the dataset.

    python scripts/make_test_subset.py                      # from the dataset derm finds (see docs/data.md)
    python scripts/make_test_subset.py --data DIR --split weights/split.csv --out data/ham10000-test

It copies, for every image that weights/split.csv puts in the test split, the 200x150 JPEG and the
600x450 mask byte for byte, and the image's metadata row verbatim, into the same layout as the full
dataset (so `derm.data.load_table(out)` reads it unchanged), and writes the folder's README with the
licence and citation. Nothing from the train or validation splits is copied: the models never saw
these images, so they can be shown and scored honestly.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from derm import data  # noqa: E402

METADATA = "HAM10000_metadata.csv"
README = """# HAM10000: derm's test split

The {n:,} images of the HAM10000 dataset that derm's lesion-grouped split (`weights/split.csv`)
puts in the **test** split, with their lesion masks and metadata rows, so that a fresh clone can
diagnose examples, browse the test-set explorer with images, Grad-CAM and outlines, and run the
whole test suite without downloading the dataset. The shipped models never saw these images in
training or model selection.

| path | what |
| --- | --- |
| `HAM10000_metadata.csv` | the official metadata rows of these images, unchanged: `lesion_id,image_id,dx,dx_type,age,sex,localization` |
| `images/ISIC_xxxxxxx.jpg` | the 200x150 RGB JPEGs, byte-for-byte copies of the dataset's images |
| `masks/ISIC_xxxxxxx_segmentation.png` | the 600x450 binary lesion masks (0 skin, 255 lesion), byte-for-byte copies |

Classes: {classes}.

The folder is laid out like the full dataset, so `derm.data.load_table("data/ham10000-test")` reads
it. derm uses it only when the full dataset is not found (see docs/data.md in the repository); training
needs the full dataset. Rebuild it from the full dataset with `python scripts/make_test_subset.py`.

## Source and licence

HAM10000, licence **CC BY-NC 4.0** (non-commercial use, with attribution;
https://creativecommons.org/licenses/by-nc/4.0/). Dataset: Harvard Dataverse,
doi:[10.7910/DVN/DBW86T](https://doi.org/10.7910/DVN/DBW86T); the masks are the
`HAM10000_segmentations_lesion_tschandl` set of the same record. Cite:

Tschandl P., Rosendahl C., Kittler H. *The HAM10000 dataset, a large collection of multi-source
dermatoscopic images of common pigmented skin lesions.* Sci. Data 5, 180161 (2018),
doi:[10.1038/sdata.2018.161](https://doi.org/10.1038/sdata.2018.161).
"""


def test_ids(split_path: Path) -> list[str]:
    """The test split's image ids, sorted: the only images this folder may hold."""
    split = data.read_split(split_path)
    return sorted(split.loc[split["split"] == "test", "image_id"])


def copy_metadata(source: Path, target: Path, ids: set[str]) -> dict[str, int]:
    """The header and the rows of `ids`, as the original lines (no re-formatting of ages etc.)."""
    counts: dict[str, int] = {}
    with open(source, newline="") as src, open(target, "w", newline="") as out:
        lines = iter(src)
        header = next(lines)
        out.write(header)
        columns = next(csv.reader([header]))
        id_col, dx_col = columns.index("image_id"), columns.index("dx")
        for line in lines:
            row = next(csv.reader([line]))
            if row and row[id_col] in ids:
                out.write(line)
                counts[row[dx_col]] = counts.get(row[dx_col], 0) + 1
    return counts


def build(source: Path, split_path: Path, out: Path) -> dict[str, int]:
    """Write the subset into `out` (replacing what was there); returns the images per class."""
    ids = test_ids(split_path)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    counts = copy_metadata(source / METADATA, out / METADATA, set(ids))
    if sum(counts.values()) != len(ids):
        raise ValueError(f"{source / METADATA} lacks rows for {len(ids) - sum(counts.values())} test images")
    for image_id in ids:
        shutil.copyfile(source / "images" / f"{image_id}.jpg", out / "images" / f"{image_id}.jpg")
        mask = f"{image_id}_segmentation.png"
        shutil.copyfile(source / "masks" / mask, out / "masks" / mask)
    classes = " · ".join(f"{dx} {n}" for dx, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    (out / "README.md").write_text(README.format(n=len(ids), classes=classes))
    return counts


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the full HAM10000 folder (default: $DERM_DATA, see README)")
    parser.add_argument("--split", default=str(REPO / "weights" / "split.csv"))
    parser.add_argument("--out", default=str(data.TEST_SUBSET_DIR))
    args = parser.parse_args(argv)
    source = data.resolve_data_dir(args.data)
    out = Path(args.out)
    if source.resolve() == out.resolve():
        parser.error("--out must not be the source folder")
    counts = build(source, Path(args.split), out)
    print(f"{sum(counts.values())} images from {source} into {out} ({folder_bytes(out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
