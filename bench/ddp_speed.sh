#!/usr/bin/env bash
# Images/s of one training epoch (ResNet18, 150x200, 512 images, global batch 64) with 1 process
# and with 2 torchrun processes on this machine; each run's metrics.jsonl records images_per_s.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
args=(train classifier --epochs 1 --limit 512 --batch-size 64 --split weights/split.csv)
python -m derm "${args[@]}" --run-dir "$out/one" > /dev/null 2>&1
python -m torch.distributed.run --standalone --nproc_per_node=2 -m derm "${args[@]}" --run-dir "$out/two" > /dev/null 2>&1
python - "$out" <<'PY'
import json, sys
from pathlib import Path
rates = {n: json.loads((Path(sys.argv[1]) / n / "metrics.jsonl").read_text().splitlines()[0])["images_per_s"]
         for n in ("one", "two")}
print(f"1 process: {rates['one']:.1f} img/s; 2 processes: {rates['two']:.1f} img/s; ratio {rates['two'] / rates['one']:.2f}")
PY
