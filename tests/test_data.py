import numpy as np
import pandas as pd
import pytest

from derm import data
from derm.classes import CLASSES


@pytest.fixture(scope="module")
def table(data_dir):
    return data.load_table(data_dir)


def test_table_has_every_image_and_known_labels(table):
    assert len(table) == 10015
    assert set(table["label"]) == set(CLASSES)
    assert table["image_id"].is_unique


def test_groundtruth_csv_format_reads_into_the_same_labels(tmp_path, data_dir, table):
    (tmp_path / "images").mkdir()
    onehot = pd.read_csv(data_dir / "GroundTruth.csv").head(50)
    onehot.to_csv(tmp_path / "GroundTruth.csv", index=False)
    from_onehot = data.load_table(tmp_path)
    expected = table.set_index("image_id").loc[from_onehot["image_id"], "label"].values
    assert (from_onehot["label"].values == expected).all()


def test_split_is_grouped_by_lesion_and_stratified(table):
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


def test_split_is_deterministic_and_the_shipped_file_matches(table):
    assert data.make_split(table, seed=0).equals(data.make_split(table, seed=0))
    shipped = data.read_split(data.REPO_ROOT / "weights" / "split.csv")
    assert (shipped["split"].values == data.make_split(table, seed=0).values).all()


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
