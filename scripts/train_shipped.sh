#!/usr/bin/env bash
# The exact commands that trained the shipped models (weights/), one after another on this 2-core CPU,
# then the export that builds weights/ from them (every choice made on validation) and the model card.
# The U-Net was trained further with a warm restart (--init: the earlier run's best weights, a fresh
# optimiser and one-cycle schedule). The ResNet50 was trained on a lent NVIDIA H100 in 3 minutes
# (`python scripts/gpu_train.py train --archs resnet50 --seconds 290 --epoch-samples 24576`, then
# `unpack`); the command below is the same run and picks a GPU when there is one. On this CPU it takes
# about 7 hours (737k images at ~30 img/s); the rest about 1.8 hours.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${DERM_RUNS:-runs}
python -m derm train classifier --arch resnet18 --epochs 30 --run-dir "$R/resnet18"
python -m derm train segmenter --epochs 8 --run-dir "$R/unet-a"
python -m derm train segmenter --epochs 5 --lr 5e-4 --init "$R/unet-a" --run-dir "$R/unet"
python -m derm train classifier --arch resnet50 --epochs 30 --batch-size 128 --epoch-samples 24576 \
  --run-dir "$R/resnet50"
python -m derm export --resnet18 "$R/resnet18" --resnet50 "$R/resnet50" --unet "$R/unet" --out weights
python -m derm card
