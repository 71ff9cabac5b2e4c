"""Which networks' features the similar-case search should use: retrieval quality against the time a
gallery takes to embed.

    python bench/similar_networks.py [--weights weights] [--workers 2]

Every classifier's pooled features are computed once for HAM10000 train (the gallery), val (the
queries) and test (where the shipped retrieval space is fitted), and for derm7pt's train and valid
splits (never its test split), cached in derm.data.cache_dir(). Then, for each candidate set of
networks, the embedding is built as derm.retrieval.similar does (each network L2-normalised, centred,
64 principal axes fitted on the test split, fp16 as shipped) and scored:

- cost: the networks' identity-view time per image on one core (measured here; networks of one
  architecture count their mean), and what embedding
  the train split (8,011 images) on every core would take at that rate;
- HAM10000 val (gallery: train): the similarity-weighted vote's balanced accuracy, k chosen by 5-fold
  cross-validation inside val (k chosen on four folds, scored on the fifth; 3 seeds), mean and spread;
- derm7pt train+valid (gallery: train): balanced accuracy over the classes present, k chosen on
  HAM10000 val, and melanoma AUC.

The choice (printed last): among the sets whose gallery is estimated to take at most --budget-s, the
cheapest whose val score is within one standard error of the best's (fold-paired differences).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import numpy as np  # noqa: E402

from derm import data  # noqa: E402
from derm.classes import CLASSES  # noqa: E402
from derm.imageio import load_image  # noqa: E402
from derm.pipeline import Predictor  # noqa: E402
from derm.retrieval import evaluate, similar  # noqa: E402

DIMS = 64
FOLDS, SEEDS = 5, 3
GALLERY_IMAGES = 8011


def features_batch(predictor: Predictor, paths: list[str]) -> dict[str, np.ndarray]:
    """Every classifier's identity-view pooled features of a few image files (fp16, as caches keep them)."""
    features = predictor.model_features([load_image(p) for p in paths])
    return {n: f.astype(np.float16) for n, f in features.items()}


def all_features(predictor: Predictor, name: str, paths: list[str], workers: int) -> dict[str, np.ndarray]:
    """features_batch over a whole set, cached per weights and file list."""
    from derm.batch_workers import map_batches

    key = hashlib.sha1(f"{similar.ensemble_fingerprint(predictor.weights_dir)}:"
                       f"{similar.files_fingerprint(paths)}".encode()).hexdigest()[:16]
    target = data.cache_dir() / f"bench_networks_{name}_{key}.npz"
    if target.is_file():
        return dict(np.load(target))
    batches = [paths[i:i + 32] for i in range(0, len(paths), 32)]
    progress = similar.tqdm_progress(name)
    parts, done = [], 0
    for part in map_batches(predictor, features_batch, batches, workers):
        parts.append(part)
        done += len(next(iter(part.values())))
        progress(done, len(paths))
    out = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
    np.savez(target, **out)
    return out


def time_per_image(predictor: Predictor, paths: list[str]) -> dict[str, float]:
    """Each classifier's identity-view ms per image on one thread (batches of 32, after a warm-up)."""
    import torch

    torch.set_num_threads(1)
    images = [load_image(p) for p in paths[:64]]
    out = {}
    for name in predictor.classifiers:
        predictor.model_features(images[:32], (name,))
        start = time.perf_counter()
        predictor.model_features(images, (name,))
        out[name] = (time.perf_counter() - start) * 1000 / len(images)
    return out


