"""Try lesion-scale normalisation before the classifiers, on validation sets only (HAM10000 val, derm7pt
train+valid). Not used by the app: docs/tried.md reports what it did and why it was not adopted.

    python scripts/try_lesion_scale.py --set ham      [--weights weights] [--save FILE.npz]
    python scripts/try_lesion_scale.py --set derm7pt  [--derm7pt ../shared/derm7pt]

Why: other dermatoscopes frame lesions closer than HAM10000's (the shipped U-Net's cleaned mask covers a
median 0.32 of derm7pt's 4:3 frame against 0.21 of HAM10000 val's). Each config zooms a large lesion out
by s = clip(sqrt(share / target), 1, max_zoom) around the frame's centre, borders reflected (as training's
grid_sample pads), after dark bars at the image's edges are trimmed. Every config is scored with the
shipped ensemble's own routing and prior correction (Predictor.ensemble) on the same images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from derm import data  # noqa: E402
from derm.classes import CLASSES  # noqa: E402
from derm.external import find_image, read_table  # noqa: E402
from derm.imageio import load_image  # noqa: E402
from derm.metrics import classification_report, present_classes_report, selection_score  # noqa: E402
from derm.pipeline import Predictor, center_crop_to_aspect, to_landscape  # noqa: E402

CONFIGS = ((0.21, 1.25), (0.21, 1.5), (0.37, 1.25), (0.37, 1.5))  # (target share, max zoom): HAM val median and p75
ASPECT = 4 / 3


def trim_dark_edges(rgb: np.ndarray, level: float = 20, most: float = 0.1) -> np.ndarray:
    """Drop near-black rows and columns at the edges (derm7pt's bars), at most `most` of each side,
    so that reflection does not copy them inwards."""
    grey = rgb.mean(axis=2)
    h, w = grey.shape

    def dark_run(profile: np.ndarray, limit: int) -> int:
        k = 0
        while k < limit and profile[k] < level:
            k += 1
        return k

    rows, cols = grey.mean(axis=1), grey.mean(axis=0)
    top, bottom = dark_run(rows, int(h * most)), dark_run(rows[::-1], int(h * most))
    left, right = dark_run(cols, int(w * most)), dark_run(cols[::-1], int(w * most))
    return rgb[top:h - bottom, left:w - right]


def zoom_out(landscape: np.ndarray, s: float) -> np.ndarray:
    """The centre 4:3 frame seen from s times further away: the image's own pixels where it has them
    (derm7pt is 3:2), reflection beyond."""
    image = trim_dark_edges(landscape)
    h, w = image.shape[:2]
    fh, fw = (h, round(h * ASPECT)) if w / h > ASPECT else (round(w / ASPECT), w)
    inverse = np.array([[s, 0, w / 2 - s * fw / 2], [0, s, h / 2 - s * fh / 2]], np.float32)
    return cv2.warpAffine(image, inverse, (fw, fh), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def zoom_factor(share: float, target: float, max_zoom: float) -> float:
    return float(np.clip(np.sqrt(share / target), 1.0, max_zoom))


def validation_items(which: str, derm7pt: Path) -> list[tuple[str, str]]:
    """(image path, class code) for HAM10000 val (the shipped split) or derm7pt's train and valid rows."""
    if which == "ham":
        table = data.attach_split(data.load_table(), data.default_split())
        table = table[table["split"] == "val"]
        return list(zip(table["image_path"], table["label"]))
    table = pd.concat([read_table(derm7pt / "labels.csv", split) for split in ("train", "valid")])
    return [(str(find_image(derm7pt / "images", i)), dx) for i, dx in zip(table["image_id"], table["dx"])]


def member_probabilities(predictor: Predictor, items: list[tuple[str, str]]
                         ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Each image's lesion share, and every network's probabilities per config ('plain' and each CONFIGS
    entry), N x 7 each."""
    names = list(predictor.classifiers)
    shares = []
    out: dict[str, list[np.ndarray]] = {"plain": [], **{str(c): [] for c in CONFIGS}}
    for path, _ in tqdm(items, desc="images"):
        landscape, _ = to_landscape(load_image(path))
        share = float(predictor.segment(center_crop_to_aspect(landscape, ASPECT)).mean())
        shares.append(share)
        scales = [zoom_factor(share, *config) for config in CONFIGS]
        distinct = sorted({round(s, 4) for s in scales if s > 1.0001})
        probs = predictor.model_probabilities([landscape] + [zoom_out(landscape, s) for s in distinct])
        views = np.stack([probs[n] for n in names], axis=1)  # views x networks x 7
        out["plain"].append(views[0])
        for config, s in zip(CONFIGS, scales):
            out[str(config)].append(views[0] if s <= 1.0001 else views[1 + distinct.index(round(s, 4))])
    return np.array(shares), {key: {n: np.stack(v)[:, i] for i, n in enumerate(names)} for key, v in out.items()}


def share_line(shares: np.ndarray, y: np.ndarray) -> str:
    """How much of the classifiers' 4:3 frame the lesion covers: median, p75, and the median per class."""
    per_class = " ".join(f"{c} {np.median(shares[y == k]):.2f}" for k, c in enumerate(CLASSES) if (y == k).any())
    return f"lesion share of the 4:3 frame: median {np.median(shares):.2f}, p75 {np.quantile(shares, 0.75):.2f}; {per_class}"


def report_line(which: str, y: np.ndarray, probs: np.ndarray) -> str:
    if which == "ham":
        r = classification_report(y, probs)
        return (f"score {selection_score(r):.4f} | balanced acc. {r['balanced_accuracy']:.3f} | macro F1 "
                f"{r['macro_f1']:.3f} | macro AUC {r['macro_auc']:.3f}")
    r = present_classes_report(y, probs)
    mean = (r["balanced_accuracy"] + r["macro_auc"] + r["melanoma_auc"]) / 3
    recall = " ".join(f"{c} {v:.2f}" for c, v in r["recall"].items())
    return (f"mean {mean:.4f} | balanced acc. {r['balanced_accuracy']:.3f} | macro AUC {r['macro_auc']:.3f} | "
            f"melanoma AUC {r['melanoma_auc']:.3f} | recall {recall}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["ham", "derm7pt"], required=True)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--derm7pt", type=Path, default=Path("../shared/derm7pt"))
    parser.add_argument("--save", default=None, help="also write every network's probabilities (.npz)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor = Predictor(args.weights, load_gate=False)
    items = validation_items(args.set, args.derm7pt)
    y = np.array([CLASSES.index(label) for _, label in items])
    shares, per_config = member_probabilities(predictor, items)
    if args.save:
        np.savez(args.save, y=y, share=shares, **{f"{k}|{n}": p for k, nets in per_config.items() for n, p in nets.items()})
    print(share_line(shares, y))
    print(f"| config (target share, max zoom) | {args.set} validation, {len(y)} images |\n|---|---|")
    for key, nets in per_config.items():
        print(f"| {key} | {report_line(args.set, y, predictor.ensemble(nets)[0])} |")


if __name__ == "__main__":
    main()
