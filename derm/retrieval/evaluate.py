"""How good retrieval is (`python -m derm similar-eval`), and its section of the model card.

Gallery: HAM10000 train. k of the similarity-weighted vote is chosen on HAM10000 val (balanced
accuracy); then on val, test and all of derm7pt: the vote's balanced accuracy and macro AUC (the vote
shares as scores), precision@8 (share of the 8 returned cases with the query's diagnosis), and the
ensemble softmax's balanced accuracy and macro AUC on the same images (present_classes_report: derm7pt
lacks AKIEC, so its averages are over the classes present, as elsewhere on the card).

Near-duplicate threshold: where two errors are equal. One: a photo of a new lesion loses its nearest
real neighbour (the share of val images whose highest similarity to train, always another lesion by
construction of the split, lies above the threshold). Two: an upload of a dataset image under another
name finds itself (the share of the full-size originals in the data folder whose similarity to their
own 200x150 copy in the gallery lies at or below it). Without originals: the 99.5th percentile of the
first. Reported beside it: both shares, and how many same-lesion pairs in val lie above it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from derm import data, external
from derm.classes import CLASSES
from derm.metrics import present_classes_report
from derm.pipeline import Predictor
from derm.retrieval.similar import (REPORT_FILE, Embedded, Gallery, build_gallery, embed_images, retrieval_networks,
                                    similarities, top_k, tqdm_progress, vote, weights_fingerprint)

K_CANDIDATES = (1, 3, 5, 8, 10, 15, 20, 30, 50)
PRECISION_AT = 8
DIFFERENT_LESION_QUANTILE = 0.995
DERM7PT = data.REPO_ROOT.parent / "shared" / "derm7pt"


@dataclass
class EvalSet:
    """Query images with labels and (for HAM10000) lesion ids."""

    name: str
    paths: list[str]
    labels: np.ndarray  # class indices
    lesions: list[str | None] = field(default_factory=list)


def ham_sets(data_dir: str | None, split_path: Path) -> dict[str, EvalSet]:
    table = data.attach_split(data.load_table(data_dir), split_path)
    out = {}
    for split in ("val", "test"):
        rows = table[table["split"] == split]
        out[f"HAM10000 {split}"] = EvalSet(f"HAM10000 {split}", list(rows["image_path"]), rows["label_idx"].to_numpy(),
                                           list(rows["lesion_id"]))
    return out


def derm7pt_set(folder: Path = DERM7PT) -> EvalSet:
    table = external.read_table(folder / "labels.csv")
    paths = [external.find_image(folder / "images", i) for i in table["image_id"]]
    keep = [p is not None for p in paths]
    return EvalSet("derm7pt", [str(p) for p in paths if p is not None],
                   table.loc[keep, "dx"].map(CLASSES.index).to_numpy(), [None] * sum(keep))


def neighbours(gallery: Gallery, queries: np.ndarray, lesions: Iterable[str | None], k: int, threshold: float,
               chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities (Q x k) of each query's k nearest cases, with the page's exclusions."""
    lesion_ids = gallery.table["lesion_id"].to_numpy()
    lesions = list(lesions)
    index, sims_out = [], []
    for start in range(0, len(queries), chunk):
        sims = similarities(gallery, queries[start:start + chunk])
        for row, lesion in zip(sims, lesions[start:start + chunk]):
            drop = row > threshold
            if lesion is not None:
                drop |= lesion_ids == lesion
            best = top_k(row, drop, k)
            index.append(best)
            sims_out.append(row[best])
    return np.array(index), np.array(sims_out)


def nearest_other_lesion(gallery: Gallery, val: Embedded) -> np.ndarray:
    """Each val image's highest similarity to the train gallery (never its own lesion)."""
    return similarities(gallery, val.embeddings).max(axis=1)


def equal_error_threshold(other: np.ndarray, own: np.ndarray) -> float:
    """The threshold where the share of `other` above it equals the share of `own` at or below it."""
    candidates = np.unique(np.concatenate([other, own]))
    gap = [abs((other > t).mean() - (own <= t).mean()) for t in candidates]
    return float(candidates[int(np.argmin(gap))])


