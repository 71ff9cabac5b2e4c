"""One training loop for both tasks: bf16 autocast + channels_last on CPU, batched augmentation from a
uint8 cache, one-cycle AdamW, per-epoch validation, atomic checkpoints, resume and a clean stop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch.nn.parallel import DistributedDataParallel

from derm import data, distill, distributed, runs, weights
from derm.precision import cpu_has_fast_bf16
from derm.augment import POLICIES, augment_batch, normalize, uint8_to_float
from derm.classes import NUM_CLASSES
from derm.colour import METHODS as COLOUR_METHODS
from derm.colour import apply_constancy
from derm.data import default_split
from derm.metrics import batch_dice_iou, classification_report, selection_score
from derm.models import CLASSIFIER_ARCHS, TEACHER_ARCHS, build_model
from derm.pretrained import ENCODERS, IMAGENET_NORMALIZATION, weights_record

SAMPLINGS = ("natural", "sqrt", "balanced", "reference")
SEGMENTER_SOURCES = ("ham10000", "extra")  # the segmenter's label: where an image and its mask come from
# TrainConfig fields that `python -m derm train` takes as --flag value: the recipe, then where it runs
RECIPE_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "height", "width", "sampling", "augment",
                 "colour", "epoch_samples", "label_smoothing", "unet_width", "encoder", "extra_masks", "seed", "init",
                 "teacher", "distill_temperature", "distill_alpha", "unlabelled")
CLI_FIELDS = (*RECIPE_FIELDS, "limit", "threads", "data", "split")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as the run's config.json."""

    task: str = "classifier"  # classifier | segmenter
    arch: str = "resnet18"  # resnet18 | resnet50 | unet
    epochs: int = 20
    batch_size: int = 64  # global: under torchrun each of P processes takes batch_size / P of every batch
    lr: float = 2e-3  # for the global batch, so it needs no scaling with the number of processes
    weight_decay: float = 0.05
    height: int = 150
    width: int = 200
    sampling: str = "sqrt"  # natural | sqrt | balanced | reference (oversample minorities to NV)
    augment: str = "full"  # a name in derm.augment.POLICIES
    colour: str = "none"  # colour constancy after augmentation and in the app: a name in derm.colour.METHODS
    epoch_samples: int = 0  # images per epoch; 0 = the train split's size
    label_smoothing: float = 0.1
    precision: str = "bf16"  # bf16 | fp32
    unet_width: int = 32  # the from-scratch U-Net (encoder none)
    encoder: str = "none"  # segmenter: none (from scratch) or an ImageNet-pretrained EfficientNet-Lite (lite0|lite1|lite2)
    seed: int = 0
    data: str | None = None
    split: str = field(default_factory=default_split)  # $DERM_SPLIT or weights/split.csv
    limit: int = 0  # if > 0, use at most this many images per split (quick tests)
    threads: int = 0  # 0 = all cores
    extra_masks: str | None = None  # segmenter: a folder in isic2018_task1's layout whose train/val join HAM's
    init: str | None = None  # warm start: a run folder (its best.pt), a checkpoint or a shipped .safetensors
    teacher: list[str] | None = None  # classifier: distil these classifier runs (derm.distill)
    distill_temperature: float = 4.0  # the softmax temperature of the teachers' and the student's soft answers
    distill_alpha: float = 0.9  # weight of the distillation term; 1 - alpha weighs the labels' cross-entropy
    unlabelled: str | None = None  # with a teacher: a folder in isic2018_task1's layout whose train images join
    # training without labels (the distillation term only); validation stays HAM10000's labelled val split
    teacher_runs: list = field(default_factory=list)  # filled at start: each teacher's run, arch and best score
    normalization: dict = field(default_factory=dict)  # filled from the train split at start
    pretrained: dict = field(default_factory=dict)  # filled at start: the encoder's package, file and sha256

    @classmethod
    def for_task(cls, task: str, arch: str | None = None, **overrides) -> "TrainConfig":
        """Defaults per task: classifiers at the images' native 150x200, the U-Net at 96x128."""
        if task == "segmenter":
            base = dict(task=task, arch="unet", epochs=10, batch_size=16, lr=2e-3, weight_decay=1e-4,
                        height=96, width=128, sampling="natural", augment="geometric", label_smoothing=0.0)
        else:
            base = dict(task="classifier", arch=arch or "resnet18")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a saved config.json; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def cli_args(self, fields: tuple[str, ...] = CLI_FIELDS, only_changed: bool = False) -> list[str]:
        """The `python -m derm train` arguments that rebuild this config. only_changed leaves out
        values equal to the task's defaults (for a readable recipe) but always states the epochs."""
        default = TrainConfig.for_task(self.task, self.arch if self.task == "classifier" else None)
        args = [self.task] + (["--arch", self.arch] if self.task == "classifier" else [])
        for name in fields:
            value = getattr(self, name)
            if value is None or (only_changed and name != "epochs" and value == getattr(default, name)):
                continue
            values = value if isinstance(value, list) else [value]
            args += [f"--{name.replace('_', '-')}", *map(str, values)]
        return args + (["--fp32"] if self.precision == "fp32" else [])

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for out-of-range settings."""
        problems = []
        if self.task not in ("classifier", "segmenter"):
            problems.append(f"task must be classifier or segmenter, not {self.task!r}")
        if self.task == "classifier" and self.arch not in CLASSIFIER_ARCHS + TEACHER_ARCHS:
            problems.append(f"arch must be one of {CLASSIFIER_ARCHS + TEACHER_ARCHS} for a classifier")
        if self.task == "segmenter" and self.arch != "unet":
            problems.append("the segmenter's arch is unet")
        if not 1 <= self.epochs <= 500:
            problems.append("epochs must be between 1 and 500")
        if not 1 <= self.batch_size <= 512:
            problems.append("batch size must be between 1 and 512")
        if not 1e-6 <= self.lr <= 1.0:
            problems.append("learning rate must be between 1e-6 and 1")
        if not (32 <= self.height <= 600 and 32 <= self.width <= 800):
            problems.append("resolution must be between 32x32 and 600x800")
        if self.sampling not in SAMPLINGS:
            problems.append(f"sampling must be one of {SAMPLINGS}")
        if self.augment not in POLICIES:
            problems.append(f"augment must be one of {tuple(POLICIES)}")
        if self.colour not in COLOUR_METHODS:
            problems.append(f"colour must be one of {COLOUR_METHODS}")
        if self.colour != "none" and self.task != "classifier":
            problems.append("colour constancy is for classifiers")
        if self.precision not in ("bf16", "fp32"):
            problems.append("precision must be bf16 or fp32")
        if not 4 <= self.unet_width <= 128:
            problems.append("U-Net width must be between 4 and 128")
        if self.encoder not in ENCODERS:
            problems.append(f"encoder must be one of {ENCODERS}")
        elif self.encoder != "none" and self.task != "segmenter":
            problems.append("a pretrained encoder is for the segmenter")
        if self.extra_masks and self.task != "segmenter":
            problems.append("extra masks are for the segmenter")
        elif self.extra_masks and not (Path(self.extra_masks) / "split.csv").is_file():
            problems.append(f"extra masks: no split.csv in {self.extra_masks}")
        problems += self.distillation_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def distillation_problems(self) -> list[str]:
        """What is wrong with the distillation settings (nothing when there is no teacher and no unlabelled)."""
        problems = []
        if self.teacher and self.task != "classifier":
            problems.append("a teacher is for classifiers")
        elif self.teacher:
            problems += distill.teacher_problems(self.teacher)
        if not self.distill_temperature > 0:
            problems.append("distillation temperature must be above 0")
        if not 0 <= self.distill_alpha <= 1:
            problems.append("distillation alpha must be between 0 and 1")
        if self.unlabelled and not self.teacher:
            problems.append("unlabelled images need a teacher (--teacher) to learn from")
        elif self.unlabelled and not (Path(self.unlabelled) / "split.csv").is_file():
            problems.append(f"unlabelled: no split.csv in {self.unlabelled}")
        return problems


def pretrained_name(config: TrainConfig) -> str | None:
    """The EfficientNet-Lite whose ImageNet weights the run starts from: a teacher classifier's own arch or
    the U-Net's encoder; None for the networks trained from scratch."""
    if config.task == "classifier":
        return config.arch if config.arch in TEACHER_ARCHS else None
    return config.encoder if config.encoder != "none" else None


