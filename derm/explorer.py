"""The test-set explorer's data, from weights/test_predictions.csv and weights/metrics.json alone.

Everything here works without the images: a model's confusion cells, the test images in one cell,
ROC curves per class, and the click on a confusion cell turned into page state (a plain function,
so it is testable without a browser).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from derm.classes import CLASS_INDEX, CLASSES
from derm.metrics import classification_report

PREDICTIONS_FILE = "test_predictions.csv"
METRICS_FILE = "metrics.json"
TRUE_KEY, PRED_KEY = "explorer_true", "explorer_pred"


def load_predictions(weights_dir: Path) -> pd.DataFrame:
    """test_predictions.csv; FileNotFoundError says which file is missing."""
    path = Path(weights_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no test predictions at {path}: `python -m derm export` writes them")
    return pd.read_csv(path)


def load_metrics(weights_dir: Path) -> dict:
    """metrics.json, or {} when the weights were exported without it."""
    path = Path(weights_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def models_in(frame: pd.DataFrame) -> list[str]:
    """Model names with predictions in the frame, the ensemble first."""
    names = [c.removesuffix("_pred") for c in frame.columns if c.endswith("_pred")]
    return sorted(names, key=lambda n: (n != "ensemble", n))


def probabilities(frame: pd.DataFrame, model: str) -> np.ndarray:
    return frame[[f"{model}_{c}" for c in CLASSES]].to_numpy(dtype=float)


def true_indices(frame: pd.DataFrame) -> np.ndarray:
    return frame["true"].map(CLASS_INDEX).to_numpy(dtype=int)


def confusion_cells(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row per (true, predicted) pair, all 49 of them: count and the row-normalised rate."""
    counts = pd.crosstab(frame["true"], frame[f"{model}_pred"]).reindex(index=CLASSES, columns=CLASSES, fill_value=0)
    cells = counts.stack().rename("count").reset_index()
    cells.columns = ["true", "pred", "count"]
    row_totals = cells.groupby("true")["count"].transform("sum")
    cells["rate"] = np.where(row_totals > 0, cells["count"] / row_totals.where(row_totals > 0, 1), 0.0)
    return cells


def images_in_cell(frame: pd.DataFrame, model: str, true: str, pred: str, highest_first: bool = True) -> pd.DataFrame:
    """The test images of one confusion cell with the model's confidence, sorted by it."""
    rows = frame[(frame["true"] == true) & (frame[f"{model}_pred"] == pred)]
    out = pd.DataFrame({
        "image_id": rows["image_id"],
        "true": rows["true"],
        "predicted": rows[f"{model}_pred"],
        "confidence": rows[f"{model}_{pred}"].astype(float),
        "p_true": rows[f"{model}_{true}"].astype(float),
    })
    return out.sort_values("confidence", ascending=not highest_first, kind="stable").reset_index(drop=True)


def roc_curves(frame: pd.DataFrame, model: str) -> dict[str, dict]:
    """One-vs-rest ROC per class (false/true positive rates and AUC); classes with no positives
    or no negatives in the test set have no curve."""
    probs = probabilities(frame, model)
    y = true_indices(frame)
    curves = {}
    for i, name in enumerate(CLASSES):
        positives = y == i
        if not 0 < positives.sum() < len(y):
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, i])
        curves[name] = {"fpr": fpr, "tpr": tpr, "auc": float(roc_auc_score(positives, probs[:, i]))}
    return curves


def report_for(metrics: dict, frame: pd.DataFrame, model: str) -> dict:
    """The model's test classification report from metrics.json, recomputed from the predictions
    when metrics.json lacks it (same function, same numbers)."""
    stored = metrics.get("classifiers", {}).get("test", {}).get(model)
    return stored if stored else classification_report(true_indices(frame), probabilities(frame, model))


