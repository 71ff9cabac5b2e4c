import shutil

import numpy as np
import pytest

from derm import catalog, data
from derm.classes import CLASSES


@pytest.fixture(scope="module")
def table(data_dir):
    return data.load_table(data_dir)


@pytest.mark.parametrize("text", ["ISIC_0024306", " isic_0024306 ", "0024306", "24306", "ISIC_0024306.jpg"])
def test_ids_as_people_type_them(text):
    assert catalog.normalise_image_id(text) == "ISIC_0024306"


def test_find_image_known_and_unknown(table):
    row = catalog.find_image(table, "isic_0024702")
    assert row["image_id"] == "ISIC_0024702" and row["label"] in set(table["label"])
    for unknown in ("ISIC_9999999", "hello", "", "ISIC_0024702; rm"):
        assert catalog.find_image(table, unknown) is None


def test_random_image_of_a_class(table):
    rng = np.random.default_rng(0)
    picks = {catalog.random_image_id(table, "DF", rng) for _ in range(20)}
    assert set(table.set_index("image_id").loc[list(picks), "label"]) == {"DF"}
    assert len(picks) > 1
    with pytest.raises(ValueError):
        catalog.random_image_id(table.iloc[:0], "DF")


def test_image_path_prefers_the_full_size_original(table, data_dir, tmp_path):
    shutil.copytree(data_dir, tmp_path / "ham", ignore=shutil.ignore_patterns("masks"))
    (tmp_path / "ham" / "originals").mkdir()
    original_id, small_id = table["image_id"].iloc[0], table["image_id"].iloc[1]
    shutil.copyfile(data_dir / "images" / f"{original_id}.jpg", tmp_path / "ham" / "originals" / f"{original_id}.jpg")
    copied = data.load_table(tmp_path / "ham")
    with_original = catalog.find_image(copied, original_id)
    assert catalog.image_path(with_original) == tmp_path / "ham" / "originals" / f"{original_id}.jpg"
    assert catalog.image_path(catalog.find_image(copied, small_id)) == tmp_path / "ham" / "images" / f"{small_id}.jpg"


def test_examples_are_one_test_image_per_class_with_that_label(table, tmp_path):
    shown = catalog.examples(data.TEST_SUBSET_DIR)
    assert [e.label for e in shown] == list(CLASSES) and [e.image_id for e in shown] == [catalog.EXAMPLES[c] for c in CLASSES]
    for example in shown:  # the label it is shown with is the table's, and the models never saw it
        assert catalog.find_image(table, example.image_id)["label"] == example.label
        assert catalog.split_of(example.image_id, data.REPO_ROOT / "weights" / "split.csv") == "test"
        assert example.path.is_file()
    assert catalog.EXAMPLE_ID in {e.image_id for e in shown}
    (tmp_path / "images").mkdir()
    for example in shown[:3] + shown[4:]:  # a folder without the DF example shows the others
        shutil.copyfile(example.path, tmp_path / "images" / example.path.name)
    assert [e.label for e in catalog.examples(tmp_path)] == [c for c in CLASSES if c != "DF"]


def test_split_of_reads_a_split_file(tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("image_id,split\nISIC_0000001,train\nISIC_0000002,test\n")
    found = [catalog.split_of(i, split) for i in ("ISIC_0000001", "ISIC_0000002", "ISIC_0000003")]
    assert found == ["train", "test", None]
    assert catalog.split_of("ISIC_0000001", tmp_path / "missing.csv") is None