def init_checkpoint(init: str) -> Path:
    """A run folder means its best.pt; anything else is a checkpoint or shipped .safetensors file."""
    path = Path(init)
    return path / "best.pt" if path.is_dir() else path


def read_init_source(init: str) -> tuple[dict, dict]:
    """The warm-start weights and what they were trained as (task, arch, width, normalisation and,
    for shipped weights, the manifest's training record). Shipped weights are read through their
    manifest, so a fresh clone can train its weights further without the runs that made them."""
    path = init_checkpoint(init)
    if path.suffix != ".safetensors":
        state = torch.load(path, map_location="cpu", weights_only=False)
        return state["model"], state.get("config", {})
    return weights.load_state_fp32(path), weights.shipped_config(path)


def init_source_config(init: str) -> dict:
    """What the warm-start weights were trained as, without reading the weights (a check before a run)."""
    path = init_checkpoint(init)
    if path.suffix == ".safetensors":
        return weights.shipped_config(path)
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("config", {})


def load_init_weights(model: nn.Module, config: TrainConfig) -> dict:
    """Load the warm-start weights into `model`; returns what `read_init_source` says of them.

    A warm start keeps the weights but starts a fresh optimiser and one-cycle schedule (a warm
    restart): the way to train a finished run further without changing its recorded history.
    """
    state, source = read_init_source(config.init)
    check_init_matches(config, source)
    model.load_state_dict(state)
    return source