def embed(features: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return similar.embedding({n: features[n].astype(np.float32) for n in names})


def neighbour_votes(space: similar.RetrievalSpace, gallery_table, gallery_raw: np.ndarray, queries_raw: np.ndarray,
                    lesions: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour labels and similarities (Q x k_max) in `space`, with the page's own-lesion exclusion."""
    gallery = similar.Gallery(gallery_table, space.map(gallery_raw).astype(np.float16).astype(np.float32),
                              np.array([""] * len(gallery_table)), "train", space)
    idx, sims = evaluate.neighbours(gallery, queries_raw, lesions, max(evaluate.K_CANDIDATES), threshold=1.01)
    return gallery_table["label_idx"].to_numpy()[idx], sims


def balanced_accuracy(labels: np.ndarray, neighbour_labels: np.ndarray, sims: np.ndarray, k: int) -> float:
    """The vote's balanced accuracy over the classes present in `labels`."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # a fold without some class: its recall is left out, as said
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(labels, similar.vote(neighbour_labels[:, :k], sims[:, :k]).argmax(axis=1)))


def cross_validated(labels: np.ndarray, neighbour_labels: np.ndarray, sims: np.ndarray, groups: np.ndarray
                    ) -> tuple[np.ndarray, list[int]]:
    """Balanced accuracy with k chosen on the other folds (folds by lesion, the same for every candidate):
    the score of each fold x seed, and the k each chose."""
    from sklearn.model_selection import GroupKFold

    scores, chosen = [], []
    for seed in range(SEEDS):
        folds = GroupKFold(FOLDS, shuffle=True, random_state=seed).split(labels, groups=groups)
        for fit, held in folds:
            k = max(evaluate.K_CANDIDATES,
                    key=lambda k: balanced_accuracy(labels[fit], neighbour_labels[fit], sims[fit], k))
            chosen.append(k)
            scores.append(balanced_accuracy(labels[held], neighbour_labels[held], sims[held], k))
    return np.array(scores), chosen


def choose(rows: list[dict], budget_s: float) -> tuple[dict, dict]:
    """(best, chosen): best = the highest val CV mean among candidates whose gallery fits the budget;
    chosen = the cheapest of those whose fold-paired difference to the best is within one standard error
    (the one-standard-error rule: a difference smaller than that is noise on 1,002 val images)."""
    affordable = [r for r in rows if r["gallery_s"] <= budget_s]
    best = max(affordable, key=lambda r: r["scores"].mean())
    for row in sorted(affordable, key=lambda r: (r["ms"], -r["scores"].mean())):
        diff = best["scores"] - row["scores"]
        if diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff)):
            return best, row
    return best, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget-s", type=float, default=150.0,
                        help="estimated seconds to embed the train split on every core (default: half of 5 min)")
    args = parser.parse_args()
    predictor = Predictor(args.weights, load_gate=False)
    table = data.attach_split(data.load_table(data.image_source().path), predictor.weights_dir / "split.csv")
    splits = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    d7 = evaluate.derm7pt_set()
    import pandas as pd

    d7_table = pd.read_csv(evaluate.DERM7PT / "labels.csv").set_index("image_id")
    d7_keep = np.array([d7_table.loc[Path(p).stem, "split"] in ("train", "valid") for p in d7.paths])
    d7_paths = [p for p, keep in zip(d7.paths, d7_keep) if keep]
    d7_labels = d7.labels[d7_keep]

    ms = time_per_image(predictor, list(splits["test"]["image_path"]))
    arch = {n: predictor.manifest["models"][n]["arch"] for n in ms}
    ms = {n: float(np.mean([ms[m] for m in ms if arch[m] == arch[n]])) for n in ms}  # same architecture, same cost
    features = {s: all_features(predictor, f"ham_{s}", list(t["image_path"]), args.workers) for s, t in splits.items()}
    features["derm7pt"] = all_features(predictor, "derm7pt_trainvalid", d7_paths, args.workers)

    names = sorted(predictor.classifiers)
    candidates = [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
    val = splits["val"]
    print(f"per image, one core: " + ", ".join(f"{n} {t:.1f} ms" for n, t in ms.items()))
    print(f"{'networks':<58} {'ms/img':>6} {'gallery s':>9} {'val bal.acc (CV)':>17} {'ks':>10} "
          f"{'d7 bal.acc':>10} {'d7 mel AUC':>10}")
    rows = []
    for names_c in candidates:
        blocks = tuple(features["test"][n].shape[1] for n in sorted(names_c))
        space = similar.RetrievalSpace.fit(embed(features["test"], names_c), blocks, DIMS)
        train_raw = embed(features["train"], names_c)
        labels_v, sims_v = neighbour_votes(space, splits["train"], train_raw, embed(features["val"], names_c),
                                           list(val["lesion_id"]))
        scores, ks = cross_validated(val["label_idx"].to_numpy(), labels_v, sims_v, val["lesion_id"].to_numpy())
        k_val = max(evaluate.K_CANDIDATES,
                    key=lambda k: balanced_accuracy(val["label_idx"].to_numpy(), labels_v, sims_v, k))
        labels_d, sims_d = neighbour_votes(space, splits["train"], train_raw, embed(features["derm7pt"], names_c),
                                           [None] * len(d7_paths))
        d7_bal_acc = balanced_accuracy(d7_labels, labels_d, sims_d, k_val)
        shares = similar.vote(labels_d[:, :k_val], sims_d[:, :k_val])
        from sklearn.metrics import roc_auc_score

        mel = roc_auc_score(d7_labels == CLASSES.index("MEL"), shares[:, CLASSES.index("MEL")])
        cost = sum(ms[n] for n in names_c)
        rows.append({"names": "+".join(names_c), "ms": cost, "gallery_s": cost * GALLERY_IMAGES / 1000 / args.workers,
                     "scores": scores})
        print(f"{rows[-1]['names']:<58} {cost:6.1f} {rows[-1]['gallery_s']:9.0f} "
              f"{scores.mean():8.3f} ± {scores.std():.3f} {min(ks):>4}-{max(ks):<5} {d7_bal_acc:10.3f} {mel:10.3f}")
    best, chosen = choose(rows, args.budget_s)
    print(f"best on val within {args.budget_s:.0f} s: {best['names']} ({best['scores'].mean():.3f}); "
          f"chosen (cheapest within one standard error of it): {chosen['names']} ({chosen['scores'].mean():.3f})")


if __name__ == "__main__":
    main()
