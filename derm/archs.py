"""The architectures' names, without importing torch: the CLI offers them as choices before any
network is built (derm.models builds them)."""

from __future__ import annotations

from derm.pretrained import LITE

CLASSIFIER_ARCHS = ("resnet18", "resnet50")  # the product's ensemble
TEACHER_ARCHS = tuple(LITE)  # ImageNet-pretrained EfficientNet-Lites: teachers for the ensemble, not in it
