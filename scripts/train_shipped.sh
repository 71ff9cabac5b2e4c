#!/usr/bin/env bash
# The exact commands that trained the shipped models (weights/), one after another on this 2-core CPU,
# then the export that builds weights/ from them (every choice made on validation) and the model card.
# Models were trained further with warm restarts (--init: the earlier run's best weights, a fresh
# optimiser and one-cycle schedule): the U-Net in two runs, the ResNet50 in three (the last at the
# native 150x200 with sqrt sampling; it started from the shipped fp16 copy of resnet50-b's best
# weights, which this script replaces by the run itself). About 3.8 hours here.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${DERM_RUNS:-runs}
python -m derm train classifier --arch resnet18 --epochs 30 --run-dir "$R/resnet18"
python -m derm train segmenter --epochs 8 --run-dir "$R/unet-a"
python -m derm train segmenter --epochs 5 --lr 5e-4 --init "$R/unet-a" --run-dir "$R/unet"
python -m derm train classifier --arch resnet50 --height 112 --width 150 --sampling balanced --epoch-samples 4000 \
  --epochs 8 --run-dir "$R/resnet50-a"
python -m derm train classifier --arch resnet50 --height 112 --width 150 --sampling balanced --epoch-samples 4000 \
  --epochs 8 --lr 1e-3 --init "$R/resnet50-a" --run-dir "$R/resnet50-b"
python -m derm train classifier --arch resnet50 --epoch-samples 4000 --epochs 30 --lr 1e-3 \
  --init "$R/resnet50-b" --run-dir "$R/resnet50"
python -m derm export --resnet18 "$R/resnet18" --resnet50 "$R/resnet50" --unet "$R/unet" --out weights
python -m derm card