def check_init_matches(config: TrainConfig, source: dict) -> None:
    """Weights only fit the architecture (and U-Net width) they were trained as, and the colour
    constancy they learnt with: a warm start under another one would quietly see other inputs."""
    for key in ("task", "arch", "unet_width", "encoder", "colour"):
        if key in source and source[key] != getattr(config, key):
            hint = "" if key == "task" else f" (pass --{key.replace('_', '-')} {source[key]} to match)"
            raise ValueError(f"--init checkpoint has {key}={source[key]!r}, this run {getattr(config, key)!r}{hint}")


# ----------------------------------------------------------------------------- data in memory


@dataclass
class SplitData:
    images: torch.Tensor  # N x H x W x 3 uint8
    labels: torch.Tensor  # N int64
    masks: torch.Tensor | None  # N x H x W uint8 (segmenter)
    image_ids: list[str]


def load_splits(config: TrainConfig) -> tuple[dict[str, SplitData], data.Normalization]:
    """The train and val splits decoded from the cache, and normalisation from the train split.

    For the segmenter, labels hold each image's source (0 = HAM10000, 1 = `extra_masks`), so
    `--sampling balanced` draws both sources equally and validation scores each source on its own.
    """
    table = data.ensure_split(data.load_table(config.data), data.REPO_ROOT / config.split
                              if not Path(config.split).is_absolute() else config.split, seed=config.seed)
    size = (config.height, config.width)
    out = {}
    for name in ("train", "val"):
        part = table[table["split"] == name]
        if config.limit:
            part = part.sample(n=min(config.limit, len(part)), random_state=config.seed).sort_values("image_id")
        images = data.cached_array(list(part["image_path"]), size, "image")
        if config.task == "classifier":
            out[name] = SplitData(torch.from_numpy(np.array(images)), torch.tensor(part["label_idx"].values),
                                  None, list(part["image_id"]))
            continue
        masks = data.cached_array(list(part["mask_path"]), size, "mask")
        out[name] = SplitData(torch.from_numpy(np.array(images)), torch.zeros(len(part), dtype=torch.int64),
                              torch.from_numpy(np.array(masks)), list(part["image_id"]))
        if config.extra_masks:
            out[name] = concat_splits(out[name], extra_mask_split(config, name))
    norm = input_normalization(config, out["train"])
    if config.unlabelled:
        out["train"] = concat_splits(out["train"], unlabelled_split(config))
    return out, norm


