"""Single-image inference on one thread, PyTorch eager (fp32 + channels_last) against ONNX Runtime, for
each classifier architecture the app runs, through the pass the app runs (derm.runtime.Tapped: logits,
pooled features and the maps the gate and Grad-CAM read). Interleaved runs, medians, and the ratio;
the outputs are checked equal first.

    python bench/runtime_speed.py [--runs 12] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from derm.models import build_classifier  # noqa: E402
from derm.runtime import OnnxTapped, Tapped, export_graph  # noqa: E402


def timed(run, x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1, help="images per pass (4: one image's four TTA views)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(args.batch, 3, 150, 200).to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as folder:
        for arch in ("resnet18", "resnet50", "lite0"):
            model = build_classifier(arch).eval().to(memory_format=torch.channels_last)
            eager = Tapped(model)
            graph = OnnxTapped(export_graph(model, (150, 200), Path(folder) / f"{arch}.onnx"), threads=1)
            with torch.no_grad():
                gap = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(eager(x), graph(x)))
                runs = {"torch": eager, "onnx": graph}
                times: dict[str, list[float]] = {name: [] for name in runs}
                for name, run in (*runs.items(), *runs.items()):  # warm-up
                    timed(run, x)
                for _ in range(args.runs):
                    for name, run in runs.items():
                        times[name].append(timed(run, x))
            torch_ms, onnx_ms = (statistics.median(times[n]) * 1e3 for n in ("torch", "onnx"))
            print(f"{arch:9s} torch {torch_ms:6.1f} ms  onnx {onnx_ms:6.1f} ms  onnx/torch {onnx_ms / torch_ms:.2f}  "
                  f"(largest output difference {gap:.1e})")


if __name__ == "__main__":
    main()
