#!/usr/bin/env bash
# The validation ablation behind the training defaults: our default policy against the reference write-up's, and the native
# 150x200 input against the reference's 224x224, each ResNet18 with the same short budget and seed
# (6 epochs of 4,000 images). Compare the runs on validation with `python -m derm runs --runs runs/ablation`.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ABLATION_RUNS:-runs/ablation}
python -m derm train classifier --arch resnet18 --epochs 6 --epoch-samples 4000 --runs "$A"
python -m derm train classifier --arch resnet18 --epochs 6 --epoch-samples 4000 --sampling reference --augment reference --runs "$A"
python -m derm train classifier --arch resnet18 --epochs 6 --epoch-samples 4000 --height 224 --width 224 --runs "$A"
python -m derm runs --runs "$A"
