"""Shipped weights: fp16 safetensors files plus one manifest.json that says how to use them.

manifest.json
  classes                class order of every probability vector
  models.<name>          arch, file, input_hw, normalization, temperature, tta, (unet) width and
                         threshold, training {command, run, best_epoch, seconds, code_version}
                         (unet) cleaning: derm.maskclean.CleanConfig fields; absent = no cleaning
  ensemble               routing {class: slot}, prior_correction, train_class_counts, ood, and
                         members {slot: [model, ...]} where a slot averages several networks
                         (absent: each classifier is its own slot, named after it)
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from derm.data import REPO_ROOT

# torch and the networks load where weights are read or written: reading a manifest (the app's first page)
# does not wait for them
if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_ENV = "DERM_WEIGHTS"


def default_weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV, REPO_ROOT / "weights")).expanduser()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's contents, read once per (path, size, modification time): a weights file is
    hashed at every load (cache names, the gate's tie to its network) and reading 150 MB each time costs."""
    stat = Path(path).stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WeightsNotFoundError(FileNotFoundError):
    pass


def read_manifest(weights_dir: Path) -> dict:
    path = Path(weights_dir) / "manifest.json"
    if not path.is_file():
        raise WeightsNotFoundError(f"no trained weights at {weights_dir} (manifest.json missing); "
                                   "train and export them, see docs/training.md")
    return json.loads(path.read_text())


def to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors as fp16 (half the size; inference runs in fp32/bf16 after loading), contiguous
    as safetensors needs them."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def to_fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def save_state_fp16(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(to_fp16(model.state_dict()), str(path))


def load_state_fp32(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict (no pickle) with its float tensors back in fp32."""
    from safetensors.torch import load_file

    return to_fp32(load_file(str(path)))


def manifest_entry_for_file(path: Path) -> dict:
    """The manifest entry of a shipped weights file, from the manifest.json beside it."""
    path = Path(path)
    for entry in read_manifest(path.parent)["models"].values():
        if entry["file"] == path.name:
            return entry
    raise WeightsNotFoundError(f"{path.parent / 'manifest.json'} names no model stored in {path.name}")


def shipped_config(path: Path) -> dict:
    """What a shipped weights file was trained as, in a run's config.json terms (task, arch, input
    size, U-Net width or colour constancy, normalisation, split) plus its training record, from the manifest
    beside it."""
    path = Path(path)
    entry = manifest_entry_for_file(path)
    config = {"task": "segmenter" if entry["arch"] == "unet" else "classifier", "arch": entry["arch"],
              "height": entry["input_hw"][0], "width": entry["input_hw"][1], "normalization": entry["normalization"],
              "split": str((path.parent / "split.csv").resolve()), "data": None, "training": entry.get("training", {})}
    if entry["arch"] == "unet":
        config["unet_width"] = entry.get("width", 32)
        config["encoder"] = entry.get("encoder", {}).get("name", "none")
        if "package" in entry.get("encoder", {}):  # which ImageNet checkpoint it started from, kept on re-export
            config["pretrained"] = entry["encoder"]
        config["extra_masks"] = entry.get("extra_masks")  # the second mask source validation chooses on too
    else:
        config["colour"] = entry.get("colour", "none")  # re-exporting keeps the colour step it was trained with
        if entry.get("teacher"):
            config["manifest_teacher"] = entry["teacher"]
    return config


def load_model(entry: dict, weights_dir: Path) -> nn.Module:
    """Build the architecture named in a manifest entry and load its safetensors (no pickle) in fp32.

    Built on the meta device, so no random initialisation is computed only to be overwritten (half a
    second of CPU for the shipped networks, on every cold start); the file's tensors are then taken as they are.
    """
    import torch

    from derm.models import build_model

    state = load_state_fp32(Path(weights_dir) / entry["file"])
    with torch.device("meta"):
        model = build_model(entry["arch"], entry.get("width", 32), entry.get("encoder", {}).get("name", "none"))
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer the file does not hold
        model = build_model(entry["arch"], entry.get("width", 32), entry.get("encoder", {}).get("name", "none"))
        model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # Grad-CAM needs gradients; inference runs under no_grad anyway
    return model.to(memory_format=torch.channels_last)
