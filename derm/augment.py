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
    # other devices: colour casts, tone curves, softer optics, framing
    aspect: float = 0.0  # x and y zoomed independently by up to exp(+-aspect) on top of `scale`
    channel_gain: float = 0.0  # each of R, G, B scaled by exp(U(-g, g)): another camera's white balance
    gamma: float = 0.0  # tone curve x ** exp(U(-g, g))
    blur_p: float = 0.0  # share of images softened by a Gaussian blur (sigma 0.4-1.2 px)
    vignette_p: float = 0.0  # share of images given a dark circular frame, as a dermatoscope's field of view

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
    # ours plus other devices: wider zoom and aspect, white balance, tone curve, blur, vignettes
    "device": AugmentPolicy(scale=(0.8, 1.25), brightness=0.2, contrast=0.2, saturation=0.25, hue=0.03,
                            aspect=0.1, channel_gain=0.25, gamma=0.3, blur_p=0.3, vignette_p=0.2),
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
    stretch = torch.exp(_uniform(n, -policy.aspect, policy.aspect, gen)) if policy.aspect else torch.ones(n)
    sx, sy = scale * stretch, scale / stretch  # zoom of the output's x and y axes
    cos, sin = torch.cos(angle), torch.sin(angle)
    half_w, half_h = width / 2.0, height / 2.0
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * fx / sx
    theta[:, 0, 1] = -sin * fy * half_h / half_w / sy
    theta[:, 1, 0] = sin * fx * half_w / half_h / sx
    theta[:, 1, 1] = cos * fy / sy
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


def device_jitter(images: torch.Tensor, policy: AugmentPolicy, active: torch.Tensor,
                  gen: torch.Generator | None) -> torch.Tensor:
    """What another dermatoscope and camera change: white balance, tone curve, sharpness, frame.

    derm7pt's atlas, for one, is far greener than HAM10000 (mean G 0.70 vs 0.55 at equal R); a model that
    only saw HAM10000's colours reads such a cast as a diagnosis.
    """
    n, _, height, width = images.shape
    device, on = images.device, active.float()
    out = images
    if policy.channel_gain:
        gains = torch.exp(_uniform(3 * n, -policy.channel_gain, policy.channel_gain, gen)).view(n, 3)
        out = out * (1 + (gains - 1) * on.view(n, 1)).view(n, 3, 1, 1).to(device)
    if policy.gamma:
        gamma = torch.exp(_uniform(n, -policy.gamma, policy.gamma, gen) * on).view(n, 1, 1, 1).to(device)
        out = out.clamp(1e-4, 1).pow(gamma)
    if policy.blur_p:
        chosen = (torch.rand(n, generator=gen) < policy.blur_p) & active
        if chosen.any():
            sigma = float(_uniform(1, 0.4, 1.2, gen))  # one sigma per batch: one conv for all chosen images
            idx = chosen.nonzero().flatten().to(device)
            out = out.clone()
            out[idx] = gaussian_blur(out[idx], sigma)
    if policy.vignette_p:
        chosen = ((torch.rand(n, generator=gen) < policy.vignette_p) & active).float().view(n, 1, 1, 1)
        radius = _uniform(n, 0.85, 1.15, gen).view(n, 1, 1)  # in half-diagonals: corners only, up to a rim
        edge = _uniform(n, 0.02, 0.1, gen).view(n, 1, 1)
        ys = torch.linspace(-height / 2, height / 2, height).view(1, height, 1)
        xs = torch.linspace(-width / 2, width / 2, width).view(1, 1, width)
        r = torch.sqrt(xs ** 2 + ys ** 2) / math.hypot(width / 2, height / 2)
        keep = torch.sigmoid((radius - r) / edge).unsqueeze(1)  # 1 inside the field of view, ~0 outside
        out = out * (1 - chosen * (1 - keep)).to(device)
    return out.clamp_(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N x 3 x H x W batch (reflect padding keeps the borders' brightness)."""
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device) ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, taps.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


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
    images = device_jitter(images, policy, active, gen)
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
