"""Train classifiers on a remote GPU inside a fixed time budget, and bring the weights back.

For a GPU machine that can be used for minutes, not hours, and that returns little data (files of at
most 16 MiB, 64 MiB in all). So this script (1) measures each model's training speed there with a short
probe through the real training loop, (2) sizes the one-cycle schedule so the run ends inside its share of the budget, and
(3) packs the best checkpoints as fp16, byte-shuffled and zlib-compressed, in chunks under 16 MiB.
`unpack` turns the chunks back into ordinary run folders under runs/, which `python -m derm export`
takes like any other run.

    python scripts/gpu_train.py train --out OUT --archs resnet18 resnet50 --seconds 150 270
    python scripts/gpu_train.py train --out OUT --task segmenter --archs unet --seconds 400 \
        --epoch-samples 4096 --height 144 --width 192 --extra-masks ISIC2018_TASK1 --sampling balanced
    python scripts/gpu_train.py train --out OUT --teach --archs lite0 resnet18 resnet50 --seconds 170 150 240 \
        --augment device --lr 1e-3 1e-3 3e-4 --init none weights/resnet18.safetensors weights/resnet50.safetensors \
        --distill-alpha 0.9 0.9 0.7 --unlabelled data/isic2018
    python scripts/gpu_train.py unpack --src OUT --runs runs

With --teach, the EfficientNet-Lite archs (listed first) train first and teach every arch after them:
a teacher and its students in one call, as one stay on the machine may be all there is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from derm import runs, weights
from derm.models import TEACHER_ARCHS
from derm.train import StopFlag, TrainConfig, save_checkpoint, train

CHUNK_BYTES = 15 * 2**20  # under the 16 MiB a file may have on its way back from the GPU machine
RETURN_BYTES = 64 * 2**20  # what may come back from the GPU machine in all
SECONDS_PER_EPOCH_OVERHEAD = 3.0  # validation and checkpoint writes, which the probe's speed leaves out


def probe_speed(config: TrainConfig, root: Path, images: int) -> float:
    """Images per second through the real loop, read from the second of two short epochs: the first
    pays for cuDNN's autotuning and lazy initialisation (on an H100 it read 10x too slow)."""
    probe = dataclasses.replace(config, epochs=2, epoch_samples=images)
    run_dir = train(probe, root / f"probe-{config.arch}", progress=False)
    return runs.read_metrics(run_dir)[-1]["images_per_s"]


def sized_config(config: TrainConfig, images_per_s: float, seconds: float) -> TrainConfig:
    """The config with epoch_samples chosen so `epochs` epochs fit in `seconds`."""
    train_seconds = max(seconds - config.epochs * SECONDS_PER_EPOCH_OVERHEAD, 10.0)
    per_epoch = int(images_per_s * train_seconds / config.epochs) // config.batch_size * config.batch_size
    return dataclasses.replace(config, epoch_samples=max(per_epoch, config.batch_size))


def train_within(config: TrainConfig, run_dir: Path, seconds: float) -> Path:
    """Train; if the estimate was wrong, stop cleanly at the deadline (best.pt holds the best epoch)."""
    stop = StopFlag()
    timer = threading.Timer(seconds, lambda: setattr(stop, "requested", True))
    timer.start()
    try:
        return train(config, run_dir, stop=stop, progress=True)
    finally:
        timer.cancel()


def shuffle_bytes(raw: bytes) -> bytes:
    """fp16 high bytes together, then low bytes: the exponents compress, the mantissas barely do."""
    arr = np.frombuffer(raw + b"\0" * (len(raw) % 2), dtype=np.uint8)
    return np.ascontiguousarray(arr.reshape(-1, 2).T).tobytes()


def unshuffle_bytes(data: bytes, length: int) -> bytes:
    arr = np.frombuffer(data, dtype=np.uint8)
    return np.ascontiguousarray(arr.reshape(2, -1).T).tobytes()[:length]


