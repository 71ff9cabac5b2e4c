"""The domain gate: is this a dermatoscopic image of a skin lesion, the only kind the models know?

A photo taken without a dermatoscope, a screenshot or a blank frame still gets a confident answer
from a classifier; trusted tools check the input first and refuse politely. The gate reads two
kinds of evidence from one image:

- deep features: the shipped ResNet18's pooled layer2-4 activations (mean and spread), compared with
  those of dermatoscopic images (a Mahalanobis distance in a PCA space of them), and
- plain image statistics (flat areas, colour count, edges, saturation, vignette),

and a logistic regression over both, fitted against images the models were not made for
(clinical photos, everyday photos, screenshots and drawings, synthetic frames; `derm.gate.fit`).
A small network trained for the one question "taken through a dermatoscope?" (`derm.gate.net`)
adds a second probability, from the original image. An image is in domain when both probabilities
clear their thresholds and its distance stays below one; every threshold is chosen on validation
images (`derm.gate.fit`). The reason shown to the user is the non-dermatoscopic kind the
regression finds most likely.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from derm import weights
from derm.weights import file_sha256
from derm.gate import net as gate_net
from derm.gate.objects import ObjectCheck
from derm.runtime import BuiltOnFirstUse

GATE_JSON, GATE_TENSORS = "gate.json", "gate.safetensors"
FEATURE_MODEL = "resnet18"

# what the regression tells apart; index 0 is the only accepted kind
KINDS = ("dermoscopic", "clinical", "photo", "screen", "blank")
REASONS = {
    "clinical": "This looks like an ordinary close-up photo of skin, taken without a dermatoscope; the models "
                "only know dermatoscopic images (magnified, lit through a contact lens).",
    "photo": "This looks like an ordinary photo, not a dermatoscopic image of a skin lesion.",
    "screen": "This looks like a screenshot, a drawing or text, not a photo of a skin lesion.",
    "blank": "There is no skin lesion in view: the image is blank, flat, noise or a plain pattern.",
    "grey": "This is a black-and-white image; dermatoscopic images are colour photos of a skin lesion.",
    "distance": "This image is unlike the dermatoscopic images the models were trained on.",
    "small": "At {width}x{height} pixels there is too little to judge what it shows: the models need a "
             "dermatoscopic close-up of about 200x150 pixels or more.",
}
# below this many pixels on the shorter side the statistics and features describe the upscaling, not
# the image: the size is the reason given (the pipeline warns of 'tiny' images below the same size)
MIN_JUDGED_SIDE = 64
# mean (max - min) over the colour channels below which an image is greyscale: dermatoscopic
# images of HAM10000, isic2018_task1 and derm7pt all lie above 0.02
GREY_SPREAD = 0.01
STAT_NAMES = ("flat_share", "colour_count", "edge_share", "laplacian_mean", "saturation_mean",
              "saturation_std", "value_mean", "value_std", "a_mean", "b_mean", "a_std", "b_std",
              "channel_spread", "corner_darkness", "centre_contrast")


# ----------------------------------------------------------------------------- features


def image_statistics(rgb: np.ndarray) -> np.ndarray:
    """Fifteen cheap numbers that separate camera pixels of skin from screens and synthetic frames.

    Computed on the classifier's 150x200 input, so every image is judged at one scale.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    laplacian = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32) / 255.0
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
    quantised = (rgb >> 3).astype(np.int32)
    codes = (quantised[..., 0] << 10) | (quantised[..., 1] << 5) | quantised[..., 2]
    height, width = grey.shape
    ch, cw = height // 6, width // 6
    corners = np.concatenate([grey[:ch, :cw].ravel(), grey[:ch, -cw:].ravel(),
                              grey[-ch:, :cw].ravel(), grey[-ch:, -cw:].ravel()]).astype(np.float32)
    centre = grey[height // 4: 3 * height // 4, width // 4: 3 * width // 4].astype(np.float32)
    return np.array([
        float((laplacian == 0).mean()),
        np.unique(codes).size / codes.size,
        float((cv2.Canny(grey, 80, 160) > 0).mean()),
        float(laplacian.mean()) / 255.0,
        float(hsv[..., 1].mean()), float(hsv[..., 1].std()),
        float(hsv[..., 2].mean()), float(hsv[..., 2].std()),
        float(lab[..., 1].mean()), float(lab[..., 2].mean()),
        float(lab[..., 1].std()), float(lab[..., 2].std()),
        float((rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)).mean()) / 255.0,
        float(centre.mean() - corners.mean()) / 255.0,
        float(centre.std()) / 255.0,
    ], dtype=np.float32)


GATE_LAYERS = ("layer2", "layer3", "layer4")


def position_stats(activation: torch.Tensor) -> list[torch.Tensor]:
    return [activation.float().mean((2, 3)), activation.float().std((2, 3))]


