"""The networks: torchvision ResNet18/ResNet50 classifiers (from scratch) and a U-Net, whose encoder is
either its own (from scratch) or an ImageNet-pretrained EfficientNet-Lite (derm.pretrained)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from derm.archs import CLASSIFIER_ARCHS, TEACHER_ARCHS  # noqa: F401 (names without torch, re-exported here)
from derm.classes import NUM_CLASSES
from derm.pretrained import build_lite


def build_classifier(arch: str, num_classes: int = NUM_CLASSES, pretrained: bool = False) -> nn.Module:
    """A torchvision ResNet with random weights (derm downloads nothing), or an EfficientNet-Lite teacher
    (ImageNet-pretrained when `pretrained`) whose 1000-class head is replaced; `num_classes` outputs."""
    if arch in TEACHER_ARCHS:
        model = build_lite(arch, pretrained)
        model._fc = nn.Linear(model._fc.in_features, num_classes)
        return model
    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"unknown classifier {arch!r}; choose from {CLASSIFIER_ARCHS + TEACHER_ARCHS}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    # zero-init the last BN of each residual branch: each block starts as identity, which trains
    # faster and more stably from scratch (Goyal et al. 2017; torchvision's zero_init_residual)
    for module in model.modules():
        if isinstance(module, torchvision.models.resnet.Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, torchvision.models.resnet.BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model


def classifier_head(model: nn.Module) -> nn.Linear:
    """The last layer of a classifier from build_classifier: a ResNet's `fc` or an EfficientNet-Lite's `_fc`;
    its in_features is the width of the pooled features."""
    return model.fc if hasattr(model, "fc") else model._fc


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


class LiteUNet(nn.Module):
    """U-Net on an EfficientNet-Lite encoder: the encoder's features at strides 2, 4, 8 and 16 are the
    skip connections, its last block (stride 32) the bottleneck; a light decoder (bilinear upsampling +
    DoubleConv, as in UNet) climbs back to full resolution. Inputs of any size are padded to a multiple
    of 32. The encoder's 1280-channel head and ImageNet classifier are dropped: a U-Net needs neither.
    """

    def __init__(self, encoder: str, pretrained: bool = False, decoder: tuple[int, ...] = (128, 64, 48, 32, 16)):
        super().__init__()
        lite = build_lite(encoder, pretrained)
        self.encoder_name = encoder
        self.stem = nn.Sequential(lite._conv_stem, lite._bn0, lite._swish)
        self.blocks = lite._blocks
        # a stage ends before each block that halves the resolution; its output is a skip connection
        self.skip_before = [i for i, b in enumerate(self.blocks) if b._depthwise_conv.stride[0] == 2]
        skip_channels = [self.blocks[i]._block_args.input_filters for i in self.skip_before]  # strides 2..16
        c_in = self.blocks[-1]._block_args.output_filters
        self.ups = nn.ModuleList()
        for c_skip, c_out in zip([*reversed(skip_channels), 0], decoder):
            self.ups.append(DoubleConv(c_in + c_skip, c_out))
            c_in = c_out
        self.head = nn.Conv2d(c_in, 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, skips = self.stem(x), []
        for i, block in enumerate(self.blocks):
            if i in self.skip_before:
                skips.append(x)
            x = block(x)
        return x, skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % 32, (-width) % 32
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        y, skips = self.encode(x)
        for up in self.ups:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skips.pop()], dim=1) if skips else y)
        return self.head(y)[..., :height, :width]


def build_segmenter(unet_width: int = 32, encoder: str = "none", pretrained: bool = False) -> nn.Module:
    """The U-Net: its own encoder of `unet_width` (from scratch), or an EfficientNet-Lite encoder,
    ImageNet-pretrained when `pretrained` (training) and random when shipped weights follow (loading)."""
    return UNet(width=unet_width) if encoder == "none" else LiteUNet(encoder, pretrained)


def build_model(arch: str, unet_width: int = 32, encoder: str = "none", pretrained: bool = False) -> nn.Module:
    if arch == "unet":
        return build_segmenter(unet_width, encoder, pretrained)
    return build_classifier(arch, pretrained=pretrained)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
