import numpy as np
import pytest

from derm import catalog, data


@pytest.fixture(scope="module")
def table(data_dir):
    return data.load_table(data_dir)


@pytest.mark.parametrize("text", ["ISIC_0024306", " isic_0024306 ", "0024306", "24306", "ISIC_0024306.jpg"])
def test_ids_as_people_type_them(text):
    assert catalog.normalise_image_id(text) == "ISIC_0024306"


def test_find_image_known_and_unknown(table):
    row = catalog.find_image(table, "isic_0024306")
    assert row["image_id"] == "ISIC_0024306" and row["label"] in set(table["label"])
    for unknown in ("ISIC_9999999", "hello", "", "ISIC_0024306; rm"):
        assert catalog.find_image(table, unknown) is None


def test_random_image_of_a_class(table):
    rng = np.random.default_rng(0)
    picks = {catalog.random_image_id(table, "DF", rng) for _ in range(20)}
    assert set(table.set_index("image_id").loc[list(picks), "label"]) == {"DF"}
    assert len(picks) > 1
    with pytest.raises(ValueError):
        catalog.random_image_id(table.iloc[:0], "DF")


def test_image_path_prefers_the_full_size_original(table, data_dir):
    original_id = sorted(p.stem for p in (data_dir / "originals").glob("*.jpg"))[0]
    with_original = catalog.find_image(table, original_id)
    assert catalog.image_path(with_original) == data_dir / "originals" / f"{original_id}.jpg"
    small_only = table[~table["image_id"].isin({p.stem for p in (data_dir / "originals").glob("*.jpg")})].iloc[0]
    assert catalog.image_path(small_only) == data_dir / "images" / f"{small_only['image_id']}.jpg"
