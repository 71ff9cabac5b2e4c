import numpy as np
import pandas as pd
import pytest

from derm import data
from derm.classes import CLASSES


# images and lesions per class in HAM10000 (its README): the split test runs on a table shaped like it
HAM_IMAGES = {"NV": 6705, "MEL": 1113, "BKL": 1099, "BCC": 514, "AKIEC": 327, "VASC": 142, "DF": 115}
HAM_LESIONS = {"NV": 5403, "MEL": 614, "BKL": 727, "BCC": 327, "AKIEC": 228, "VASC": 98, "DF": 73}


@pytest.fixture(scope="module")
def table(data_dir):
    return data.load_table(data_dir)


@pytest.fixture(scope="module")
def ham_shaped_table() -> pd.DataFrame:
    """A metadata table with HAM10000's class and lesion counts (several images per lesion), no files."""
    rng = np.random.default_rng(0)
    rows = []
    for label, n_images in HAM_IMAGES.items():
        lesions = np.concatenate([np.arange(HAM_LESIONS[label]),
                                  rng.integers(0, HAM_LESIONS[label], n_images - HAM_LESIONS[label])])
        rows += [{"lesion_id": f"{label}_{lesion}", "label": label} for lesion in lesions]
    frame = pd.DataFrame(rows)
    frame["image_id"] = [f"ISIC_{i:07d}" for i in range(len(frame))]
    frame["label_idx"] = frame["label"].map({c: i for i, c in enumerate(CLASSES)})
    return frame


def test_the_shipped_table_is_the_test_split_with_known_labels(table):
    split = data.read_split(data.REPO_ROOT / "weights" / "split.csv")
    assert sorted(table["image_id"]) == sorted(split.loc[split["split"] == "test", "image_id"])
    assert set(table["label"]) == set(CLASSES)
    assert table["image_id"].is_unique and len(table) == 1002


def test_the_full_dataset_has_every_image_and_reproduces_the_shipped_split(full_data_dir):
    full = data.load_table(full_data_dir)
    assert len(full) == 10015 and set(full["label"]) == set(CLASSES) and full["image_id"].is_unique
    shipped = data.read_split(data.REPO_ROOT / "weights" / "split.csv")
    assert list(shipped["image_id"]) == list(full["image_id"])
    assert (shipped["split"].values == data.make_split(full, seed=0).values).all()


def test_groundtruth_csv_format_reads_into_the_same_labels(tmp_path, table):
    (tmp_path / "images").mkdir()
    sample = table.sample(n=50, random_state=0)
    onehot = pd.DataFrame({"image": sample["image_id"], **{c: (sample["label"] == c).astype(float) for c in CLASSES}})
    onehot.to_csv(tmp_path / "GroundTruth.csv", index=False)
    from_onehot = data.load_table(tmp_path)
    expected = table.set_index("image_id").loc[from_onehot["image_id"], "label"].values
    assert len(from_onehot) == 50 and (from_onehot["label"].values == expected).all()


def test_split_is_grouped_by_lesion_and_stratified(ham_shaped_table):
    table = ham_shaped_table
    split = data.make_split(table, seed=0)
    lesions = {s: set(table.loc[split == s, "lesion_id"]) for s in data.SPLITS}
    assert not lesions["train"] & lesions["val"]
    assert not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]
    for label in CLASSES:
        in_class = table["label"] == label
        shares = split[in_class].value_counts(normalize=True)
        for name, expected in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs(shares.get(name, 0) - expected) <= 0.02, (label, name, shares.to_dict())


def test_split_is_deterministic(ham_shaped_table):
    table = ham_shaped_table.iloc[::10].reset_index(drop=True)  # a tenth: make_split is slow on 10,000 rows
    assert data.make_split(table, seed=0).equals(data.make_split(table, seed=0))
    assert not data.make_split(table, seed=0).equals(data.make_split(table, seed=1))


def test_cache_round_trips_decoded_images(tmp_path, monkeypatch, table):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    paths = list(table["image_path"][:5])
    cached = data.cached_array(paths, (30, 40), "image", progress=False)
    assert cached.shape == (5, 30, 40, 3) and cached.dtype == np.uint8
    assert np.array_equal(cached[2], data.decode_image(paths[2], (30, 40)))
    assert len(list(tmp_path.glob("image_30x40_*.npy"))) == 1
    data.cached_array(paths, (30, 40), "image", progress=False)  # second call reuses the file
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_masks_are_binary_and_resized(table):
    mask = data.decode_mask(table["mask_path"][0], (150, 200))
    assert mask.shape == (150, 200) and set(np.unique(mask)) <= {0, 1} and mask.sum() > 0


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 6, 3), dtype=np.uint8)
    stats = data.channel_stats(images, chunk=3)
    as_float = images / 255.0
    assert np.allclose(stats.mean, as_float.mean(axis=(0, 1, 2)), atol=1e-4)
    assert np.allclose(stats.std, as_float.std(axis=(0, 1, 2)), atol=1e-4)


def test_missing_data_gives_a_clear_message(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="DERM_DATA"):
        data.resolve_data_dir(tmp_path / "nowhere")


def test_images_come_from_the_full_dataset_when_found(data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data.REPO_ROOT / "weights"))  # a folder, but no dataset
    fallback = data.image_source()
    assert fallback == data.ImageSource(data.TEST_SUBSET_DIR, complete=False)
    assert "test split" in fallback.summary() and "training is not available" in fallback.summary()
    monkeypatch.setenv(data.DATA_ENV, str(data_dir))
    full = data.image_source(subset_dir=data_dir / "images")  # any complete folder other than the subset is "full"
    assert full.path == data_dir and full.complete and "full dataset" in full.summary()
    assert data.image_source(data_dir) == data.ImageSource(data_dir, complete=False)  # the subset named directly


def test_without_the_shipped_test_split_either_the_message_names_the_full_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(data.DataNotFoundError, match="nowhere"):
        data.image_source(subset_dir=tmp_path / "no-subset")


def test_the_default_split_follows_the_environment(monkeypatch):
    from derm.train import TrainConfig

    monkeypatch.delenv(data.SPLIT_ENV, raising=False)
    assert TrainConfig().split == "weights/split.csv"
    monkeypatch.setenv(data.SPLIT_ENV, "/tmp/other.csv")
    assert TrainConfig().split == TrainConfig.for_task("segmenter").split == "/tmp/other.csv"
