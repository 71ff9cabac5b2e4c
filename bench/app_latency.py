"""Time to a full Diagnose-page result for a 600x450 upload, once the models are loaded.

    python bench/app_latency.py [--weights weights] [--images 20] [--precision auto|fp32|bf16|both]
                                [--compare OTHER_WEIGHTS]

One result = decode the upload + ensemble (every member network, with the manifest's TTA) + U-Net mask
+ lesion measurements + warnings + domain gate + Grad-CAM for the top class + the similar confirmed
cases (the embedding from the classification's own pass, one matrix product over the gallery: HAM10000
train, or the shipped test split; built or read once, before timing, and shared by every precision).
Prints retrieval's share. By default only what the app uses on this CPU is timed: bf16 autocast +
channels_last where bf16 is native, plain fp32 elsewhere (derm.precision); --precision both also times
the other one where bf16 is native, interleaved image by image, and prints their ratio (bf16 is never
timed where it is emulated: there it is ~5x slower and the app never uses it). Where bf16 is not native
the networks run through ONNX Runtime, as in the app (derm.runtime; DERM_RUNTIME=torch times PyTorch). Prints medians, one line
per precision (`<precision>: ... total N ms`) and the domain gate's share. --compare times another
weights folder (e.g. the previous release) interleaved with these, in the first precision timed, and
prints the ratio of the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import torch  # noqa: E402

from derm.retrieval import similar  # noqa: E402
from derm import data  # noqa: E402
from derm.data import resolve_data_dir  # noqa: E402
from derm.imageio import load_image  # noqa: E402
from derm.pipeline import Predictor  # noqa: E402
from derm.precision import cpu_has_fast_bf16  # noqa: E402
from derm.runtime import RUNTIME_ENV  # noqa: E402


def full_result(predictor: Predictor, payload: bytes, gallery: similar.Gallery,
                config: similar.SimilarConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    rgb = load_image(payload)
    t1 = time.perf_counter()
    result = predictor.analyse(rgb)
    t2 = time.perf_counter()
    predictor.gradcam(rgb, result.label)
    t3 = time.perf_counter()
    similar.find_similar(gallery, similar.query_for(predictor, rgb, result.features), config)
    t4 = time.perf_counter()
    return {"decode": t1 - t0, "analyse": t2 - t1, "gate": result.seconds.get("gate", 0.0), "gradcam": t3 - t2,
            "similar": t4 - t3, "total": t4 - t0}


def precisions(asked: str, app: str) -> list[str]:
    """The precisions to time: the app's own unless asked otherwise; never an emulated bf16."""
    if asked == "auto":
        return [app]
    wanted = ["bf16", "fp32"] if asked == "both" else [asked]
    if "bf16" in wanted and app != "bf16":
        sys.exit("bench/app_latency.py: bf16 is emulated on this CPU (about 5x slower than fp32; the app uses "
                 "fp32 here): time fp32, the default")
    return wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app uses 1, see app_components)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "both"], default="auto",
                        help="auto: what the app uses on this CPU (bf16 where native, else fp32); both: bf16 and "
                             "fp32 where bf16 is native")
    parser.add_argument("--compare", default=None, help="another weights folder, timed interleaved with --weights")
    parser.add_argument("--gallery", choices=["auto", "test"], default="auto",
                        help="auto: the app's (HAM10000 train with the full dataset, embedded once and cached); test: "
                             "the shipped test split's, as on a fresh clone (the search differs by one matrix product)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    app = "bf16" if cpu_has_fast_bf16() else "fp32"
    timed = precisions(args.precision, app)
    uploads = [p.read_bytes() for p in sorted((resolve_data_dir() / "originals").glob("*.jpg"))[:args.images]]
    predictors = {name: Predictor(args.weights, bf16=name == "bf16") for name in timed}
    if args.compare:
        predictors["compare"] = Predictor(args.compare, bf16=timed[0] == "bf16")
    source = data.ImageSource(data.TEST_SUBSET_DIR, complete=False) if args.gallery == "test" else None
    shared = similar.build_gallery(predictors[timed[0]], source, progress=similar.tqdm_progress("gallery"))  # once
    galleries = {name: shared for name in timed}
    if args.compare:
        galleries["compare"] = similar.build_gallery(predictors["compare"], source,
                                                     progress=similar.tqdm_progress("gallery"))
    configs = {name: similar.SimilarConfig.from_weights(p.weights_dir) for name, p in predictors.items()}
    for name, predictor in predictors.items():  # warm-up
        full_result(predictor, uploads[0], galleries[name], configs[name])
    times: dict[str, list[dict[str, float]]] = {name: [] for name in predictors}
    for payload in uploads:
        for name, predictor in predictors.items():
            times[name].append(full_result(predictor, payload, galleries[name], configs[name]))
    medians = {}
    for name, records in times.items():
        medians[name] = {k: statistics.median(r[k] for r in records) for k in records[0]}
        print(f"{name}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in medians[name].items()))
    if len(timed) == 2:
        print(f"fp32 / bf16 total time: {medians['fp32']['total'] / medians['bf16']['total']:.2f}x "
              f"(the app uses {app} on this CPU: derm.precision)")
    else:
        print(f"the app uses {app} on this CPU (derm.precision): only {app} was timed")
    for name, predictor in predictors.items():
        onnx = any(c.onnx is not None for c in predictor.classifiers.values())
        print(f"{name}: the networks ran through {'ONNX Runtime' if onnx else 'PyTorch'} (derm.runtime; "
              f"{RUNTIME_ENV}=torch or =onnx chooses)")
    if args.compare:
        print(f"{args.weights or 'weights'} / {args.compare} total time, {timed[0]}: "
              f"{medians[timed[0]]['total'] / medians['compare']['total']:.2f}x")
    for name, m in medians.items():
        print(f"{name}: the domain gate is {m['gate'] / m['total']:.1%} of the total "
              f"(a full result takes {m['total'] / (m['total'] - m['gate']):.3f}x as long as without it)")
    for name, m in medians.items():
        print(f"{name}: the similar cases are {m['similar'] / m['total']:.1%} of the total "
              f"({m['similar'] * 1000:.1f} ms over {len(galleries[name])} gallery images)")


if __name__ == "__main__":
    main()