def pack(run_dirs: list[Path], out: Path) -> None:
    """meta.json (each run's config, metrics, status) and pack.NNN chunks of the best weights."""
    blobs, meta = [], {"runs": []}
    for run_dir in run_dirs:
        state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
        blob = save_safetensors(weights.to_fp16(state["model"]))
        blobs.append(blob)
        meta["runs"].append({"name": run_dir.name, "bytes": len(blob), "best_epoch": state["best_epoch"],
                             "best_score": state["best_score"], "epoch": state["epoch"],
                             "config": runs.read_json(run_dir / "config.json"),
                             "metrics": runs.read_metrics(run_dir), "status": runs.read_status(run_dir)})
    raw = b"".join(blobs)
    packed = zlib.compress(shuffle_bytes(raw), 6)
    meta["raw_bytes"] = len(raw)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("pack.[0-9][0-9][0-9]"):
        stale.unlink()
    for i in range(0, len(packed), CHUNK_BYTES):
        (out / f"pack.{i // CHUNK_BYTES:03d}").write_bytes(packed[i:i + CHUNK_BYTES])
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"packed {len(raw) / 1e6:.1f} MB of weights into {len(packed) / 1e6:.1f} MB", flush=True)
    if len(packed) > RETURN_BYTES:
        print(f"warning: {len(packed) / 2**20:.1f} MiB is more than the {RETURN_BYTES // 2**20} MiB that can come "
              "back: train fewer runs per call", flush=True)


def with_local_teachers(config: dict, local: dict[str, Path]) -> dict:
    """The run's config with each teacher that travelled in the same pack named by its rebuilt folder
    here, so that export finds the teachers (a teacher left behind keeps its path on the GPU machine)."""
    if not config.get("teacher"):
        return config
    return {**config, "teacher": [str(local.get(Path(t).name, t)) for t in config["teacher"]]}


