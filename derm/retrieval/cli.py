"""The retrieval commands: `python -m derm similar`, `similar-eval` and `similar-gallery`.

Building their parsers imports nothing heavy (tests/test_cold_start.py checks `--help`): the models,
pandas and the retrieval modules load only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from derm.cli_common import add_image_inputs, images, load_predictor

GALLERY_FILE = "similar_gallery.npz"  # derm.retrieval.shipped_gallery's, named here without importing the models
DEFAULT_DIMS = 64  # derm.retrieval.shipped_gallery.ShippedGalleryConfig.dims (tests/test_shipped_gallery.py checks)


def worker_count(text: str) -> int:
    """--workers: a whole number, at least 1."""
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of processes, not {text!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {workers}")
    return workers


def add_workers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=worker_count, default=None,
                   help="processes that look at the images the first time, one core each (default: one per core)")


def workers_of(args: argparse.Namespace) -> int:
    """--workers, or one per core this process may use."""
    from derm.serving import usable_cores  # it loads the data module: not while the parser is built

    return args.workers or usable_cores()


def add_similar_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similar", help="the most similar confirmed HAM10000 cases for images",
                       description="Prints one row per returned case: query, rank, image_id, dx, dx_type "
                                   "(how the diagnosis was confirmed), similarity (cosine of the ensemble's "
                                   "pooled features). Gallery: HAM10000 train, or the shipped test split "
                                   "without the full dataset (embedded once, then cached). A HAM10000 image's "
                                   "own lesion and near-duplicates of the query are left out. A PATH that is "
                                   "no file but a HAM10000 id (ISIC_0024306.jpg) means that image.")
    add_image_inputs(p)
    p.add_argument("--k", type=int, default=8, help="cases per image (default 8)")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    p.add_argument("--limit", type=int, default=0, help="use at most N gallery images (quick checks)")
    add_workers_option(p)
    p.set_defaults(func=cmd_similar, exit_fast=True)


def cmd_similar(args: argparse.Namespace) -> int:
    import pandas as pd

    from derm.data import DataNotFoundError
    from derm.retrieval import similar

    predictor = load_predictor(args.weights, load_gate=False)  # retrieval never asks the domain gate
    if predictor is None:
        return 2
    try:
        table = similar.ham_table()
        gallery = similar.build_gallery(predictor, limit=args.limit, progress=similar.tqdm_progress("gallery"),
                                        workers=workers_of(args))
    except DataNotFoundError as exc:
        print(f"derm similar: {exc}", file=sys.stderr)
        return 2
    config = similar.SimilarConfig.from_weights(predictor.weights_dir)  # the near-duplicate threshold chosen on val
    paths = [str(similar.resolve_image_path(p, table)) for p in args.paths]
    failed, rows = 0, []
    for given, (path, rgb) in zip(args.paths, images(paths)):
        if rgb is None:
            failed += 1
            continue
        query = similar.query_for(predictor, rgb, lesion_id=similar.lesion_of(table, given))
        cases = similar.search(gallery, query, args.k, config.duplicate_threshold)
        rows.append(cases.drop(columns=["lesion_id", "image_path"]).assign(query=given))
    if rows:
        frame = pd.concat(rows, ignore_index=True)[["query", "rank", "image_id", "dx", "dx_type", "similarity"]]
        print(frame.to_csv(index=False) if args.format == "csv" else frame.to_string(index=False),
              end="" if args.format == "csv" else "\n")
    return 1 if failed else 0


def add_similar_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similar-eval", help="measure retrieval against the softmax (writes weights/similar.json)",
                       description="Gallery: HAM10000 train. Chooses k on val and the near-duplicate threshold "
                                   "on val, then scores the k-NN vote and the ensemble's softmax on HAM10000 "
                                   "val, test and derm7pt. Needs the full dataset.")
    p.add_argument("--weights", help="weights folder (default weights/ or $DERM_WEIGHTS)")
    p.add_argument("--data", help="HAM10000 folder (default: the usual lookup, docs/data.md)")
    p.add_argument("--derm7pt", help="derm7pt folder (default ../shared/derm7pt)")
    p.add_argument("--out", default="weights/similar.json")
    add_workers_option(p)
    p.set_defaults(func=cmd_similar_eval)


def cmd_similar_eval(args: argparse.Namespace) -> int:
    from derm.data import DataNotFoundError
    from derm.retrieval import evaluate

    predictor = load_predictor(args.weights)
    if predictor is None:
        return 2
    command = "python -m derm " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m derm similar-eval"
    try:
        report = evaluate.evaluate(predictor, args.data, Path(args.derm7pt) if args.derm7pt else evaluate.DERM7PT,
                                   command, workers_of(args))
    except (DataNotFoundError, FileNotFoundError) as exc:
        print(f"derm similar-eval: {exc}", file=sys.stderr)
        return 2
    evaluate.write(report, Path(args.out))
    print(f"k={report['k']} duplicate_threshold={report['duplicate_threshold']['value']}")
    for name, s in report["sets"].items():
        print(f"{name:14s} n={s['n']} knn bal_acc={s['knn']['balanced_accuracy']:.3f} "
              f"auc={s['knn']['macro_auc']:.3f} p@8={s['knn']['precision_at_8']:.3f} | softmax "
              f"bal_acc={s['softmax']['balanced_accuracy']:.3f} auc={s['softmax']['macro_auc']:.3f}")
    print(f"wrote {args.out}")
    return 0


def add_similar_gallery_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similar-gallery", help="prepare the similar-case gallery once (or ship it with the weights)",
                       description="Embeds the gallery that `similar` and the app use here once, with a progress bar, "
                                   "and says how long it took: HAM10000 train with the full dataset; without it the "
                                   f"test split, whose gallery ships in WEIGHTS/{GALLERY_FILE}. With --ship: "
                                   f"(re)writes WEIGHTS/{GALLERY_FILE} for the weights there (the test split's cases "
                                   "in the retrieval space of --dims principal axes); needed after a retrieval "
                                   "network changes.")
    p.add_argument("--weights", help="weights folder (default weights/ or $DERM_WEIGHTS)")
    p.add_argument("--ship", action="store_true", help=f"write WEIGHTS/{GALLERY_FILE}")
    p.add_argument("--dims", type=int, default=DEFAULT_DIMS,
                   help=f"with --ship: principal axes kept (default {DEFAULT_DIMS})")
    add_workers_option(p)
    p.set_defaults(func=cmd_similar_gallery)


def cmd_similar_gallery(args: argparse.Namespace) -> int:
    from derm.data import DataNotFoundError
    from derm.retrieval import shipped_gallery, similar

    if args.dims < 1:
        print("derm similar-gallery: --dims must be at least 1", file=sys.stderr)
        return 2
    predictor = load_predictor(args.weights, load_gate=False)
    if predictor is None:
        return 2
    start = time.perf_counter()
    try:
        if args.ship:
            config = shipped_gallery.ShippedGalleryConfig(dims=args.dims)
            path = shipped_gallery.build_shipped_gallery(predictor.weights_dir, config,
                                                         similar.tqdm_progress("test split"), predictor,
                                                         workers_of(args))
            print(f"wrote {path} ({Path(path).stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")
            return 0
        gallery = similar.build_gallery(predictor, progress=similar.tqdm_progress("gallery"), workers=workers_of(args))
    except DataNotFoundError as exc:
        print(f"derm similar-gallery: {exc}", file=sys.stderr)
        return 2
    print(f"{gallery.description}: {len(gallery)} confirmed cases ready in {time.perf_counter() - start:.0f} s")
    return 0
