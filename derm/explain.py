"""Grad-CAM heat maps (the `grad-cam` package) and overlays for display.

The app's maps come from the diagnosis's own forward pass (derm.runtime.Tapped keeps the target
layer's output; `gradcam_from_activation`): Grad-CAM's channel weights are the gradients of the class logit at the
target layer, and only the layers after it (pooling and the linear head; for an EfficientNet-Lite also
its last batch norm and ReLU6) lie between the two. Back-propagating through that short tail gives the
package's map (`gradcam_map`, a full backward pass through the network) without a second forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from torch import nn

# the grad-cam package is imported where it is used: importing it takes seconds (it loads scipy and more),
# and a diagnosis's heat map (gradcam_from_activation) does not need it


def target_layer(model: nn.Module) -> nn.Module:
    """The usual Grad-CAM layer: a torchvision ResNet's last residual block, an EfficientNet-Lite's last
    convolution (its 1x1 head conv, the last layer with a spatial map before pooling)."""
    return model.layer4[-1] if hasattr(model, "layer4") else model._conv_head


def gradcam_map(model: nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    """Grad-CAM for one input (1 x 3 x H x W, normalised) and one class: H x W in [0, 1].

    Built as a context manager so its hooks are released every time (re-created CAM objects that
    are not released leak hooks and memory). Runs in fp32 with gradients enabled, as Grad-CAM needs.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        heat = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(class_index)])
    return heat[0].astype(np.float32)


def layers_after_target(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits as a function of target_layer(model)'s output, the same operations as model(x) in eval
    mode: a ResNet's pooling and `fc`; an EfficientNet-Lite's head batch norm, activation, pooling and `_fc`."""
    if hasattr(model, "layer4"):
        return lambda a: model.fc(torch.flatten(model.avgpool(a), 1))
    return lambda z: model._fc(torch.flatten(model._avg_pooling(model._swish(model._bn1(z))), 1))


def gradcam_from_activation(model: nn.Module, activation: torch.Tensor, class_index: int,
                            input_hw: tuple[int, int]) -> np.ndarray:
    """gradcam_map's heat map (H x W in [0, 1] at input_hw) from the target layer's recorded output
    (1 x C x h x w): the gradient is taken through the layers after it alone, and the map is scaled as
    the package scales it."""
    was_training = model.training
    model.eval()
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        a = activation.detach().float().requires_grad_(True)
        logit = layers_after_target(model)(a)[0, class_index]
        (grad,) = torch.autograd.grad(logit, a)
    model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = np.maximum((weights * a.detach()).sum(1).numpy(), 0)
    scaled = scaled_like_gradcam(cam[0], (input_hw[1], input_hw[0]))
    return scaled_like_gradcam(scaled)  # the package scales each layer's map, then their mean (here one)


def scaled_like_gradcam(cam: np.ndarray, size_wh: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch_grad_cam.utils.image.scale_cam_image for one 2-D map: shifted to 0, divided by its maximum,
    resized to size_wh (width, height) when given."""
    cam = cam - np.min(cam)
    cam = np.float32(cam / (1e-7 + np.max(cam)))
    return cv2.resize(cam, size_wh) if size_wh is not None else cam


NOT_SEEN_NOTE = ("Hatched: cut away before the models looked (they see a centred 4:3 crop of the image), "
                 "so there is no heat to show there.")
NOT_SEEN_WASH = 0.7  # how far the not-seen part is washed towards light grey: visibly out of the analysis
NOT_SEEN_GREY, HATCH_GREY = 225, 150


def seen_by_model(heat: np.ndarray) -> np.ndarray:
    """Where the heat map has values: the pixels the classifier saw (heat_to_image puts NaN elsewhere)."""
    return np.isfinite(heat)


def not_seen_look(rgb: np.ndarray) -> np.ndarray:
    """The image washed out to light grey with diagonal hatching: how the pixels the classifier never
    saw are drawn, so that no colour there can be mistaken for low attention."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    washed = grey * (1 - NOT_SEEN_WASH) + NOT_SEEN_GREY * NOT_SEEN_WASH
    height, width = grey.shape
    spacing = max(6, round(min(height, width) / 30))
    rows, cols = np.mgrid[:height, :width]
    hatch = (rows + cols) % spacing < max(1, spacing // 5)
    washed[hatch] = HATCH_GREY
    return np.repeat(washed.astype(np.uint8)[..., None], 3, axis=2)


def overlay_heatmap(rgb: np.ndarray, heat: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image with a jet-coloured heat map blended in; uint8 RGB at the image's size. Where the
    map is NaN (the classifier never saw those pixels) the image is drawn as not seen (not_seen_look)."""
    size = (rgb.shape[1], rgb.shape[0])
    seen = seen_by_model(heat)
    filled = np.where(seen, heat, 0.0).astype(np.float32)
    if heat.shape != rgb.shape[:2]:
        filled = cv2.resize(filled, size)
        seen = cv2.resize(seen.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    from pytorch_grad_cam.utils.image import show_cam_on_image

    out = show_cam_on_image(rgb.astype(np.float32) / 255.0, filled, use_rgb=True, image_weight=1.0 - opacity)
    if not seen.all():
        out[~seen] = not_seen_look(rgb)[~seen]
    return out


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