def unpack(src: Path, runs_root: Path) -> list[Path]:
    """Rebuild each packed run as a run folder with config.json, metrics.jsonl, status.json and best.pt."""
    meta = json.loads((src / "meta.json").read_text())
    local = {entry["name"]: runs_root / entry["name"] for entry in meta["runs"]}
    packed = b"".join(p.read_bytes() for p in sorted(src.glob("pack.[0-9][0-9][0-9]")))
    raw = unshuffle_bytes(zlib.decompress(packed), meta["raw_bytes"])
    made, offset = [], 0
    for entry in meta["runs"]:
        model = weights.to_fp32(load_safetensors(raw[offset:offset + entry["bytes"]]))
        offset += entry["bytes"]
        run_dir = runs_root / entry["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        config = with_local_teachers(entry["config"], local)
        runs.write_json_atomic(run_dir / "config.json", config)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        for record in entry["metrics"]:
            runs.append_metrics(run_dir, record)
        runs.write_json_atomic(run_dir / "status.json", {**entry["status"], "pid": None})
        save_checkpoint(run_dir / "best.pt", model=model, epoch=entry["epoch"], best_score=entry["best_score"],
                        best_epoch=entry["best_epoch"], config=config)
        made.append(run_dir)
        print(f"{run_dir}: best epoch {entry['best_epoch']}, val score {entry['best_score']:.4f}")
    return made


PER_ARCH = ("seconds", "epoch_samples", "lr", "init", "distill_alpha")  # options taking one value or one per arch


def per_arch(values: list | None, i: int):
    """The i-th arch's value of an option given once for all archs or once per arch."""
    if values is None:
        return None
    return values[i] if len(values) > 1 else values[0]


def per_arch_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the per-arch options and --teach (nothing when all is well)."""
    n = len(args.archs)
    problems = [f"--{name.replace('_', '-')} takes one value or one per arch ({n})"
                for name in PER_ARCH if getattr(args, name) is not None and len(getattr(args, name)) not in (1, n)]
    if args.teach:
        lites = [arch in TEACHER_ARCHS for arch in args.archs]
        if args.teacher:
            problems.append("--teach trains its own teachers: leave out --teacher")
        if not any(lites) or all(lites) or lites != sorted(lites, reverse=True):
            problems.append(f"--teach needs teachers ({', '.join(TEACHER_ARCHS)}) first, then their students")
    return problems


def config_from_args(args: argparse.Namespace, arch: str, i: int = 0, teachers: Sequence[Path] = ()) -> TrainConfig:
    """The i-th arch's run config: the task's defaults (derm.train.TrainConfig.for_task) where an option is
    left out. With --teach, a teacher arch learns from the labels alone and any other from `teachers`."""
    teacher, unlabelled = args.teacher, args.unlabelled
    if args.teach:
        teacher = [str(t) for t in teachers] if arch not in TEACHER_ARCHS else None
        unlabelled = args.unlabelled if teacher else None
    init = per_arch(args.init, i)
    config = TrainConfig.for_task(args.task, arch, epochs=args.epochs, batch_size=args.batch_size,
                                  lr=per_arch(args.lr, i), augment=args.augment, colour=args.colour,
                                  limit=args.limit, height=args.height, width=args.width, sampling=args.sampling,
                                  extra_masks=args.extra_masks, seed=args.seed, encoder=args.encoder,
                                  teacher=teacher, unlabelled=unlabelled, init=None if init == "none" else init,
                                  distill_temperature=args.distill_temperature,
                                  distill_alpha=per_arch(args.distill_alpha, i))
    config.validate()
    return config


def run_name(config: TrainConfig, stamp: str) -> str:
    """Runs started together differ by recipe, input size (segmenter) or seed, so their names must too."""
    recipe = "".join(f"-{v}" for v in (config.augment, config.colour) if v not in ("full", "none"))
    recipe += f"-{config.encoder}" if config.encoder != "none" else ""
    recipe += f"-{config.height}x{config.width}" if config.task == "segmenter" else ""
    recipe += "-kd" if config.teacher else ""
    recipe += f"-seed{config.seed}" if config.seed else ""
    return f"{stamp}-{config.arch}-{config.epochs}x{config.epoch_samples}{recipe}-gpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--runs", type=Path, default=Path("/tmp/derm-runs"))
    t.add_argument("--task", default="classifier", choices=["classifier", "segmenter"])
    t.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"], help="for the segmenter: unet")
    t.add_argument("--seconds", nargs="+", type=float, default=[150, 270],
                   help="budget per arch (or one for all), probe included")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", nargs="+", type=float, default=[2e-3], help="one for all archs, or one per arch")
    t.add_argument("--height", type=int, default=None, help="input height (default: the task's)")
    t.add_argument("--width", type=int, default=None)
    t.add_argument("--sampling", default=None, help="default: the task's (classifier sqrt, segmenter natural)")
    t.add_argument("--extra-masks", default=None, help="segmenter: a second mask source (isic2018_task1 layout)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--encoder", default="none", help="segmenter: none, or an ImageNet-pretrained lite0|lite1|lite2")
    t.add_argument("--probe-images", type=int, default=3072)
    t.add_argument("--epoch-samples", nargs="+", type=int, default=None,
                   help="images per epoch (one for all archs, or one per arch), instead of sizing them from a probe")
    t.add_argument("--augment", default=None,
                   help="a policy in derm.augment.POLICIES, e.g. device (other cameras); default: the task's")
    t.add_argument("--colour", default="none", help="colour constancy: a name in derm.colour.METHODS")
    t.add_argument("--limit", type=int, default=0)
    t.add_argument("--teacher", nargs="+", default=None, help="classifier: teacher run folders on this machine")
    t.add_argument("--teach", action="store_true",
                   help="train the EfficientNet-Lite archs (listed first) first; they teach the archs after them")
    t.add_argument("--unlabelled", default=None, help="with --teacher: unlabelled images (isic2018_task1 layout)")
    t.add_argument("--distill-temperature", type=float, default=4.0, help="with --teacher: softmax temperature")
    t.add_argument("--distill-alpha", nargs="+", type=float, default=[0.9],
                   help="with a teacher: weight of the teachers' answers (one for all archs, or one per arch)")
    t.add_argument("--init", nargs="+", default=None,
                   help="warm start from this run folder or shipped weights file (one per arch; none: from scratch)")
    u = sub.add_parser("unpack")
    u.add_argument("--src", type=Path, required=True)
    u.add_argument("--runs", type=Path, default=Path("runs"))
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.command == "unpack":
        unpack(args.src, args.runs)
        return
    if problems := per_arch_problems(args):
        parser.error("; ".join(problems))
    torch.backends.cudnn.benchmark = True
    stamp = time.strftime("%Y%m%d-%H%M%S")
    done, teachers = [], []
    for i, arch in enumerate(args.archs):
        started, seconds = time.monotonic(), per_arch(args.seconds, i)
        config = config_from_args(args, arch, i, teachers)
        if args.epoch_samples:
            config = dataclasses.replace(config, epoch_samples=per_arch(args.epoch_samples, i))
        else:
            config = sized_config(config, probe_speed(config, args.runs, args.probe_images), seconds)
        left = seconds - (time.monotonic() - started)
        print(f"{arch}: {config.epochs} epochs x {config.epoch_samples} images, deadline "
              f"in {left:.0f} s", flush=True)
        run_dir = train_within(config, args.runs / run_name(config, stamp), left) if left > 0 else None
        if run_dir is None or not (run_dir / "best.pt").is_file():
            print(f"{arch}: out of time before its first epoch ended (give it more --seconds); nothing "
                  "to bring back", flush=True)
            if args.teach and arch in TEACHER_ARCHS:
                break  # its students would have no teacher
            continue
        done.append(run_dir)
        if args.teach and arch in TEACHER_ARCHS:
            teachers.append(run_dir)
        pack(done, args.out)  # after each model, so a later failure still brings the earlier ones back


if __name__ == "__main__":
    main()
