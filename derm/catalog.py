"""Finding HAM10000 images for the app: by id (as people type it), by class, at random, or one of the
fixed examples; and whether the models saw an image (its split).

The app prefers the full-size original (600x450) when the data folder has one, since that is what
users upload; otherwise the 200x150 image the models were trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from derm.classes import CLASSES

if TYPE_CHECKING:  # the first page shows the examples before pandas is imported (cold start)
    import pandas as pd

ID_PATTERN = re.compile(r"^ISIC_\d{7}$")
# One clear example per class for the Diagnose page, all from the test split (so in every clone and
# never seen by the models): all three shipped models classify it right, it is among their most
# confident for its class (histopathology-confirmed where one was), and the lesion is well in view.
EXAMPLES = {"AKIEC": "ISIC_0026729", "BCC": "ISIC_0029352", "BKL": "ISIC_0032051", "DF": "ISIC_0032468",
            "MEL": "ISIC_0024702", "NV": "ISIC_0028296", "VASC": "ISIC_0031093"}
EXAMPLE_ID = EXAMPLES["MEL"]


def normalise_image_id(text: str) -> str:
    """'isic_0024306 ', '0024306' and 'ISIC_0024306.jpg' all mean ISIC_0024306."""
    text = text.strip().upper().removesuffix(".JPG")
    if text.isdigit():
        text = f"ISIC_{text.zfill(7)}"
    return text


def find_image(table: pd.DataFrame, text: str) -> pd.Series | None:
    """The metadata row of an image id, or None when HAM10000 has no such image."""
    image_id = normalise_image_id(text)
    if not ID_PATTERN.match(image_id):
        return None
    rows = table[table["image_id"] == image_id]
    return rows.iloc[0] if len(rows) else None


def random_image_id(table: pd.DataFrame, label: str | None = None, rng: np.random.Generator | None = None) -> str:
    """Any image id, or one of class `label`; the 'random' button of the picker."""
    rng = rng or np.random.default_rng()
    pool = table if label is None else table[table["label"] == label]
    if pool.empty:
        raise ValueError(f"no HAM10000 image has the label {label!r}")
    return str(pool["image_id"].iloc[int(rng.integers(len(pool)))])


def image_path(row: pd.Series) -> Path:
    """The 600x450 original beside images/ when present, else the 200x150 training image."""
    small = Path(row["image_path"])
    original = small.parent.parent / "originals" / small.name
    return original if original.is_file() else small


@dataclass(frozen=True)
class Example:
    label: str
    image_id: str
    path: Path  # the 200x150 image under images/


def examples(images_root: str | Path) -> list[Example]:
    """The examples present under a HAM10000 folder (images/<id>.jpg), one per class in class order. Found by
    file name, not through the metadata table: the first page shows them without reading the table."""
    found = [Example(label, image_id, Path(images_root) / "images" / f"{image_id}.jpg")
             for label, image_id in EXAMPLES.items()]
    return [example for example in found if example.path.is_file()]


def split_of(image_id: str, split_path: Path) -> str | None:
    """train/val/test for an image under a split.csv (e.g. the weights' own), None when it is not listed.

    Tells the user whether the models could have seen the image: only test images are unseen.
    """
    if not Path(split_path).is_file():
        return None
    import pandas as pd

    split = pd.read_csv(split_path, index_col="image_id")["split"]
    return str(split[image_id]) if image_id in split.index else None
