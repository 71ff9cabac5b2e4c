#!/bin/bash
# Several trainings side by side on one GPU: the recipes of the 2026-11-27 runs on an NVIDIA H200,
# two Shades of Gray ResNet18s and two U-Nets at 144x192. First, where the data is:
#   python scripts/gpu_data.py --mask-size 144 192 --extra-masks ../shared/isic2018_task1
# then, on the GPU machine, in a checkout holding data/gpu_data.tgz: `bash scripts/gpu_parallel.sh`.
# Each run stops cleanly at T seconds (best.pt kept); its packed weights are written under
# $OUT/<name>/ (OUT defaults to /tmp/gpu-out). Copy them back, then:
#   python scripts/gpu_train.py unpack --src OUT/<name> --runs runs
tar xzf data/gpu_data.tgz && rm data/gpu_data.tgz || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1 DERM_CACHE=/tmp/cc
R=/tmp/derm-runs; P=/tmp/packs; L=/tmp/logs; mkdir -p $R $P $L
T=${T:-470}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
G="python3 scripts/gpu_train.py train --runs $R --seconds $T --epochs 30"
$G --out $P/r18full --archs resnet18 --epoch-samples 16384 --colour shades_of_gray --augment full > $L/r18full.log 2>&1 &
$G --out $P/r18dev1 --archs resnet18 --epoch-samples 16384 --colour shades_of_gray --augment device --seed 1 > $L/r18dev1.log 2>&1 &
U="--task segmenter --archs unet --epoch-samples 4096 --batch-size 32 --height 144 --width 192 --extra-masks data/isic2018 --sampling balanced"
$G --out $P/unetgeo $U > $L/unetgeo.log 2>&1 &
$G --out $P/unetdev $U --augment device > $L/unetdev.log 2>&1 &
wait
for f in $L/*.log; do tr '\r' '\n' < "$f" | grep -v "batch/s\]\|img/s\]" | tail -n 40 > "$OUT/$(basename "$f")"; done
for d in $P/*/; do
    name=$(basename "$d"); mkdir -p "$OUT/$name"; cp "$d"meta.json "$OUT/$name/"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs'][0]; print(sys.argv[2], r['name'], 'best epoch', r['best_epoch'], round(r['best_score'], 4))" "$d"meta.json "$name"
done
for d in $P/*/; do cp "$d"pack.* "$OUT/$(basename "$d")/" 2>/dev/null; done
du -sh "$OUT"