def choose_threshold(gallery: Gallery, val: Embedded, val_set: EvalSet, own: np.ndarray | None) -> dict:
    """The near-duplicate threshold (see the module doc), with what it costs either way."""
    other = nearest_other_lesion(gallery, val)
    if own is not None and len(own):
        value = equal_error_threshold(other, own)
        rule = ("equal error: new lesions losing their nearest neighbour (HAM10000 val against train) = "
                "uploads of a dataset original finding themselves")
    else:
        value = float(np.quantile(other, DIFFERENT_LESION_QUANTILE))
        rule = f"{DIFFERENT_LESION_QUANTILE:.1%} quantile of HAM10000 val images' highest similarity to train"
    lesions = pd.Series(val_set.lesions)
    projected = gallery.project(val.embeddings)
    same = []
    for _, idx in lesions.groupby(lesions).groups.items():
        if len(idx) > 1:
            block = projected[list(idx)] @ projected[list(idx)].T
            same += block[np.triu_indices(len(idx), 1)].tolist()
    same_arr = np.array(same)
    return {"value": round(value, 4), "rule": rule,
            "val_losing_nearest_neighbour": round(float((other > value).mean()), 4),
            "different_lesion_top1_median": round(float(np.median(other)), 4),
            "originals_finding_themselves": None if own is None else round(float((own <= value).mean()), 4),
            "same_lesion_pairs": len(same), "same_lesion_pairs_above": int((same_arr > value).sum()),
            "same_lesion_median": round(float(np.median(same_arr)), 4) if len(same) else None}


def original_self_similarity(predictor: Predictor, gallery: Gallery, data_dir: Path,
                             workers: int = 1) -> np.ndarray | None:
    """Each full-size original's similarity to its own 200x150 copy in the gallery (an upload of it)."""
    originals = data_dir / "originals"
    ids = set(gallery.table["image_id"])
    paths = sorted(str(p) for p in originals.glob("*.jpg") if p.stem in ids) if originals.is_dir() else []
    if not paths:
        return None
    embedded = embed_images(predictor, paths, workers=workers)
    rows = gallery.table.reset_index().set_index("image_id").loc[[Path(p).stem for p in paths], "index"].to_numpy()
    return np.einsum("nd,nd->n", gallery.project(embedded.embeddings), gallery.embeddings[rows])


def scores(eval_set: EvalSet, embedded: Embedded, gallery: Gallery, k: int, threshold: float) -> dict:
    idx, sims = neighbours(gallery, embedded.embeddings, eval_set.lesions or [None] * len(eval_set.paths),
                           max(k, PRECISION_AT), threshold)
    labels = gallery.table["label_idx"].to_numpy()[idx]
    knn = present_classes_report(eval_set.labels, vote(labels[:, :k], sims[:, :k]))
    softmax = present_classes_report(eval_set.labels, embedded.probabilities)
    return {"n": len(eval_set.paths),
            "knn": {"balanced_accuracy": knn["balanced_accuracy"], "macro_auc": knn["macro_auc"],
                    f"precision_at_{PRECISION_AT}": float((labels[:, :PRECISION_AT] == eval_set.labels[:, None]).mean())},
            "softmax": {"balanced_accuracy": softmax["balanced_accuracy"], "macro_auc": softmax["macro_auc"]}}


def choose_k(val_set: EvalSet, val: Embedded, gallery: Gallery, threshold: float) -> tuple[int, dict[int, float]]:
    idx, sims = neighbours(gallery, val.embeddings, val_set.lesions, max(K_CANDIDATES), threshold)
    labels = gallery.table["label_idx"].to_numpy()[idx]
    by_k = {k: present_classes_report(val_set.labels, vote(labels[:, :k], sims[:, :k]))["balanced_accuracy"]
            for k in K_CANDIDATES}
    return max(by_k, key=by_k.get), by_k


