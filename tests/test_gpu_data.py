"""scripts/gpu_data.py: the data a remote GPU trains on decodes exactly as it does where it was packed, without the test split."""

import importlib.util
import shutil
import sys
import tarfile

import numpy as np
import pandas as pd

from derm.data import decode_image, decode_mask

from conftest import REPO

_spec = importlib.util.spec_from_file_location("gpu_data", REPO / "scripts" / "gpu_data.py")
gpu_data = importlib.util.module_from_spec(_spec)
sys.modules["gpu_data"] = gpu_data  # its process pool pickles functions by module name
_spec.loader.exec_module(gpu_data)


def test_packed_data_decodes_like_the_originals_and_leaves_the_test_split_out(tmp_path, data_dir):
    ids = sorted(p.stem for p in (data_dir / "images").glob("*.jpg"))[:9]
    split = tmp_path / "split.csv"
    pd.DataFrame({"image_id": ids, "split": ["train"] * 5 + ["val"] * 2 + ["test"] * 2}).to_csv(split, index=False)
    extra = tmp_path / "isic"  # a second mask source in isic2018_task1's layout, made of the same files
    (extra / "images").mkdir(parents=True)
    (extra / "masks").mkdir()
    for i in ids[:3]:
        shutil.copy(data_dir / "images" / f"{i}.jpg", extra / "images")
        shutil.copy(data_dir / "masks" / f"{i}_segmentation.png", extra / "masks")
    pd.DataFrame({"image_id": ids[:3], "split": ["train", "val", "test"]}).to_csv(extra / "split.csv", index=False)

    size = (36, 48)
    assert gpu_data.pack_data(data_dir, extra, split, size, tmp_path / "d.tgz") == 7 + 2
    with tarfile.open(tmp_path / "d.tgz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    ham, isic = tmp_path / "out" / "data" / "ham10000", tmp_path / "out" / "data" / "isic2018"
    assert sorted(p.stem for p in (ham / "images").glob("*.jpg")) == ids[:7]  # no test images
    assert pd.read_csv(isic / "split.csv")["split"].tolist() == ["train", "val"]
    for i in ids[:7]:
        packed = decode_mask(ham / "masks" / f"{i}_segmentation.png", size)
        assert np.array_equal(packed, decode_mask(data_dir / "masks" / f"{i}_segmentation.png", size))
        assert np.array_equal(decode_image(ham / "images" / f"{i}.jpg", size),
                              decode_image(data_dir / "images" / f"{i}.jpg", size))
    assert sorted(p.name for p in (isic / "masks").iterdir()) == [f"{i}_segmentation.png" for i in ids[:2]]
    assert (ham / "HAM10000_metadata.csv").is_file()


def test_without_masks_only_the_images_travel(tmp_path, data_dir):
    ids = sorted(p.stem for p in (data_dir / "images").glob("*.jpg"))[:4]
    split = tmp_path / "split.csv"
    pd.DataFrame({"image_id": ids, "split": ["train", "train", "val", "test"]}).to_csv(split, index=False)
    extra = tmp_path / "isic"  # unlabelled images for students: only their train split travels
    (extra / "images").mkdir(parents=True)
    for i in ids[:2]:
        shutil.copy(data_dir / "images" / f"{i}.jpg", extra / "images")
    pd.DataFrame({"image_id": ids[:2], "split": ["train", "val"]}).to_csv(extra / "split.csv", index=False)
    assert gpu_data.pack_data(data_dir, extra, split, (36, 48), tmp_path / "d.tgz", masks=False) == 0
    with tarfile.open(tmp_path / "d.tgz") as tar:
        names = tar.getnames()
        isic_split = pd.read_csv(tar.extractfile("data/isic2018/split.csv"))
    assert sorted(n for n in names if n.endswith(".jpg")) == sorted(
        [f"data/ham10000/images/{i}.jpg" for i in ids[:3]] + [f"data/isic2018/images/{ids[0]}.jpg"])
    assert not [n for n in names if n.endswith(".png")] and isic_split["split"].tolist() == ["train"]
