"""Time to a full Diagnose-page result for a 600x450 upload, once the models are loaded.

    python bench/app_latency.py [--weights weights] [--images 20] [--compare OTHER_WEIGHTS]

One result = decode the upload + ensemble (every member network, with the manifest's TTA) + U-Net mask
+ lesion measurements + warnings + domain gate + Grad-CAM for the top class + the similar confirmed
cases (the embedding from the classification's own pass, one matrix product over the gallery: HAM10000
train, or the shipped test split; built or read from the cache before timing). Prints retrieval's share. Measured with bf16
autocast + channels_last and with plain fp32, interleaved image by image (the app uses bf16 only on
CPUs with native bf16, derm.precision); prints medians, the ratio and the domain gate's share.
--compare times another weights folder (e.g. the previous release) interleaved with these, in the
precision the app uses here, and prints the ratio of the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import torch  # noqa: E402

from derm import similar  # noqa: E402
from derm.data import resolve_data_dir  # noqa: E402
from derm.imageio import load_image  # noqa: E402
from derm.pipeline import Predictor  # noqa: E402
from derm.precision import cpu_has_fast_bf16  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app uses 1, see app_components)")
    parser.add_argument("--compare", default=None, help="another weights folder, timed interleaved with --weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uploads = [p.read_bytes() for p in sorted((resolve_data_dir() / "originals").glob("*.jpg"))[:args.images]]
    predictors = {"bf16": Predictor(args.weights, bf16=True), "fp32": Predictor(args.weights, bf16=False)}
    if args.compare:
        predictors["compare"] = Predictor(args.compare, bf16=cpu_has_fast_bf16())
    galleries = {name: similar.build_gallery(p, progress=similar.tqdm_progress("gallery")) for name, p in predictors.items()}
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
    app = "bf16" if cpu_has_fast_bf16() else "fp32"
    print(f"fp32 / bf16 total time: {medians['fp32']['total'] / medians['bf16']['total']:.2f}x "
          f"(the app uses {app} on this CPU: derm.precision)")
    if args.compare:
        print(f"{args.weights or 'weights'} / {args.compare} total time, {app}: "
              f"{medians[app]['total'] / medians['compare']['total']:.2f}x")
    for name, m in medians.items():
        print(f"{name}: the domain gate is {m['gate'] / m['total']:.1%} of the total "
              f"(a full result takes {m['total'] / (m['total'] - m['gate']):.3f}x as long as without it)")
    for name, m in medians.items():
        print(f"{name}: the similar cases are {m['similar'] / m['total']:.1%} of the total "
              f"({m['similar'] * 1000:.1f} ms over {len(galleries[name])} gallery images)")


if __name__ == "__main__":
    main()
