"""Training throughput: our ResNet18 pipeline vs a reference-style loop vs the bare model step.

    python bench/train_speed.py            # ~3 minutes on 2 cores

ours       uint8 cache in memory -> batched tensor augmentation -> bf16 autocast + channels_last step
bare step  the same step on pre-made tensors (no data work at all): the ceiling for ours
reference  torch Dataset opening each JPEG with PIL + per-item torchvision transforms (flips,
           rotation, colour jitter, resize to 224x224 as the reference write-up did), fp32,
           DataLoader with 2 workers

Measurements are interleaved (ours, bare, reference, ours, ...) so that a machine that gets busier
or quieter during the run affects all three alike. Prints images/s and the ratios, ratio last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

from derm import data  # noqa: E402
from derm.train import SplitData, TrainConfig, loss_fn, make_batch  # noqa: E402
from derm.models import build_classifier  # noqa: E402


class ReferenceDataset(Dataset):
    """The plain way: PIL open + torchvision transforms per item."""

    def __init__(self, paths: list[str], labels: list[int]):
        self.paths, self.labels = paths, labels
        self.transform = T.Compose([
            T.Resize((224, 224)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(20),
            T.ColorJitter(brightness=0.1, contrast=0.1, hue=0.1), T.ToTensor(),
            T.Normalize([0.763, 0.546, 0.570], [0.142, 0.153, 0.170])])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def step(model, optimizer, config, x, y, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = loss_fn(config, logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_ours(model, optimizer, config, split, norm, steps, batch, gen) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(split.labels), (batch,), generator=gen)
        x, y = make_batch(split, idx, config, norm, train=True, gen=gen)
        step(model, optimizer, config, x, y, bf16=True)
    return steps * batch / (time.perf_counter() - start)


def time_bare(model, optimizer, config, x, y, steps) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, config, x, y, bf16=True)
    return steps * len(y) / (time.perf_counter() - start)


def time_reference(model, optimizer, config, loader, steps) -> float:
    batches = iter(loader)
    x, y = next(batches)  # worker start-up is not counted
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, config, x, y, bf16=False)
        x, y = next(batches)
    return steps * len(y) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    config = TrainConfig.for_task("classifier", "resnet18", batch_size=args.batch)
    table = data.attach_split(data.load_table(), data.REPO_ROOT / config.split)
    train_part = table[table["split"] == "train"].sample(n=1024, random_state=0)
    images = data.cached_array(list(train_part["image_path"]), (config.height, config.width), "image")
    split = SplitData(torch.from_numpy(images.copy()), torch.tensor(train_part["label_idx"].values), None, [])
    norm = data.Normalization((0.763, 0.546, 0.570), (0.142, 0.153, 0.170))
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(ReferenceDataset(list(train_part["image_path"]) * 4, list(train_part["label_idx"]) * 4),
                        batch_size=args.batch, shuffle=True, num_workers=2, persistent_workers=True)
    x_bare, y_bare = make_batch(split, torch.arange(args.batch), config, norm, train=False)

    models = {}
    for name in ("ours", "bare", "reference"):
        model = build_classifier("resnet18")
        if name != "reference":
            model = model.to(memory_format=torch.channels_last)
        models[name] = (model.train(), torch.optim.AdamW(model.parameters(), lr=1e-3))
    runners = {
        "ours": lambda: time_ours(*models["ours"], config, split, norm, args.steps, args.batch, gen),
        "bare": lambda: time_bare(*models["bare"], config, x_bare, y_bare, args.steps),
        "reference": lambda: time_reference(*models["reference"], config, loader, args.steps),
    }
    for run in runners.values():  # warm-up: first-call allocations and oneDNN kernel selection
        run()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            rates[name].append(run())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"{name:10s} {value:7.1f} img/s  (rounds: {', '.join(f'{v:.1f}' for v in rates[name])})")
    print(f"ours / bare step: {medians['ours'] / medians['bare']:.2f}  (data pipeline overhead "
          f"{1 - medians['ours'] / medians['bare']:.0%})")
    print(f"ours / reference: {medians['ours'] / medians['reference']:.2f}x")


if __name__ == "__main__":
    main()
