"""Does a slot help on images from elsewhere? The best rule of each slot set, as cross-validation inside
HAM10000 validation ranked them (the manifest's `ensemble.combination.candidates`), refitted on all of
HAM10000 val and scored on another labelled set's train/valid images (its test split is refused: it
chooses nothing).

    python scripts/check_slots_elsewhere.py --weights weights --images ../shared/derm7pt/images \
        --labels ../shared/derm7pt/labels.csv

Balanced accuracy, macro F1 and macro AUC over the classes the set has, and melanoma AUC.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derm import data  # noqa: E402
from derm.classes import CLASSES  # noqa: E402
from derm.combination import Candidate, fit_weights, mix  # noqa: E402
from derm.evaluate import split_table  # noqa: E402
from derm.external import find_image, read_table  # noqa: E402
from derm.imageio import load_image  # noqa: E402
from derm.metrics import present_classes_report  # noqa: E402
from derm.pipeline import Predictor, average_members  # noqa: E402


def slot_probabilities(predictor: Predictor, images: list[np.ndarray], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Each slot's probabilities (the mean of its members'), through the app's own preprocessing."""
    parts = [average_members(predictor.model_probabilities(images[s:s + batch_size]), predictor.members)
             for s in range(0, len(images), batch_size)]
    return {slot: np.concatenate([p[slot] for p in parts]) for slot in parts[0]}


def best_per_slot_set(candidates: list[dict]) -> list[Candidate]:
    best: dict[tuple, dict] = {}
    for row in candidates:
        key = tuple(row["slots"])
        if key not in best or (row["score"], row["macro_auc"]) > (best[key]["score"], best[key]["macro_auc"]):
            best[key] = row
    return [Candidate(tuple(r["slots"]), r["kind"], r["prior_correction"], r["shrinkage"]) for r in best.values()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--out", help="also write the scores to this JSON file")
    args = parser.parse_args()
    predictor = Predictor(args.weights, load_gate=False)
    ens = predictor.manifest["ensemble"]
    if "combination" not in ens:
        print(f"{args.weights}: exported before the combination was cross-validated", file=sys.stderr)
        return 2
    table = read_table(args.labels)
    if "split" in table.columns:
        table = table[table["split"] != "test"]
    images = [load_image(find_image(Path(args.images), i)) for i in table["image_id"]]
    y_set = np.array([CLASSES.index(d) for d in table["dx"]])
    val = split_table(Path(args.weights) / "split.csv", None, "val")
    val_images = list(data.cached_array(list(val["image_path"]), next(iter(predictor.classifiers.values())).input_hw,
                                        "image", progress=False))
    val_slots, set_slots = slot_probabilities(predictor, val_images), slot_probabilities(predictor, images)
    counts, rows = ens["train_class_counts"], {}
    for cand in best_per_slot_set(ens["combination"]["candidates"]):
        weights = fit_weights(cand, val_slots, val["label_idx"].values, counts)
        probs = mix(np.stack([set_slots[s] for s in cand.slots], axis=2), weights, predictor.prior, cand.prior_correction)
        rep = present_classes_report(y_set, probs)
        rows[cand.name] = {k: round(float(rep[k]), 4) for k in ("balanced_accuracy", "macro_f1", "macro_auc", "melanoma_auc")}
        print(f"{cand.name:55s} bal_acc={rep['balanced_accuracy']:.3f} macro_f1={rep['macro_f1']:.3f} "
              f"macro_auc={rep['macro_auc']:.3f} mel_auc={rep['melanoma_auc']:.3f}  ({len(y_set)} images, no test split)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