def pooled_activations(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Mean and standard deviation over positions of layer2, layer3 and layer4 of a torchvision ResNet
    (N x 1792 for ResNet18): what the classifier 'sees' before the class decision throws the rest
    away. The standard deviations describe texture (style), which tells a dermatoscope's view from
    a camera's better than the means alone did on validation (docs/tried.md)."""
    x = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    layers = {}
    for name in GATE_LAYERS:
        x = layers[name] = getattr(model, name)(x)
    return layer_statistics(layers)


def layer_statistics(layers: dict[str, torch.Tensor]) -> np.ndarray:
    """pooled_activations from the layer outputs of a pass that already ran: the app's diagnosis runs
    the ResNet18 the gate reads (derm.runtime.Tapped), so the gate need not run it a second time."""
    return torch.cat([t for name in GATE_LAYERS for t in position_stats(layers[name])], 1).numpy()


# ----------------------------------------------------------------------------- the fitted gate


@dataclass
class GateParams:
    """Everything fitted: PCA + Mahalanobis on deep features, a standardised logistic regression,
    the two thresholds, and the hash of the classifier whose features it reads."""

    feature_sha256: str
    pca_mean: np.ndarray          # D
    pca_components: np.ndarray    # K x D
    maha_precision: np.ndarray    # K x K (in PCA space, around the dermatoscopic mean)
    maha_centre: np.ndarray       # K
    scale_mean: np.ndarray        # F (regression inputs: D deep features, log distance, statistics)
    scale_std: np.ndarray         # F
    coef: np.ndarray              # len(KINDS) x F
    intercept: np.ndarray         # len(KINDS)
    min_probability: float        # P(dermoscopic) below this is refused
    max_distance: float           # Mahalanobis distance above this is refused
    notes: dict = field(default_factory=dict)
    net: dict = field(default_factory=dict)  # the device network's NetConfig (gate_net.safetensors); {} = none
    net_min_probability: float = 0.0         # its P(dermatoscopic) below this is refused
    objects: dict = field(default_factory=dict)  # the ImageNet object check (derm.gate.objects); {} = none

    ARRAYS = ("pca_mean", "pca_components", "maha_precision", "maha_centre", "scale_mean", "scale_std",
              "coef", "intercept")

    def save(self, weights_dir: Path) -> None:
        weights_dir = Path(weights_dir)
        save_file({k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in self.ARRAYS},
                  str(weights_dir / GATE_TENSORS))
        meta = {k: v for k, v in asdict(self).items() if k not in self.ARRAYS}
        (weights_dir / GATE_JSON).write_text(json.dumps({"kinds": list(KINDS), **meta}, indent=1) + "\n")

    @classmethod
    def load(cls, weights_dir: Path) -> "GateParams":
        weights_dir = Path(weights_dir)
        meta = json.loads((weights_dir / GATE_JSON).read_text())
        if list(meta.pop("kinds")) != list(KINDS):
            raise ValueError(f"{weights_dir / GATE_JSON}: its kinds are not {KINDS}; refit the gate")
        arrays = load_file(str(weights_dir / GATE_TENSORS))
        return cls(**meta, **{k: arrays[k].astype(np.float64) for k in cls.ARRAYS})


@dataclass
class GateDecision:
    """One image's verdict: accepted or not, the dermatoscopic probabilities (regression, device
    network), the distance and a reason."""

    in_domain: bool
    probability: float
    distance: float
    kind: str
    reason: str | None
    device_probability: float | None = None
    object_score: float | None = None  # share of an ImageNet network's answer outside lesion-like classes

    def message(self) -> str | None:
        return None if self.in_domain else self.reason

    def evidence(self) -> str:
        """The numbers behind the verdict, for a curious reader."""
        device = "" if self.device_probability is None else \
            f", device network's dermatoscopic probability {self.device_probability:.2f}"
        objects = "" if self.object_score is None else \
            f", everyday-object score {self.object_score:.2f} (ImageNet classes unlike a lesion)"
        return (f"dermatoscopic probability {self.probability:.2f}{device}, "
                f"distance from the training images {self.distance:.1f}{objects}")


def mahalanobis(params: GateParams, deep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PCA scores N x K, distance N) of deep features from the dermatoscopic training images."""
    scores = (deep - params.pca_mean) @ params.pca_components.T
    centred = scores - params.maha_centre
    distance = np.sqrt(np.maximum(np.einsum("nk,kl,nl->n", centred, params.maha_precision, centred), 0))
    return scores, distance


def regression_inputs(deep: np.ndarray, distance: np.ndarray, stats: np.ndarray) -> np.ndarray:
    return np.concatenate([deep, np.log1p(distance)[:, None], stats], axis=1)


def kind_probabilities(params: GateParams, inputs: np.ndarray) -> np.ndarray:
    z = (inputs - params.scale_mean) / params.scale_std
    logits = z @ params.coef.T + params.intercept
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def decide(params: GateParams, deep: np.ndarray, stats: np.ndarray,
           device: np.ndarray | None = None) -> list[GateDecision]:
    """The gate's verdicts for N images from their deep features, image statistics and (when the gate
    has one) the device network's P(dermatoscopic). Either probability under its threshold refuses;
    the reason is the non-dermatoscopic kind the regression finds most likely."""
    _, distance = mahalanobis(params, deep)
    probs = kind_probabilities(params, regression_inputs(deep, distance, stats))
    grey = stats[:, STAT_NAMES.index("channel_spread")] < GREY_SPREAD
    device = np.full(len(deep), np.nan) if device is None else device
    out = []
    for p, d, is_grey, q in zip(probs, distance, grey, device):
        unlikely = p[0] < params.min_probability or bool(q < params.net_min_probability)
        far = d > params.max_distance
        kind = KINDS[1 + int(np.argmax(p[1:]))] if (unlikely or far) else ("grey" if is_grey else KINDS[0])
        if unlikely:
            reason = REASONS[kind]
        elif is_grey:
            kind, reason = "grey", REASONS["grey"]
        else:
            reason = REASONS["distance"] if far else None
        out.append(GateDecision(reason is None, float(p[0]), float(d), kind, reason,
                                None if np.isnan(q) else float(q)))
    return out


class DomainGate:
    """The fitted gate bound to the classifier whose features it reads."""

    model = BuiltOnFirstUse()  # derm.runtime: from `network` when first read

    def __init__(self, params: GateParams | None, model: nn.Module | Callable[[], nn.Module], to_tensor,
                 bf16: bool = False, net: nn.Module | None = None, objects: ObjectCheck | None = None):
        self.params = params
        self.network = model  # the classifier, or how to get it: a diagnosis hands the gate its statistics instead
        self.to_tensor = to_tensor  # list of RGB images -> the classifier's normalised input batch
        self.bf16 = bf16
        self.net = net  # the device network (derm.gate.net), when the gate has one
        self.objects = objects  # the ImageNet object check (derm.gate.objects), when the gate has one

    @torch.no_grad()
    def features(self, images: list[np.ndarray], inputs: list[np.ndarray],
                 deep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(deep N x D, statistics N x 15); `inputs` are the images at the classifier's input size;
        `deep`: the statistics of the classifier's own pass when it already ran (layer_statistics)."""
        if deep is None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                deep = pooled_activations(self.model, self.to_tensor(images))
        return deep.astype(np.float64), np.stack([image_statistics(im) for im in inputs]).astype(np.float64)

    def device_probabilities(self, images: list[np.ndarray]) -> np.ndarray | None:
        """The device network's P(dermatoscopic) for the original images; None without a network."""
        if self.net is None:
            return None
        size = self.params.net["size"]
        return gate_net.probabilities(self.net, np.stack([gate_net.net_input(im, size) for im in images]),
                                      flips=self.params.net.get("flips", False))

    def check(self, images: list[np.ndarray], inputs: list[np.ndarray],
              deep: np.ndarray | None = None) -> list[GateDecision]:
        deep, stats = self.features(images, inputs, deep)
        decisions = decide(self.params, deep, stats, self.device_probabilities(images))
        decisions = self.judged_for_objects(decisions, images)
        return [judged_at_size(d, im.shape[:2]) for d, im in zip(decisions, images)]

    def judged_for_objects(self, decisions: list[GateDecision], images: list[np.ndarray]) -> list[GateDecision]:
        """Images the gate accepted are refused when an ImageNet network sees an everyday object in them."""
        accepted = [k for k, d in enumerate(decisions) if d.in_domain]
        if self.objects is None or not accepted:
            return decisions
        decisions = list(decisions)
        for k, (refused, reason, score) in zip(accepted, self.objects.judge([images[k] for k in accepted])):
            decisions[k] = replace(decisions[k], object_score=score)
            if refused:
                decisions[k] = replace(decisions[k], in_domain=False, kind="object", reason=reason)
        return decisions