def cell_from_selection(event: Mapping | None) -> tuple[str, str] | None:
    """(true, predicted) of the first clicked confusion cell in a Plotly selection event.

    Accepts the whole event ({"selection": {"points": [...]}}) or its "selection" part; each point
    carries customdata [true, predicted] (x/y are the fallback). None when nothing valid is selected.
    """
    if not event:
        return None
    selection = event.get("selection", event)
    for point in selection.get("points", []) or []:
        custom = point.get("customdata")
        true, pred = (custom[0], custom[1]) if custom is not None and len(custom) >= 2 else (point.get("y"), point.get("x"))
        if true in CLASSES and pred in CLASSES:
            return str(true), str(pred)
    return None


def apply_cell_click(state: MutableMapping, event: Mapping | None) -> bool:
    """Turn a click on a confusion cell into the explorer's chosen cell; True when one was chosen."""
    cell = cell_from_selection(event)
    if cell is None:
        return False
    state[TRUE_KEY], state[PRED_KEY] = cell
    return True


# ----------------------------------------------------------------------------- patient metadata

PATIENT_COLUMNS = ("age", "sex", "localization", "dx_type")  # HAM10000's metadata beside each image


def with_patient(images: pd.DataFrame, table: pd.DataFrame | None) -> pd.DataFrame:
    """The images with the patient's age and sex, the lesion's body site (localization) and how its
    diagnosis was confirmed (dx_type), from the dataset's metadata table; missing where it has none."""
    out = images.drop(columns=[c for c in PATIENT_COLUMNS if c in images.columns])
    if table is None:
        return out.assign(**{c: None for c in PATIENT_COLUMNS})
    meta = table.drop_duplicates("image_id").set_index("image_id")
    meta = meta.reindex(columns=list(PATIENT_COLUMNS))
    return out.join(meta, on="image_id")


@dataclass(frozen=True)
class PatientFilter:
    """Which images to keep by patient metadata; an empty choice keeps everything. Narrowing the age
    range drops images of unknown age (they cannot be said to fall in it); the full range keeps them."""

    ages: tuple[float, float] | None = None
    sexes: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    confirmations: tuple[str, ...] = ()

    def apply(self, images: pd.DataFrame) -> pd.DataFrame:
        keep = pd.Series(True, index=images.index)
        if self.ages is not None:
            keep &= images["age"].between(*self.ages)
        for column, chosen in (("sex", self.sexes), ("localization", self.sites), ("dx_type", self.confirmations)):
            if chosen:
                keep &= images[column].isin(chosen)
        return images[keep].reset_index(drop=True)

    def describe(self) -> str:
        """The active choices in a few words, for the list's heading; '' when nothing is filtered."""
        parts = [f"age {self.ages[0]:.0f}–{self.ages[1]:.0f}"] if self.ages is not None else []
        parts += [", ".join(chosen) for chosen in (self.sexes, self.sites, self.confirmations) if chosen]
        return "; ".join(parts)


def patient_choices(images: pd.DataFrame) -> dict[str, list[str]]:
    """The values present for each categorical metadata column, sorted (for the filter's pickers)."""
    return {c: sorted(images[c].dropna().astype(str).unique()) for c in ("sex", "localization", "dx_type")}


def age_bounds(images: pd.DataFrame) -> tuple[int, int] | None:
    """The lowest and highest known age, or None when no age is known."""
    ages = images["age"].dropna()
    return (int(ages.min()), int(ages.max())) if not ages.empty else None


CONFIRMED_SHORT = {"histo": "histology", "follow_up": "follow-up", "consensus": "consensus", "confocal": "confocal"}


def describe_patient(row: Mapping) -> str:
    """One short line under a thumbnail: age, sex, body site, how the diagnosis was confirmed."""
    def known(value) -> bool:
        return value is not None and not pd.isna(value) and value != "unknown"

    age = f"{row['age']:.0f} y" if known(row.get("age")) else "age unknown"
    sex = row["sex"] if known(row.get("sex")) else "sex unknown"
    site = row["localization"] if known(row.get("localization")) else "site unknown"
    how = CONFIRMED_SHORT.get(row.get("dx_type"), row.get("dx_type")) if known(row.get("dx_type")) else "unconfirmed"
    return f"{age} · {sex} · {site} · {how}"
