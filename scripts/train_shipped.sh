#!/usr/bin/env bash
# The commands that trained the shipped models (weights/), one after another, then the export that
# builds weights/ from them (every choice made on validation) and the model card. They pick a GPU when
# there is one. The U-Net was trained on one core of a 2-core CPU, from an ImageNet-pretrained
# EfficientNet-Lite0 encoder, on HAM10000's and isic2018_task1's train masks, at 144x192 and then 192x256. Both classifiers were trained on an NVIDIA H200 GPU with the device augmentation and Shades of Gray
# colour constancy (`python scripts/gpu_train.py train --archs resnet18 resnet50 --epochs 30
# --epoch-samples 16384 20480 --seconds 80 170 --augment device --colour shades_of_gray`, then
# `python -m derm train classifier --resume RUN` until their GPU time budget was spent: they stopped after 25
# and 24 of their 30 epochs; see docs/tried.md); the lines below are the same runs, whole. The ResNet18
# slot also averages the classifier of the release before (no colour step, default augmentation), trained on a
# 2-core CPU (54 minutes). On a 2-core CPU the GPU classifiers would take a day or more (1.1M images); the
# U-Net took under two hours. The third slot, ImageNet-pretrained EfficientNet-Lite0s fine-tuned on HAM10000
# train, trains on the CPU: the first in one sitting (60,000 images; under 100 minutes on one core with native
# bf16, both cores on an AVX2 CPU), the second from it in another (100,000 more images, both cores); the
# second took the place of the ResNet50 slot's second network (docs/tried.md).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${DERM_RUNS:-runs}
python -m derm train classifier --arch resnet18 --epochs 30 --batch-size 128 --epoch-samples 16384 \
  --augment device --colour shades_of_gray --run-dir "$R/resnet18"
# the U-Net on the ImageNet-pretrained EfficientNet-Lite0 encoder (about an hour on one core)
python -m derm train segmenter --encoder lite0 --height 144 --width 192 --extra-masks ../shared/isic2018_task1 \
  --sampling balanced --lr 1e-3 --epochs 5 --epoch-samples 6000 --run-dir "$R/unet-144x192"
# then the same U-Net fine-tuned at 192x256 (about 40 minutes on one core)
python -m derm train segmenter --encoder lite0 --height 192 --width 256 --extra-masks ../shared/isic2018_task1 \
  --sampling balanced --lr 3e-4 --epochs 4 --epoch-samples 4000 --init "$R/unet-144x192" --run-dir "$R/unet"
python -m derm train classifier --arch resnet50 --epochs 30 --batch-size 128 --epoch-samples 20480 \
  --augment device --colour shades_of_gray --run-dir "$R/resnet50"
python -m derm train classifier --arch resnet18 --epochs 30 --run-dir "$R/resnet18-plain"
python -m derm train classifier --arch lite0 --epochs 12 --epoch-samples 5000 --lr 1e-3 --augment device \
  --run-dir "$R/lite0"
# its second member: the same network warm-restarted for 100,000 more images on both cores (about 55 minutes
# uncontended; the shipped run started from the first member's fp16 copy, weights/efficientnet.safetensors)
torchrun --standalone --nproc_per_node=2 -m derm train classifier --arch lite0 --epochs 20 --epoch-samples 5000 \
  --lr 5e-4 --augment device --threads 1 --seed 2 --init "$R/lite0" --run-dir "$R/lite0-2"
python -m derm export --resnet18 "$R/resnet18" "$R/resnet18-plain" --resnet50 "$R/resnet50" \
  --efficientnet "$R/lite0" "$R/lite0-2" --unet "$R/unet" --out weights
python -m derm fit-gate --keep-net          # the regression, thresholds and the ImageNet object check
python -m derm similar-gallery --ship       # the shipped similar-case gallery of the retrieval networks
python -m derm similar-eval --out weights/similar.json
python -m derm card
