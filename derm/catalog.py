"""Finding HAM10000 images for the app: by id (as people type it), by class, or at random.

The app prefers the full-size original (600x450) when the data folder has one, since that is what
users upload; otherwise the 200x150 image the models were trained on.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

ID_PATTERN = re.compile(r"^ISIC_\d{7}$")
EXAMPLE_ID = "ISIC_0024306"


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