def input_normalization(config: TrainConfig, train_split: SplitData) -> data.Normalization:
    """ImageNet's statistics for a network that starts from ImageNet weights (its filters expect them);
    else the train split's own, of HAM10000's train images alone (unlabelled images join after)."""
    if pretrained_name(config) is not None:
        return data.Normalization(tuple(IMAGENET_NORMALIZATION["mean"]), tuple(IMAGENET_NORMALIZATION["std"]))
    return train_stats(train_split, config.colour)


def train_stats(split: SplitData, colour: str, chunk: int = 512) -> data.Normalization:
    """Normalisation from the train split as the network sees it: after colour constancy, if any."""
    if colour == "none":
        return data.channel_stats(split.images.numpy())
    corrected = [apply_constancy(uint8_to_float(split.images[s:s + chunk]), colour).mul_(255).round_()
                 .to(torch.uint8).permute(0, 2, 3, 1) for s in range(0, len(split.images), chunk)]
    return data.channel_stats(torch.cat(corrected).numpy())


def extra_mask_split(config: TrainConfig, split: str) -> SplitData:
    """One split of the second mask source, resized to the run's input (source label 1)."""
    image_paths, mask_paths = data.mask_set_pairs(config.extra_masks, split)
    if config.limit:
        image_paths, mask_paths = image_paths[:config.limit], mask_paths[:config.limit]
    size = (config.height, config.width)
    images = data.cached_array(image_paths, size, "image")
    masks = data.cached_array(mask_paths, size, "mask")
    return SplitData(torch.from_numpy(np.array(images)), torch.ones(len(image_paths), dtype=torch.int64),
                     torch.from_numpy(np.array(masks)), [Path(p).stem for p in image_paths])


def unlabelled_split(config: TrainConfig) -> SplitData:
    """The train images of `config.unlabelled`, resized to the run's input, labelled -1: no diagnosis of theirs is used."""
    image_paths, _ = data.mask_set_pairs(config.unlabelled, "train")
    if config.limit:
        image_paths = image_paths[:config.limit]
    images = data.cached_array(image_paths, (config.height, config.width), "image")
    return SplitData(torch.from_numpy(np.array(images)), torch.full((len(image_paths),), distill.UNLABELLED),
                     None, [Path(p).stem for p in image_paths])


def concat_splits(a: SplitData, b: SplitData) -> SplitData:
    masks = torch.cat([a.masks, b.masks]) if a.masks is not None else None
    return SplitData(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), masks, a.image_ids + b.image_ids)


def pixels_to(split: SplitData, device: torch.device) -> SplitData:
    """The split's pixels on `device`: on a GPU, batches are then cut, augmented and normalised there
    instead of on the CPU, which would starve it. Labels stay on the CPU for the samplers."""
    if device.type == "cpu":
        return split
    masks = split.masks.to(device) if split.masks is not None else None
    return dataclasses.replace(split, images=split.images.to(device), masks=masks)


def epoch_indices(labels: torch.Tensor, sampling: str, epoch_samples: int, gen: torch.Generator) -> torch.Tensor:
    """The order of training images for one epoch under a sampling policy.

    natural: a permutation. sqrt / balanced: class frequency proportional to sqrt(n_c) / equal, drawn
    with replacement. reference: every class replicated up to the largest class (the write-up's
    oversampling), shuffled. Unlabelled images (label -1): see `with_unlabelled`.
    """
    if (labels < 0).any():
        return with_unlabelled(labels, sampling, epoch_samples, gen)
    n = len(labels)
    counts = torch.bincount(labels, minlength=NUM_CLASSES).clamp(min=1).float()
    if sampling == "natural":
        order = torch.randperm(n, generator=gen)
        return order[:epoch_samples] if epoch_samples else order
    if sampling == "reference":
        target = int(counts.max())
        parts = []
        for c in range(NUM_CLASSES):
            members = torch.nonzero(labels == c).flatten()
            if len(members):
                parts.append(members.repeat(math.ceil(target / len(members)))[:target])
        order = torch.cat(parts)
        order = order[torch.randperm(len(order), generator=gen)]
        return order[:epoch_samples] if epoch_samples else order
    power = 0.5 if sampling == "sqrt" else 1.0
    weights = counts[labels] ** -power
    return torch.multinomial(weights, epoch_samples or n, replacement=True, generator=gen)


