"""Colour constancy: take the light source's colour out of an image before a classifier sees it.

Another dermatoscope or camera mostly changes the white balance (derm7pt is far greener than
HAM10000: mean G 0.70 vs 0.55). Shades of Gray (Finlayson & Trezzi 2004) estimates the illuminant as
the per-channel Minkowski p-norm of the pixels and divides it out, so an image and the same image
under any per-channel gain come out alike. The ISIC challenge winners used it across clinics (Barata
et al. 2015; Gessert et al. 2019). It runs on batches of tensors, where the images are, so training
(after augmentation, on the GPU too) and the app (`derm.pipeline`) share one definition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensor methods only: the CLI imports METHODS without loading torch
    import torch

METHODS = ("none", "shades_of_gray")
SHADES_OF_GRAY_P = 6  # Finlayson & Trezzi's choice, also Barata et al.'s for dermoscopy


def shades_of_gray(images: torch.Tensor, p: int = SHADES_OF_GRAY_P) -> torch.Tensor:
    """N x 3 x H x W in [0, 1] -> the same with each image's illuminant made neutral grey.

    Each channel is scaled by (mean of the three illuminant estimates) / (its own), which keeps the
    image's overall brightness; the result is clipped to [0, 1].
    """
    x = images.float()
    illuminant = x.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)  # N x 3
    gain = illuminant.mean(dim=1, keepdim=True) / illuminant.clamp_min(1e-6)
    return (x * gain[:, :, None, None]).clamp_(0, 1).to(images.dtype)


def apply_constancy(images: torch.Tensor, method: str) -> torch.Tensor:
    """The colour constancy a model was trained with ('none' leaves the images as they are)."""
    if method == "none":
        return images
    if method == "shades_of_gray":
        return shades_of_gray(images)
    raise ValueError(f"unknown colour constancy {method!r}: choose one of {', '.join(METHODS)}")