def judged_at_size(decision: GateDecision, image_hw: tuple[int, int]) -> GateDecision:
    """A tiny image is refused for its size, whatever its statistics said: an 8x8 thumbnail of a
    lesion otherwise passes, or is called blank, and either way the user never learns the real problem."""
    height, width = image_hw
    if min(height, width) >= MIN_JUDGED_SIDE:
        return decision
    return replace(decision, in_domain=False, kind="small", reason=REASONS["small"].format(width=width, height=height))


def has_gate(weights_dir: Path) -> bool:
    return (Path(weights_dir) / GATE_JSON).is_file() and (Path(weights_dir) / GATE_TENSORS).is_file()


def load_net(params: GateParams, weights_dir: Path) -> nn.Module | None:
    """The device network beside gate.json, or None when the gate has none."""
    if not params.net:
        return None
    net = gate_net.DeviceNet(params.net["width"])
    net.load_state_dict(weights.load_state_fp32(Path(weights_dir) / gate_net.NET_FILE))
    return net.eval()


def load_params_for(weights_dir: Path, feature_file: Path) -> GateParams:
    """The gate of a weights folder, refused when the classifier it reads has changed since fitting."""
    params = GateParams.load(weights_dir)
    if params.feature_sha256 != file_sha256(feature_file):
        raise ValueError(f"{weights_dir / GATE_JSON} was fitted on another {feature_file.name}; "
                         "refit it: python -m derm fit-gate")
    return params