def with_unlabelled(labels: torch.Tensor, sampling: str, epoch_samples: int, gen: torch.Generator) -> torch.Tensor:
    """An epoch's order when some images are unlabelled (label -1).

    The sampling policy runs over the labelled images alone (its class weights need labels); the
    unlabelled images then keep the share of the epoch they have of the train set, each drawn once
    before any is drawn again, and the two are shuffled together.
    """
    labelled, unlabelled = torch.nonzero(labels >= 0).flatten(), torch.nonzero(labels < 0).flatten()
    share = len(labelled) / len(labels)
    picked = labelled[epoch_indices(labels[labelled], sampling, round(epoch_samples * share), gen)]
    extra = round(len(picked) * len(unlabelled) / max(len(labelled), 1))
    cycled = unlabelled[torch.randperm(len(unlabelled), generator=gen)].repeat(math.ceil(extra / len(unlabelled)))
    order = torch.cat([picked, cycled[:extra]])
    return order[torch.randperm(len(order), generator=gen)]


def augmented_batch(split: SplitData, idx: torch.Tensor, config: TrainConfig, train: bool,
                    gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Index the cache and augment (train only): float images in [0, 1], masks and labels. A teacher
    sees these images, prepared its own way."""
    images = uint8_to_float(split.images[idx])
    masks = split.masks[idx].unsqueeze(1).float() if split.masks is not None else None
    labels = split.labels[idx]
    if train:
        images, masks = augment_batch(images, POLICIES[config.augment], labels=labels, masks=masks, gen=gen)
    return images, masks, labels


def network_inputs(images: torch.Tensor, config: TrainConfig, norm: data.Normalization) -> torch.Tensor:
    """Colour constancy and normalisation of float images: the trained network's channels_last inputs."""
    images = apply_constancy(images, config.colour)
    return normalize(images, norm.mean, norm.std).contiguous(memory_format=torch.channels_last)


def make_batch(split: SplitData, idx: torch.Tensor, config: TrainConfig, norm: data.Normalization,
               train: bool, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index the cache, augment (train only) and normalise; returns channels_last inputs and targets."""
    images, masks, labels = augmented_batch(split, idx, config, train, gen)
    return network_inputs(images, config, norm), (masks if masks is not None else labels)


# ----------------------------------------------------------------------------- loop pieces


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CPUs with native bf16 (AMX) and on GPUs that have it; fp16 (with a GradScaler) on older
    GPUs; fp32 on CPUs that would only emulate bf16 (several times slower than fp32 there)."""
    if config.precision != "bf16":
        return None
    if device.type == "cpu" and not cpu_has_fast_bf16():
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(config: TrainConfig, device: torch.device):
    dtype = amp_dtype(config, device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def loss_fn(config: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if config.task == "segmenter":
        return F.binary_cross_entropy_with_logits(logits.float(), target) + dice_loss(logits, target)
    return F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)


@torch.no_grad()
def predict_split(model: nn.Module, split: SplitData, config: TrainConfig, norm: data.Normalization,
                  device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Probabilities (classifier: N x 7) or lesion probabilities (segmenter: N x H x W) for a split."""
    model.eval()
    outputs = []
    for start in range(0, len(split.labels), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split.labels)))
        x, _ = make_batch(split, idx, config, norm, train=False)
        with autocast(config, device):
            logits = model(x.to(device)).float()
        probs = torch.sigmoid(logits[:, 0]) if config.task == "segmenter" else logits.softmax(1)
        outputs.append(probs.cpu().numpy())
    return np.concatenate(outputs)


def validate(model: nn.Module, split: SplitData, config: TrainConfig, norm: data.Normalization,
             device: torch.device) -> dict:
    probs = predict_split(model, split, config, norm, device)
    if config.task == "segmenter":
        truth = split.masks.cpu().numpy()
        dice, iou = batch_dice_iou(probs >= 0.5, truth)
        eps = 1e-6
        bce = -(truth * np.log(probs + eps) + (1 - truth) * np.log(1 - probs + eps)).mean()
        record = {"val_loss": float(bce), "dice": float(dice.mean()), "iou": float(iou.mean())}
        sources = split.labels.cpu().numpy()
        per_source = [float(dice[sources == s].mean()) for s in np.unique(sources)]
        if len(per_source) > 1:  # each source counts once in the selection score, whatever its size
            record.update({f"dice_{SEGMENTER_SOURCES[s]}": d for s, d in zip(np.unique(sources), per_source)})
        return {**record, "score": float(np.mean(per_source))}
    report = classification_report(split.labels.numpy(), probs)
    return {"val_loss": report["nll"], "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"], "macro_f1": report["macro_f1"],
            "macro_auc": report["macro_auc"], "score": selection_score(report)}


def save_checkpoint(path: Path, **state) -> None:
    """torch.save to a temp file, then rename: a crash mid-write never corrupts the checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between batches and stops cleanly."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            self.requested = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, run_dir: Path | None = None, resume: bool = False,
          progress: bool = True, stop: StopFlag | None = None) -> Path:
    """Train per `config` into `run_dir` (new under runs/ if None); returns the run folder.

    With resume=True, `run_dir` must hold config.json and last.pt: training continues from the
    epoch after the saved one, with the optimiser, schedule and best score restored. Under torchrun,
    every process calls this; the main process alone writes the run's files.
    """
    ctx = distributed.setup()
    try:
        if resume:
            config = TrainConfig.from_dict(runs.read_json(Path(run_dir) / "config.json"))
        config.validate()
        if ctx.is_main:
            run_dir = Path(run_dir) if run_dir else runs.new_run_dir(f"{config.arch}")
            run_dir.mkdir(parents=True, exist_ok=True)
        run_dir = distributed.broadcast_object(run_dir, ctx)
        if stop is None:
            stop = StopFlag()
            stop.install()
        if ctx.is_main:
            runs.write_status(run_dir, "running", pid=os.getpid(), epochs=config.epochs, error=None, note=None,
                              processes=ctx.world_size, device=distributed.device_name(ctx.device))
        try:
            return _train(config, run_dir, resume, stop, progress and ctx.is_main, ctx)
        except Exception as exc:  # the run's files must say why it failed; the caller still sees the error
            if ctx.is_main:
                runs.write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}",
                                  traceback=traceback.format_exc()[-4000:])
            raise
    finally:
        distributed.cleanup(ctx)


def _train(config: TrainConfig, run_dir: Path, resume: bool, stop: StopFlag, progress: bool,
           ctx: distributed.Context) -> Path:
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = ctx.device
    if not ctx.is_main:  # the main process makes split.csv and the caches first; the others then read them
        distributed.barrier(ctx)
    splits, norm = load_splits(config)
    splits = {name: pixels_to(split, device) for name, split in splits.items()}
    if ctx.is_main:
        distributed.barrier(ctx)
    imagenet = pretrained_name(config)  # loaded from its package unless a warm start's or resume's weights follow
    model = build_model(config.arch, config.unet_width, config.encoder, imagenet is not None and not (config.init or resume))
    model = model.to(device).to(memory_format=torch.channels_last)
    if imagenet is not None:  # which ImageNet checkpoint the run started from, to the byte
        config.pretrained = config.pretrained or weights_record(imagenet)
    if config.init and not resume:  # a warm-started model keeps the statistics its weights were trained with
        source = load_init_weights(model, config)
        config.normalization = source.get("normalization") or config.normalization
        if ctx.is_main and source.get("training"):  # shipped weights: keep how they were made for the record
            runs.write_json_atomic(run_dir / runs.INIT_TRAINING_FILE, source["training"])
    if config.normalization:  # a resumed run keeps the statistics it started with
        norm = data.Normalization(tuple(config.normalization["mean"]), tuple(config.normalization["std"]))
    config.normalization = norm.to_dict()
    distiller = None
    if config.teacher:
        distiller = distill.Distiller(config.teacher, config.distill_temperature, config.distill_alpha,
                                      config.label_smoothing, device)
        config.teacher_runs = config.teacher_runs or distill.teacher_records(config.teacher)
    if ctx.is_main:
        runs.write_json_atomic(run_dir / "config.json", dataclasses.asdict(config))

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_split = splits["train"]
    steps_per_epoch = math.ceil(len(epoch_indices(train_split.labels, config.sampling, config.epoch_samples,
                                                  torch.Generator().manual_seed(0))) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, pct_start=0.2,
                                                    total_steps=config.epochs * steps_per_epoch)
    start_epoch, best_score, best_epoch = 1, -math.inf, 0
    if resume:
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_score, best_epoch = state["epoch"] + 1, state["best_score"], state["best_epoch"]
    stepper = DistributedDataParallel(model) if ctx.enabled else model
    scaler = torch.amp.GradScaler(enabled=amp_dtype(config, device) == torch.float16)

    for epoch in range(start_epoch, config.epochs + 1):
        # every process draws the same global order; each trains on its own share of each global batch
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = epoch_indices(train_split.labels, config.sampling, config.epoch_samples, gen)
        batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        batches = [b for b in batches if len(b) >= 2 * ctx.world_size]  # BatchNorm needs two samples each
        stepper.train()
        started, seen, loss_sum, stopped = time.perf_counter(), 0, 0.0, False
        bar = _progress(batches, f"epoch {epoch}/{config.epochs}", progress)
        for global_idx in bar:
            idx = distributed.shard(global_idx, ctx)
            images, masks, labels = augmented_batch(train_split, idx, config, train=True, gen=gen)
            y = (masks if masks is not None else labels).to(device)
            with autocast(config, device):
                logits = stepper(network_inputs(images, config, norm).to(device))
                soft = distiller.soft_targets(images.to(device)) if distiller else None
            loss = distiller.loss(logits, soft, y) if distiller else loss_fn(config, logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            if progress:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", refresh=False)
            if distributed.any_across(stop.requested, ctx):
                stopped = True
                break
        if stopped:
            if ctx.is_main:
                runs.write_status(run_dir, "stopped", epoch=epoch - 1,
                                  note="stopped by request; last.pt holds the last finished epoch")
            return run_dir
        seconds = time.perf_counter() - started
        loss_sum, seen = distributed.sum_across([loss_sum, float(seen)], ctx)
        if ctx.is_main:
            best_score, best_epoch = _end_epoch(model, optimizer, scheduler, splits["val"], config, norm, device,
                                                run_dir, epoch, best_score, best_epoch,
                                                {"train_loss": loss_sum / max(seen, 1), "seconds": round(seconds, 1),
                                                 "images_per_s": round(seen / seconds, 1), "images": int(seen),
                                                 "lr": scheduler.get_last_lr()[0], "processes": ctx.world_size},
                                                progress)
        distributed.barrier(ctx)
    if ctx.is_main:
        runs.write_status(run_dir, "finished", epoch=config.epochs, best_score=best_score, best_epoch=best_epoch)
    return run_dir


def _end_epoch(model: nn.Module, optimizer, scheduler, val_split: SplitData, config: TrainConfig,
               norm: data.Normalization, device: torch.device, run_dir: Path, epoch: int, best_score: float,
               best_epoch: int, train_record: dict, progress: bool) -> tuple[float, int]:
    """Validate, log the epoch, write last.pt (and best.pt when the selection metric improved)."""
    val = validate(model, val_split, config, norm, device)
    improved = val["score"] > best_score
    if improved:
        best_score, best_epoch = val["score"], epoch
    record = {"epoch": epoch, "train_loss": train_record.pop("train_loss"), **val, **train_record}
    runs.append_metrics(run_dir, record)
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                 epoch=epoch, best_score=best_score, best_epoch=best_epoch, config=dataclasses.asdict(config))
    save_checkpoint(run_dir / "last.pt", **state)
    if improved:
        save_checkpoint(run_dir / "best.pt", **state)
    runs.write_status(run_dir, "running", epoch=epoch, best_score=best_score, best_epoch=best_epoch)
    if progress:
        print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in record.items() if k != "epoch"), flush=True)
    return best_score, best_epoch


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="batch", mininterval=5)
