"""Single-image inference on one thread, fp32 + channels_last against bf16 autocast, for each classifier
architecture the app runs: what `derm/precision.py` decides by. Interleaved runs, medians, and the ratio.

    python bench/precision_speed.py [--runs 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from derm.models import build_classifier  # noqa: E402
from derm.precision import cpu_has_fast_bf16  # noqa: E402


def time_once(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"AMX tiles: {torch.cpu._is_amx_tile_supported()}, AVX512-BF16: {torch.cpu._is_avx512_bf16_supported()}; "
          f"derm uses {'bf16' if cpu_has_fast_bf16() else 'fp32'}")
    x = torch.randn(1, 3, 150, 200).to(memory_format=torch.channels_last)
    for arch in ("resnet18", "resnet50", "lite0"):
        model = build_classifier(arch).eval().to(memory_format=torch.channels_last)
        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True, False, True):  # warm-up: oneDNN picks its kernels on the first calls
            time_once(model, x, bf16)
        for _ in range(args.runs):
            for bf16 in (False, True):
                times[bf16].append(time_once(model, x, bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"{arch:9s} fp32 {fp32 * 1e3:6.1f} ms  bf16 {bf16 * 1e3:6.1f} ms  bf16/fp32 {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
