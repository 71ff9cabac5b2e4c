"""Grad-CAM heat maps (the `grad-cam` package) and overlays for display."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn


def target_layer(model: nn.Module) -> nn.Module:
    """The last residual block of a torchvision ResNet: the usual Grad-CAM layer."""
    return model.layer4[-1]


def gradcam_map(model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    """Grad-CAM for one input (1 x 3 x H x W, normalised) and one class: H x W in [0, 1].

    Built as a context manager so its hooks are released every time (re-created CAM objects that
    are not released leak hooks and memory). Runs in fp32 with gradients enabled, as Grad-CAM needs.
    """
    with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        heat = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(class_index)])
    return heat[0].astype(np.float32)


def overlay_heatmap(rgb: np.ndarray, heat: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image with a jet-coloured heat map blended in; uint8 RGB at the image's size."""
    heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]))
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=1.0 - opacity)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 120),
                 fill_opacity: float = 0.25) -> np.ndarray:
    """The image with the mask's outline drawn and its inside lightly tinted; uint8 RGB."""
    out = rgb.copy()
    mask_u8 = mask.astype(np.uint8)
    if fill_opacity:
        tint = np.zeros_like(out)
        tint[:] = colour
        inside = mask_u8.astype(bool)
        out[inside] = (out[inside] * (1 - fill_opacity) + tint[inside] * fill_opacity).astype(np.uint8)
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(rgb.shape[:2]) / 200))
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out
