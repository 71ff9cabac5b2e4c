"""The three networks: torchvision ResNet18/ResNet50 classifiers (from scratch) and a U-Net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from derm.classes import NUM_CLASSES

CLASSIFIER_ARCHS = ("resnet18", "resnet50")


def build_classifier(arch: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """A torchvision ResNet with random weights (derm downloads nothing) and `num_classes` outputs."""
    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"unknown classifier {arch!r}; choose from {CLASSIFIER_ARCHS}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    # zero-init the last BN of each residual branch: each block starts as identity, which trains
    # faster and more stably from scratch (Goyal et al. 2017; torchvision's zero_init_residual)
    for module in model.modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, torchvision.models.resnet.BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BN -> ReLU) x 2, the U-Net building block."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample (bilinear, or transposed conv), concatenate the skip connection, DoubleConv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, bilinear: bool):
        super().__init__()
        if bilinear:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(c_in, c_in // 2, 1))
        else:
            self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
        self.conv = DoubleConv(c_in // 2 + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with 4 poolings; `width` channels at full resolution.

    Outputs one logit channel (lesion vs skin). Inputs of any size are padded to a multiple of 16.
    """

    def __init__(self, width: int = 32, bilinear: bool = True, in_channels: int = 3):
        super().__init__()
        w = [width * 2**i for i in range(5)]
        self.width = width
        self.stem = DoubleConv(in_channels, w[0])
        self.downs = nn.ModuleList(DoubleConv(w[i], w[i + 1]) for i in range(4))
        self.ups = nn.ModuleList(Up(w[i + 1], w[i], w[i], bilinear) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % 16, (-width) % 16
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :height, :width]


def build_model(arch: str, unet_width: int = 32) -> nn.Module:
    return UNet(width=unet_width) if arch == "unet" else build_classifier(arch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
