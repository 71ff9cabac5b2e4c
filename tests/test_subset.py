"""data/ham10000-test: the test split shipped in the repository, and the script that builds it."""

import filecmp
import importlib.util
from pathlib import Path

import pandas as pd

from derm import data
from conftest import REPO

MAX_BYTES = 8_000_000  # the budget for dataset files in the repository
SPLIT = REPO / "weights" / "split.csv"

_spec = importlib.util.spec_from_file_location("make_test_subset", REPO / "scripts" / "make_test_subset.py")
make_test_subset = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_test_subset)


def shipped_split_ids() -> list[str]:
    split = data.read_split(SPLIT)
    return sorted(split.loc[split["split"] == "test", "image_id"])


def stems(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name.removesuffix(suffix) for p in folder.iterdir())


def test_it_holds_exactly_the_test_split_in_the_dataset_layout(data_dir):
    ids = shipped_split_ids()
    assert len(ids) == 1002
    assert stems(data_dir / "images", ".jpg") == ids
    assert stems(data_dir / "masks", "_segmentation.png") == ids
    metadata = pd.read_csv(data_dir / "HAM10000_metadata.csv")
    assert list(metadata.columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert sorted(metadata["image_id"]) == ids
    assert sorted(p.name for p in data_dir.iterdir()) == ["HAM10000_metadata.csv", "README.md", "images", "masks"]


def test_it_fits_the_size_budget_and_states_licence_and_citation(data_dir):
    size = make_test_subset.folder_bytes(data_dir)
    assert size <= MAX_BYTES, f"{size / 1e6:.2f} MB"
    readme = (data_dir / "README.md").read_text()
    for needed in ("CC BY-NC 4.0", "Tschandl", "Sci. Data 5, 180161", "10.1038/sdata.2018.161", "10.7910/DVN/DBW86T",
                   "scripts/make_test_subset.py"):
        assert needed in readme, needed


def test_masks_keep_the_datasets_resolution_and_values(data_dir):
    masks = data.cached_array(sorted(map(str, (data_dir / "masks").glob("*.png")))[:20], (450, 600), "mask",
                              progress=False)
    assert masks.shape == (20, 450, 600) and masks.reshape(20, -1).any(axis=1).all()


def test_the_script_rebuilds_it_file_for_file(data_dir, tmp_path):
    """Built from any folder holding the test images (here the shipped one), the result is identical."""
    out = tmp_path / "rebuilt"
    counts = make_test_subset.build(data_dir, SPLIT, out)
    assert sum(counts.values()) == 1002
    for sub in ("", "images", "masks"):
        compared = filecmp.dircmp(data_dir / sub, out / sub)
        assert not (compared.left_only or compared.right_only), sub
        _, mismatch, errors = filecmp.cmpfiles(data_dir / sub, out / sub, compared.common_files, shallow=False)
        assert not mismatch and not errors, (sub, mismatch[:3], errors[:3])


def test_its_files_are_copies_of_the_full_dataset(full_data_dir, data_dir):
    for image_id in shipped_split_ids():
        assert filecmp.cmp(data_dir / "images" / f"{image_id}.jpg", full_data_dir / "images" / f"{image_id}.jpg",
                           shallow=False), image_id
        mask = f"{image_id}_segmentation.png"
        assert filecmp.cmp(data_dir / "masks" / mask, full_data_dir / "masks" / mask, shallow=False), image_id
    full_lines = set((full_data_dir / "HAM10000_metadata.csv").read_text().splitlines())
    shipped = (data_dir / "HAM10000_metadata.csv").read_text().splitlines()
    assert shipped[0] == (full_data_dir / "HAM10000_metadata.csv").read_text().splitlines()[0]
    assert set(shipped) <= full_lines