def evaluate(predictor: Predictor, data_dir: str | None = None, derm7pt: Path = DERM7PT, command: str = "",
             workers: int = 1) -> dict:
    """Everything weights/similar.json holds (see the module doc); images embedded on `workers` processes."""
    source = data.image_source(data_dir)
    if not source.complete:
        raise data.DataNotFoundError("similar-eval needs the full HAM10000 (its train split is the gallery)")
    gallery = build_gallery(predictor, source, progress=tqdm_progress("gallery (HAM10000 train)"), workers=workers)
    sets = {**ham_sets(str(source.path), predictor.weights_dir / "split.csv"), "derm7pt": derm7pt_set(derm7pt)}
    embedded = {name: embed_images(predictor, s.paths, with_probabilities=True, progress=tqdm_progress(name),
                                   workers=workers) for name, s in sets.items()}
    own = original_self_similarity(predictor, gallery, source.path, workers)
    threshold = choose_threshold(gallery, embedded["HAM10000 val"], sets["HAM10000 val"], own)
    threshold["originals_self_similarity"] = None if own is None else {
        "n": len(own), "min": round(float(own.min()), 4), "median": round(float(np.median(own)), 4)}
    k, by_k = choose_k(sets["HAM10000 val"], embedded["HAM10000 val"], gallery, threshold["value"])
    return {"command": command, "weights": weights_fingerprint(predictor.weights_dir),
            "space": gallery.space.id if gallery.space else None,
            "networks": list(retrieval_networks(predictor.manifest)),
            "dimensions": gallery.space.dims if gallery.space else gallery.embeddings.shape[1],
            "code_version": predictor.manifest.get("code_version"), "gallery": {"name": gallery.description,
                                                                                  "n": len(gallery)},
            "k": k, "k_on_val": {str(c): round(v, 4) for c, v in by_k.items()}, "duplicate_threshold": threshold,
            "sets": {name: scores(s, embedded[name], gallery, k, threshold["value"]) for name, s in sets.items()}}


def write(report: dict, out: Path) -> None:
    out.write_text(json.dumps(report, indent=1) + "\n")


def space_words(report: dict) -> str:
    """How the features were compared, in the card's words."""
    if not report.get("space"):
        return "centred on the gallery"
    networks = " and ".join(report.get("networks") or ["the ensemble's networks"])
    return (f"the features of {networks}, centred and reduced to {report['dimensions']} principal "
            "axes fitted on the shipped test split's features without their labels; networks chosen on HAM10000 val "
            "by `python bench/similar_networks.py`")


def card_lines(weights_dir: Path) -> list[str]:
    """The model card's section on similar cases (markdown, at most 20 lines); [] without similar.json."""
    path = Path(weights_dir) / REPORT_FILE
    if not path.is_file():
        return []
    rep = json.loads(path.read_text())
    thr = rep["duplicate_threshold"]
    orig = thr.get("originals_self_similarity")
    lines = ["## Similar confirmed cases", "",
             f"Retrieval with the ensemble's own pooled features ({space_words(rep)}, cosine; gallery: "
             f"{rep['gallery']['name']}, {rep['gallery']['n']} images): the similarity-weighted vote of the k = "
             f"{rep['k']} most similar cases, beside the ensemble's softmax on the same images. k and the centring "
             "were chosen on HAM10000 val, so its k-NN numbers are optimistic; test and derm7pt are not.",
             "",
             "| set | images | k-NN balanced acc. | softmax balanced acc. | k-NN macro AUC | softmax macro AUC | precision@8 |",
             "|---|---|---|---|---|---|---|"]
    for name, s in rep["sets"].items():
        lines.append(f"| {name} | {s['n']} | {s['knn']['balanced_accuracy']:.3f} | {s['softmax']['balanced_accuracy']:.3f} "
                     f"| {s['knn']['macro_auc']:.3f} | {s['softmax']['macro_auc']:.3f} "
                     f"| {s['knn'][f'precision_at_{PRECISION_AT}']:.3f} |")
    found_itself = thr.get("originals_finding_themselves")
    lines += ["",
              f"The query's own lesion is left out, and so is any case more similar than {thr['value']:.3f} (taken for "
              f"the query itself; {thr['rule']}): {thr['val_losing_nearest_neighbour']:.1%} of val images lose their "
              "nearest neighbour to it" + (f", {found_itself:.1%} of {orig['n']} full-size originals uploaded under "
                                          "another name still find their own copy." if orig else "."),
              "", f"Command: `{rep['command']}`", ""]
    return lines
