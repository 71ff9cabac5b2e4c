"""Training throughput of the U-Net on a pretrained EfficientNet-Lite encoder at several input sizes,
against the from-scratch U-Net (width 32) at its shipped 96x128: the bare bf16 + channels_last step.

    python bench/segmenter_speed.py                     # lite0 at 144x192, 192x256, 224x288
    python bench/segmenter_speed.py --encoder lite1 --threads 1

Rounds are interleaved (every configuration once per round) so that a machine that gets busier or
quieter during the run affects all alike. Prints the median images/s and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from derm.models import build_segmenter  # noqa: E402
from derm.train import TrainConfig, loss_fn  # noqa: E402

BASELINE = ("none", (96, 128))


def step_images_per_s(model: torch.nn.Module, optimizer, hw: tuple[int, int], batch: int, steps: int) -> float:
    config = TrainConfig.for_task("segmenter")
    x = torch.randn(batch, 3, *hw).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, *hw) > 0.5).float()
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(config, model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="lite0")
    parser.add_argument("--sizes", nargs="+", default=["144x192", "192x256", "224x288"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setups = [BASELINE] + [(args.encoder, tuple(int(v) for v in s.split("x"))) for s in args.sizes]
    models = {}
    for encoder, _ in setups:
        if encoder not in models:
            model = build_segmenter(encoder=encoder).to(memory_format=torch.channels_last).train()
            models[encoder] = (model, torch.optim.AdamW(model.parameters(), 1e-3))
    for encoder, hw in setups:  # warm-up: the first steps at a new size allocate and pick kernels
        step_images_per_s(*models[encoder], hw, args.batch, 1)
    speeds: dict = {s: [] for s in setups}
    for _ in range(args.rounds):
        for setup in setups:
            speeds[setup].append(step_images_per_s(*models[setup[0]], setup[1], args.batch, args.steps))
    base = statistics.median(speeds[BASELINE])
    print(f"{'encoder':8s} {'input':8s} {'img/s':>7s} {'ratio to from-scratch U-Net at 96x128':>40s}")
    for (encoder, hw), values in speeds.items():
        median = statistics.median(values)
        print(f"{encoder:8s} {hw[0]}x{hw[1]:<5d} {median:7.1f} {median / base:40.2f}")


if __name__ == "__main__":
    main()
