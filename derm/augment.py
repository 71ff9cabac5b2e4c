"""Batched augmentation on tensors: one affine grid and a few broadcasts per batch, not per image.

Per-item PIL transforms in DataLoader workers would compete with the model for this machine's two
cores; a whole batch costs a single `grid_sample`. Image and mask go through the same grid, so they
stay aligned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPolicy:
    hflip: bool = True
    vflip: bool = True
    rotation_deg: float = 180.0  # dermoscopy has no canonical orientation
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.1
    hue: float = 0.02  # fraction of a full turn
    skip_classes: tuple[int, ...] = ()  # class indices left untouched (the reference skipped NV)

    @property
    def is_identity(self) -> bool:
        return self == NO_AUGMENT


NO_AUGMENT = AugmentPolicy(False, False, 0.0, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0)

POLICIES: dict[str, AugmentPolicy] = {
    # ours: every class, any orientation, mild zoom and colour
    "full": AugmentPolicy(),
    # the reference write-up: flips, +-20 deg, brightness/contrast/hue 0.1, all classes except NV (5)
    "reference": AugmentPolicy(True, True, 20.0, (1.0, 1.0), 0.1, 0.1, 0.0, 0.1, skip_classes=(5,)),
    # geometry only, for segmentation (colour jitter does not change where the lesion is, but costs)
    "geometric": AugmentPolicy(brightness=0.1, contrast=0.1, saturation=0.0, hue=0.0),
    "flips": AugmentPolicy(True, True, 0.0, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0),
    "none": NO_AUGMENT,
}


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def affine_theta(n: int, height: int, width: int, policy: AugmentPolicy,
                 active: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """N x 2 x 3 sampling matrices: flips, rotation and zoom in pixel space, identity where inactive.

    affine_grid works in [-1, 1] coordinates on both axes, so a rotation is conjugated by the
    aspect ratio (D^-1 A D) to stay a rotation on a non-square image.
    """
    angle = _uniform(n, -policy.rotation_deg, policy.rotation_deg, gen) * math.pi / 180
    scale = _uniform(n, *policy.scale, gen)
    fx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if policy.hflip else torch.ones(n)
    fy = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if policy.vflip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    half_w, half_h = width / 2.0, height / 2.0
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * fx
    theta[:, 0, 1] = -sin * fy * half_h / half_w
    theta[:, 1, 0] = sin * fx * half_w / half_h
    theta[:, 1, 1] = cos * fy
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return torch.where(active.view(n, 1, 1), theta, identity)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def colour_jitter(images: torch.Tensor, policy: AugmentPolicy, active: torch.Tensor,
                  gen: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue per sample on an N x 3 x H x W batch in [0, 1]."""
    n, device = images.shape[0], images.device
    on = active.float().view(n, 1, 1, 1)

    def factor(strength: float) -> torch.Tensor:  # drawn on the CPU generator, applied where the images are
        f = _uniform(n, 1 - strength, 1 + strength, gen).view(n, 1, 1, 1)
        return (1 + (f - 1) * on).to(device)

    out = images
    if policy.brightness:
        out = out * factor(policy.brightness)
    if policy.contrast:
        grey_mean = (out.mean(dim=1, keepdim=True)).mean(dim=(2, 3), keepdim=True)
        out = (out - grey_mean) * factor(policy.contrast) + grey_mean
    if policy.saturation:
        grey = (out * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        out = (out - grey) * factor(policy.saturation) + grey
    if policy.hue:
        turn = _uniform(n, -policy.hue, policy.hue, gen) * 2 * math.pi * active.float()
        cos, sin = torch.cos(turn), torch.sin(turn)
        rot = torch.zeros(n, 3, 3)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        matrix = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ  # N x 3 x 3
        out = torch.einsum("nij,njhw->nihw", matrix.to(device), out)
    return out.clamp_(0, 1)


def augment_batch(images: torch.Tensor, policy: AugmentPolicy, labels: torch.Tensor | None = None,
                  masks: torch.Tensor | None = None, gen: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment float images (N x 3 x H x W in [0, 1]) and, with the same geometry, masks (N x 1 x H x W).

    Masks are resampled nearest-neighbour so they stay binary. The random draws come from `gen` on
    the CPU (reproducible on any device); the pixels are transformed wherever `images` live.
    """
    if policy.is_identity:
        return images, masks
    n, _, height, width = images.shape
    active = torch.ones(n, dtype=torch.bool)
    if labels is not None and policy.skip_classes:
        active = ~torch.isin(labels.cpu(), torch.tensor(policy.skip_classes))
    theta = affine_theta(n, height, width, policy, active, gen).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    images = colour_jitter(images, policy, active, gen)
    return images, masks


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def uint8_to_float(batch_hwc: torch.Tensor) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [0, 1]."""
    return batch_hwc.permute(0, 3, 1, 2).float().div_(255.0)


TTA_VIEWS = ("identity", "hflip", "vflip", "rot180")  # dermoscopy has no canonical orientation


def view(x: torch.Tensor, name: str) -> torch.Tensor:
    """One test-time view of an N x C x H x W batch (each is its own inverse)."""
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    if name == "rot180":
        return x.flip(-1, -2)
    return x
