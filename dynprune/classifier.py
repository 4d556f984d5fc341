"""The difficulty classifier (ClassPruning section 3.2, "Classifier Module")."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import get_host

__all__ = ["DifficultyClassifier", "create_classifier"]


class DifficultyClassifier(nn.Module):
    """Four Conv-BN-ReLU blocks, global average pooling and one fully connected layer (paper 3.2).

    The paper gives no widths; the defaults (32, 32, 64, 96), 3x3 convs with stride 2, give 84k
    parameters, the size implied by Table 1 (CP-DnCNN 0.754M - DnCNN 0.668M - 4.6k variable BN),
    and about 0.1% of DnCNN-20's MACs.

    Args:
        in_channels: image channels. num_classes: L, the number of branches.
        widths: channels of the four blocks.
    Input: (B, C, H, W) float32 in [0, 1]. Output: (B, L) logits.
    Raises:
        ValueError: not exactly four widths, or num_classes < 1.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3, widths: Sequence[int] = (32, 32, 64, 96)):
        super().__init__()
        if len(widths) != 4 or num_classes < 1:
            raise ValueError(f"DifficultyClassifier needs 4 widths and num_classes >= 1, got {list(widths)}, {num_classes}")
        blocks, c = [], in_channels
        for w in widths:
            blocks += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def create_classifier(name: str = "paper", in_channels: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """A registered difficulty classifier (``"paper"``: :class:`DifficultyClassifier`; ``"classsr"``:
    ClassSR's Class-Module; plugins add theirs through ``dynprune_register_classifiers``), or
    ``"timm:<model>"``: any timm model, randomly initialised (never downloaded), with ``in_chans`` and
    ``num_classes`` set.

    Raises:
        ValueError: an unknown name (the registered ones are listed) or timm model.
    """
    if name.startswith("timm:"):
        import timm

        arch = name[5:]
        if not timm.is_model(arch):
            raise ValueError(f"unknown timm model {arch!r} for the classifier (see timm.list_models())")
        return timm.create_model(arch, pretrained=False, in_chans=in_channels, num_classes=num_classes, **kwargs)
    if name not in get_host().names("classifiers"):
        raise ValueError(f"unknown classifier {name!r}: expected one of {get_host().names('classifiers')} "
                         "or 'timm:<model name>'")
    return get_host().create("classifiers", name, in_channels=in_channels, num_classes=num_classes, **kwargs)
