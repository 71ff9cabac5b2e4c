#!/usr/bin/env bash
# The exact commands that trained the shipped models (weights/), one after another on this 2-core CPU.
# Each writes runs/<id>/; then `python -m derm export` builds weights/ from the three best runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m derm train classifier --arch resnet18 --epochs 16
python -m derm train segmenter --epochs 8
python -m derm train classifier --arch resnet50 --height 112 --width 150 --sampling balanced --epoch-samples 4000 --epochs 8
