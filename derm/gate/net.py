"""A small network trained for one question: was this photo taken through a dermatoscope?

The domain gate's regression reads the features of a classifier trained to tell lesions apart; they
separate a camera's close-up of a mole from a dermatoscope's view with AUC ~0.96, which left a
quarter of clinical photos accepted (docs/tried.md). This network is trained for exactly that
question, on the gate's own fitting images (`derm.gate.fit`): dermatoscopic images of three sources
against clinical photos, photos, screens and blank frames, each source weighted equally so that no
atlas's look can stand in for the device. Device-like augmentation (any rotation, zoom, colour,
gain and blur) keeps it from keying on one camera's colours.

It is independent of the diagnostic classifiers: re-shipping them does not retrain it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from derm.augment import TTA_VIEWS, AugmentPolicy, augment_batch, uint8_to_float, view

NET_FILE = "gate_net.safetensors"
# the device's look is in texture and illumination, not in colour balance: jitter colour hard
# (the shipped network was trained with the same gains, gamma and blur share, drawn linearly and with a
# 3x3 box blur, before they moved into derm.augment)
DEVICE_AUGMENT = AugmentPolicy(rotation_deg=180.0, scale=(0.8, 1.3), brightness=0.25, contrast=0.25,
                               saturation=0.3, hue=0.04, channel_gain=0.15, gamma=0.3, blur_p=0.3)


@dataclass(frozen=True)
class NetConfig:
    """The network's recipe; chosen on the gate's validation shares (docs/tried.md)."""

    size: int = 128          # input side: images are squashed to size x size
    width: int = 16          # channels of the first block
    steps: int = 3600        # gate with it, clinical val refused: 1200 steps 75.0%, 3600 steps 87.5% (docs/tried.md)
    batch_size: int = 48
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    flips: bool = True       # P(dermatoscopic) from the mean logit of the image and its 3 flips: 77.5% -> 90%
                             # of clinical val refused by the net alone at the same acceptance (docs/tried.md)


class DeviceNet(nn.Module):
    """Five stride-2 conv blocks, then the mean and spread of the last map (texture) -> one logit."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        channels = [3, width, width * 2, width * 4, width * 4, width * 8]
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * channels[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.cat([x.mean((2, 3)), x.std((2, 3), correction=0)], 1))[:, 0]


def net_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """The whole image squashed to size x size uint8 (area-averaged when shrinking)."""
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb[..., :3]), (size, size), interpolation=interp)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 array -> N x 3 x S x S float in [0, 1]."""
    return uint8_to_float(torch.from_numpy(np.ascontiguousarray(batch)))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Fixed, data-free scaling: the net must not depend on any one dataset's channel statistics."""
    return (x - 0.5) / 0.25


@torch.no_grad()
def probabilities(model: DeviceNet, images: np.ndarray, flips: bool = False, batch_size: int = 64) -> np.ndarray:
    """P(dermatoscopic) for N x S x S x 3 uint8 inputs; with `flips`, from the mean logit of 4 views."""
    model.eval()
    views = TTA_VIEWS if flips else TTA_VIEWS[:1]  # a dermatoscope has no "up"
    out = []
    for i in range(0, len(images), batch_size):
        x = standardise(to_tensor(images[i:i + batch_size]))
        logits = torch.stack([model(view(x, name)) for name in views]).mean(0)
        out.append(torch.sigmoid(logits).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def group_weights(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sampling weights: each class half the draws, each group (source or kind) an equal part of its class."""
    weights = np.zeros(len(groups))
    for label in (0, 1):
        names = np.unique(groups[labels == label])
        for name in names:
            members = groups == name
            weights[members] = 0.5 / len(names) / members.sum()
    return weights


def train_net(images: np.ndarray, labels: np.ndarray, groups: np.ndarray, config: NetConfig = NetConfig(),
              progress: bool = True) -> DeviceNet:
    """Train on N x S x S x 3 uint8 images, labels 1 = dermatoscopic, groups = source or kind names."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = DeviceNet(config.width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.15)
    weights = torch.as_tensor(group_weights(groups, labels))
    targets = torch.as_tensor(labels, dtype=torch.float32)
    steps = range(config.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="gate net", unit="step", mininterval=5)
    model.train()
    for _ in steps:
        idx = torch.multinomial(weights, config.batch_size, replacement=True, generator=gen)
        x, _ = augment_batch(to_tensor(images[idx.numpy()]), DEVICE_AUGMENT, gen=gen)
        x = standardise(x).contiguous(memory_format=torch.channels_last)
        loss = F.binary_cross_entropy_with_logits(model(x), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()
