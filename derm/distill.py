"""Knowledge distillation (Hinton et al. 2015): a student classifier learns one or more teacher runs'
softened predictions, plus the labels where there are labels.

The teachers see exactly the augmented view the student sees, each prepared its own way (its colour
constancy, normalisation and input size), so under the device-imitating augmentation the student
learns the teachers' answers for other cameras too. A teacher trained at a larger input than the
student's sees the student's view resized to its own input, as it saw its training images.
Unlabelled images (another clinic's, see `TrainConfig.unlabelled`) carry the label -1 and contribute
only the distillation term.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from derm import runs
from derm.augment import normalize
from derm.colour import apply_constancy

UNLABELLED = -1  # the label of an image that joins training for the distillation term only


@dataclass
class Teacher:
    """A frozen teacher network and how its inputs are prepared."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    colour: str
    size: tuple[int, int] | None = None  # (height, width) it was trained at; None: whatever it is given

    def logits(self, augmented: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for an augmented float batch (N x 3 x H x W in [0, 1])."""
        x = normalize(apply_constancy(self.at_own_size(augmented), self.colour), self.mean, self.std)
        return self.model(x.contiguous(memory_format=torch.channels_last)).float()

    def at_own_size(self, augmented: torch.Tensor) -> torch.Tensor:
        """The batch resized to the teacher's training input: a network answers best at the scale it learnt."""
        if self.size is None or tuple(augmented.shape[-2:]) == self.size:
            return augmented
        return F.interpolate(augmented, size=self.size, mode="bilinear", align_corners=False,
                             antialias=True).clamp(0, 1)


def teacher_problems(teacher_runs: list[str]) -> list[str]:
    """What is wrong with the teacher run folders, as user-facing messages (empty when they will do)."""
    problems = []
    for run in teacher_runs:
        path = Path(run)
        if not (path / "best.pt").is_file() or not (path / "config.json").is_file():
            problems.append(f"teacher {run}: no finished run there (needs best.pt and config.json)")
        elif runs.read_json(path / "config.json").get("task") != "classifier":
            problems.append(f"teacher {run}: not a classifier run")
    return problems


def teacher_records(teacher_runs: list[str]) -> list[dict]:
    """What the run's config and the manifest say of each teacher: its run, arch and best val score."""
    records = []
    for run in teacher_runs:
        config = runs.read_json(Path(run) / "config.json")
        status = runs.read_status(Path(run))
        records.append({"run": Path(run).name, "arch": config["arch"], "best_score": status.get("best_score"),
                        "best_epoch": status.get("best_epoch")})
    return records


def load_teachers(teacher_runs: list[str], device: torch.device) -> list[Teacher]:
    """Each run's best checkpoint, in eval mode and frozen, with its own normalisation and colour."""
    from derm.evaluate import load_checkpoint_model  # evaluate imports the app's pipeline: load it only when needed

    teachers = []
    for run in teacher_runs:
        model, config = load_checkpoint_model(Path(run))
        model = model.to(device).eval().requires_grad_(False)
        norm = config["normalization"]
        size = (config["height"], config["width"]) if "height" in config and "width" in config else None
        teachers.append(Teacher(model, tuple(norm["mean"]), tuple(norm["std"]), config.get("colour", "none"), size))
    return teachers


@torch.no_grad()
def teacher_probabilities(teachers: list[Teacher], augmented: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teachers' probabilities at temperature T, averaged over teachers."""
    return torch.stack([(t.logits(augmented) / temperature).softmax(1) for t in teachers]).mean(0)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) over every image + (1 - alpha) * CE over labelled images.

    T^2 keeps the soft term's gradients on the scale of the hard one's whatever T is (Hinton et al.).
    Images labelled -1 enter only the soft term; a batch with no labels has no hard term.
    """
    logits = student_logits.float()
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), teacher_probs, reduction="batchmean")
    labelled = labels >= 0
    hard = (F.cross_entropy(logits[labelled], labels[labelled], label_smoothing=label_smoothing)
            if labelled.any() else logits.new_zeros(()))
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard


class Distiller:
    """The teachers of a run and its distillation settings: the loss for one training batch."""

    def __init__(self, teacher_runs: list[str], temperature: float, alpha: float, label_smoothing: float,
                 device: torch.device) -> None:
        self.teachers = load_teachers(teacher_runs, device)
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing

    def soft_targets(self, augmented: torch.Tensor) -> torch.Tensor:
        """The teachers' softened probabilities for `augmented`: the student's view before its own
        colour constancy and normalisation."""
        return teacher_probabilities(self.teachers, augmented, self.temperature)

    def loss(self, student_logits: torch.Tensor, soft_targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return distillation_loss(student_logits, soft_targets, labels, self.temperature, self.alpha,
                                 self.label_smoothing)


def manifest_teacher(config: dict) -> dict | None:
    """The manifest's `teacher` entry for a distilled model: its teachers and every setting; None otherwise."""
    if not config.get("teacher"):
        return None
    return {"runs": config.get("teacher_runs") or [{"run": Path(r).name} for r in config["teacher"]],
            "temperature": config.get("distill_temperature"), "alpha": config.get("distill_alpha"),
            "unlabelled": Path(config["unlabelled"]).name if config.get("unlabelled") else None}
