"""`python -m derm similar-gallery`: prepare the similar-case gallery once, or ship it with the weights.

Kept out of derm/cli.py so that the parser stays cheap to import: the models load only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from derm.cli_common import load_predictor

GALLERY_FILE = "similar_gallery.npz"  # derm.retrieval.shipped_gallery's, named here without importing the models
DEFAULT_DIMS = 64  # derm.retrieval.shipped_gallery.ShippedGalleryConfig.dims (tests/test_shipped_gallery.py checks)


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
                                                         similar.tqdm_progress("test split"), predictor)
            print(f"wrote {path} ({Path(path).stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")
            return 0
        gallery = similar.build_gallery(predictor, progress=similar.tqdm_progress("gallery"))
    except DataNotFoundError as exc:
        print(f"derm similar-gallery: {exc}", file=sys.stderr)
        return 2
    print(f"{gallery.description}: {len(gallery)} confirmed cases ready in {time.perf_counter() - start:.0f} s")
    return 0
