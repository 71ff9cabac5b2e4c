"""Choose the U-Net mask-cleaning rule on validation: HAM10000 val (Dice at the masks' 600x450) and
isic2018_task1 val (Dice at its 256x256), with the shipped U-Net. Test splits are not read.

    python scripts/choose_cleaning.py [--weights weights] [--isic ../shared/isic2018_task1] [--out FILE.json]

HAM val goes through the export machinery (cached 200x150 images at the U-Net's input, probability
maps upsampled to 600x450, as weights/metrics.json is scored); isic2018_task1 val through the app's
own path (derm.imageio decode, SegmenterModel.mask). Each candidate is applied to the same
thresholded maps, so the table compares rules alone. Prints a markdown table, best first by the mean
of the two validation Dice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from derm import data  # noqa: E402
from derm.evaluate import segmenter_probabilities, split_table  # noqa: E402
from derm.imageio import load_image  # noqa: E402
from derm.maskclean import NONE, CleanConfig, clean  # noqa: E402
from derm.metrics import batch_dice_iou, segmentation_report  # noqa: E402
from derm.pipeline import Predictor  # noqa: E402

CANDIDATES = {
    "none": NONE,
    "fill holes": CleanConfig(fill_holes=True),
    "largest": CleanConfig(rule="largest"),
    "largest + fill": CleanConfig(rule="largest", fill_holes=True),
    "central": CleanConfig(rule="central"),
    "central + fill": CleanConfig(rule="central", fill_holes=True),
    "central^2 + fill": CleanConfig(rule="central", power=2.0, fill_holes=True),
    "central (+ >=0.5) + fill": CleanConfig(rule="central", keep_share=0.5, fill_holes=True),
    "central (+ >=0.2) + fill": CleanConfig(rule="central", keep_share=0.2, fill_holes=True),
    "largest, drop border + fill": CleanConfig(rule="largest", drop_border=True, fill_holes=True),
    "central, drop border + fill": CleanConfig(rule="central", drop_border=True, fill_holes=True),
    "open 1% + central + fill": CleanConfig(rule="central", opening=0.01, fill_holes=True),
    "open 2% + central + fill": CleanConfig(rule="central", opening=0.02, fill_holes=True),
}


def ham_val(predictor: Predictor, limit: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    seg = predictor.segmenter
    part = split_table(predictor.weights_dir / "split.csv", None, "val", limit)
    images = data.cached_array(list(part["image_path"]), seg.input_hw, "image")
    probs = segmenter_probabilities(seg, images)
    preds, truths = [], []
    for prob, path in tqdm(list(zip(probs, part["mask_path"])), desc="HAM val", unit="img", file=sys.stderr):
        truth = cv2.imread(path, cv2.IMREAD_GRAYSCALE) >= 128
        preds.append(cv2.resize(prob, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR))
        truths.append(truth)
    return preds, truths


def isic_val(predictor: Predictor, folder: Path, limit: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ids = pd.read_csv(folder / "split.csv")
    ids = ids[ids["split"] == "val"]["image_id"].tolist()[:limit or None]
    preds, truths = [], []
    for image_id in tqdm(ids, desc="isic2018_task1 val", unit="img", file=sys.stderr):
        _, prob = predictor.segmenter.mask(load_image(folder / "images" / f"{image_id}.jpg"))
        preds.append(prob)
        truths.append(cv2.imread(str(folder / "masks" / f"{image_id}_segmentation.png"), cv2.IMREAD_GRAYSCALE) >= 128)
    return preds, truths


def score(probs: list[np.ndarray], truths: list[np.ndarray], threshold: float, config: CleanConfig) -> dict:
    dices, ious = [], []
    for prob, truth in zip(probs, truths):
        d, i = batch_dice_iou(clean(prob >= threshold, config)[None], truth[None])
        dices.append(d[0])
        ious.append(i[0])
    return segmentation_report(np.array(dices), np.array(ious))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--isic", default=str(data.REPO_ROOT.parent / "shared" / "isic2018_task1"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=None,
                        help="also try these thresholds with every rule (default: the manifest's only)")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--out", help="write every score as JSON here")
    parser.add_argument("--cache", help="keep the probability maps here (fp16 .npz) and reuse them on the next run")
    args = parser.parse_args()
    predictor = Predictor(args.weights)
    predictor.segmenter.cleaning = NONE  # raw probability maps; the rules are applied here
    sets = {}
    for name, load in (("ham_val", lambda: ham_val(predictor, args.limit)),
                       ("isic_val", lambda: isic_val(predictor, Path(args.isic), args.limit))):
        cached = Path(args.cache) / f"{name}_{args.limit}.npz" if args.cache else None
        if cached is not None and cached.is_file():
            with np.load(cached) as f:
                n = len([k for k in f.files if k.startswith("p")])
                sets[name] = ([f[f"p{i}"].astype(np.float32) for i in range(n)], [f[f"t{i}"] for i in range(n)])
            continue
        sets[name] = load()
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            probs, truths = sets[name]
            np.savez(cached, **{f"p{i}": p.astype(np.float16) for i, p in enumerate(probs)},
                     **{f"t{i}": t for i, t in enumerate(truths)})
    thresholds = args.thresholds or [predictor.segmenter.threshold]
    rows = []
    for threshold in thresholds:
        for name, config in CANDIDATES.items():
            reports = {s: score(p, t, threshold, config) for s, (p, t) in sets.items()}
            rows.append({"rule": name, "threshold": threshold, "config": config.to_dict(), **reports,
                         "mean_dice": float(np.mean([r["dice"] for r in reports.values()]))})
            print(f"{name:32s} t={threshold} " + " ".join(f"{s} dice={r['dice']:.4f} tj={r['thresholded_jaccard']:.4f}"
                                                        for s, r in reports.items()), file=sys.stderr, flush=True)
    rows.sort(key=lambda r: -r["mean_dice"])
    print("| rule | threshold | HAM val Dice (600x450) | HAM val thr. Jaccard | isic val Dice (256x256) | "
          "isic val thr. Jaccard | mean Dice |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rule']} | {r['threshold']} | {r['ham_val']['dice']:.4f} | {r['ham_val']['thresholded_jaccard']:.4f} | "
              f"{r['isic_val']['dice']:.4f} | {r['isic_val']['thresholded_jaccard']:.4f} | {r['mean_dice']:.4f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
