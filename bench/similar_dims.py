"""Retrieval quality against the size of the embedding: what the shipped gallery's reduction costs.

    python bench/similar_dims.py [--weights weights] [--dims 16 32 64 128] [--gallery test train]

Queries: HAM10000 val (needs the full dataset). Galleries: the test split (what a fresh clone shows) and
the train split (what the app shows with the full dataset). For each number of dimensions, the retrieval
space (derm.retrieval.similar.RetrievalSpace) is fitted on the test split as derm.retrieval.shipped_gallery does, axes and
gallery rounded to fp16 as shipped; "all" is every one of the 5,120 numbers centred on the gallery's own
mean (the embedding before the reduction). Printed per gallery and size: the similarity-weighted vote's
balanced accuracy at its best k and at k = 20, its macro AUC at that k, precision@8, and the share of the
8 nearest cases that the full embedding also returns. Val images are never in either gallery (lesion-grouped split).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import numpy as np  # noqa: E402

from derm import data  # noqa: E402
from derm.metrics import present_classes_report  # noqa: E402
from derm.pipeline import Predictor  # noqa: E402
from derm.retrieval import evaluate, similar  # noqa: E402

SHOWN = 8


def split_rows(predictor: Predictor, split: str):
    table = data.attach_split(data.load_table(data.image_source().path), predictor.weights_dir / "split.csv")
    return table[table["split"] == split].reset_index(drop=True)


def gallery_in(space: similar.RetrievalSpace | None, table, raw: similar.Embedded,
               blocks: tuple[int, ...]) -> similar.Gallery:
    if space is None:  # before the reduction: every number, centred on the gallery's own mean
        space = similar.RetrievalSpace(raw.embeddings.mean(axis=0), blocks)
        return similar.Gallery(table, space.map(raw.embeddings), raw.hashes, "all", space)
    mapped = space.map(raw.embeddings).astype(np.float16).astype(np.float32)
    return similar.Gallery(table, mapped, raw.hashes, f"{space.dims}", space)


def scores(gallery: similar.Gallery, queries: similar.Embedded, labels: np.ndarray, lesions: list[str]) -> dict:
    k_max = max(evaluate.K_CANDIDATES)
    idx, sims = evaluate.neighbours(gallery, queries.embeddings, lesions, k_max, threshold=1.01)
    neighbour_labels = gallery.table["label_idx"].to_numpy()[idx]
    by_k = {k: present_classes_report(labels, similar.vote(neighbour_labels[:, :k], sims[:, :k]))
            for k in evaluate.K_CANDIDATES}
    best = max(by_k, key=lambda k: by_k[k]["balanced_accuracy"])
    return {"best_k": best, "bal_acc_best": by_k[best]["balanced_accuracy"], "bal_acc_k20": by_k[20]["balanced_accuracy"],
            "auc_best": by_k[best]["macro_auc"],
            "p_at_8": float((neighbour_labels[:, :SHOWN] == labels[:, None]).mean()), "top8": idx[:, :SHOWN]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128, 256])
    parser.add_argument("--gallery", nargs="+", choices=["test", "train"], default=["test", "train"])
    args = parser.parse_args()
    predictor = Predictor(args.weights, load_gate=False)
    blocks = similar.blocks_of(predictor)
    embedded = {split: similar.embed_images(predictor, list(split_rows(predictor, split)["image_path"]),
                                            progress=similar.tqdm_progress(split))
                for split in dict.fromkeys(["val", "test", *args.gallery])}
    val = split_rows(predictor, "val")
    labels, lesions = val["label_idx"].to_numpy(), list(val["lesion_id"])
    spaces = {"all": None, **{str(d): similar.RetrievalSpace.fit(embedded["test"].embeddings, blocks, d)
                              for d in args.dims}}
    for split in args.gallery:
        table = split_rows(predictor, split)
        full = None
        print(f"gallery: HAM10000 {split} ({len(table)} images), queries: HAM10000 val ({len(val)})")
        for name, space in spaces.items():
            s = scores(gallery_in(space, table, embedded[split], blocks), embedded["val"], labels, lesions)
            full = s["top8"] if full is None else full
            overlap = np.mean([len(set(a) & set(b)) / SHOWN for a, b in zip(s["top8"], full)])
            print(f"  dims {name:>4s}: k-NN bal_acc {s['bal_acc_best']:.3f} (best k {s['best_k']:2d}), "
                  f"{s['bal_acc_k20']:.3f} at k 20, macro AUC {s['auc_best']:.3f}, p@8 {s['p_at_8']:.3f}, "
                  f"top-8 shared with all {overlap:.1%}")


if __name__ == "__main__":
    main()
