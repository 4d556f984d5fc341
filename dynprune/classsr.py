"""ClassSR (Kong et al., CVPR 2021): separately sized branch networks, its Class-Module, Class-Loss
and Average-Loss in the exact form of its released code, and PSNR-threshold difficulty labels. Its two
training loops (branch pretraining, the Class-Module stage) are :mod:`dynprune.methods.classsr`.

The branches are either a :class:`SeparateBranches` container (ClassSR) or one network converted by
:func:`dynprune.convert` (ClassPruning applied to SR); both plug into :class:`ClassPruning` routing,
:func:`dynprune.patches.restore_by_patches` and :func:`dynprune.audit`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .branch import current_branch, resolve_branch
from .metrics import psnr

__all__ = ["SeparateBranches", "ClassSRClassifier", "class_loss", "average_loss", "classsr_loss", "psnr_labels"]


class SeparateBranches(nn.Module):
    """L separate networks; branch i (under :func:`dynprune.use_branch`) runs ``nets[i]``, the last
    (widest) outside any branch context. ClassSR's net1/net2/net3 organisation.

    Raises:
        ValueError: fewer than one net, or labels of the wrong length.
    """

    def __init__(self, nets: Sequence[nn.Module], labels: Sequence[str] | None = None):
        super().__init__()
        if not nets:
            raise ValueError("SeparateBranches needs at least one network")
        self.nets = nn.ModuleList(nets)
        self.branch_labels = list(labels) if labels is not None else [f"net{i + 1}" for i in range(len(nets))]
        if len(self.branch_labels) != len(self.nets):
            raise ValueError(f"{len(self.branch_labels)} labels for {len(self.nets)} networks")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = current_branch()
        if branch is not None and not isinstance(branch, int):
            raise ValueError(f"SeparateBranches selects branches by index, got {branch}")
        return self.nets[resolve_branch(branch, self.branch_labels)](x)


class ClassSRClassifier(nn.Module):
    """ClassSR's Class-Module: conv 4x4 stride 4 (3 -> 128) + LReLU(0.1), three 1x1 convs 128 -> 128 +
    LReLU, 1x1 conv 128 -> 32, global average pooling, Linear(32 -> L). 60,035 parameters for L = 3.
    Input: LR sub-images (B, 3, h, w) in [0, 1]; output (B, L) logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = 3):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1, inplace=True)  # noqa: E731
        layers = [nn.Conv2d(in_channels, 128, 4, stride=4), act()]
        for _ in range(3):
            layers += [nn.Conv2d(128, 128, 1), act()]
        layers.append(nn.Conv2d(128, 32, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def class_loss(probs: torch.Tensor) -> torch.Tensor:
    """ClassSR Class-Loss as in its code: mean_i [(M - 1) - sum_{j<k} |p_ij - p_ik|]; 0 for one-hot rows.
    probs: (n, M) softmax."""
    m = probs.shape[1]
    diffs = (probs.unsqueeze(2) - probs.unsqueeze(1)).abs().triu(diagonal=1).sum(dim=(1, 2))
    return ((m - 1) - diffs).mean()


def average_loss(probs: torch.Tensor) -> torch.Tensor:
    """ClassSR Average-Loss as in its code: sum_j |sum_i p_ij - n/M| / ((n/M) * 4), i.e. the 4n/3
    normalisation for M = 3. probs: (n, M) softmax."""
    n, m = probs.shape
    return ((probs.sum(0) - n / m).abs() / (n / m * 4)).sum()


def classsr_loss(probs: torch.Tensor, outputs: Sequence[torch.Tensor], target: torch.Tensor,
                 weights: Sequence[float] = (1000.0, 0.5, 3.0)) -> tuple[torch.Tensor, dict[str, float]]:
    """ClassSR training loss: w1 * L1(sum_i p_i f_i(x), y) + w2 * Class-Loss + w3 * Average-Loss
    (soft routing; weights 1000 / 0.5 / 3 as in its FSRCNN/CARN/SRResNet configs)."""
    soft = sum(p.view(-1, 1, 1, 1) * o for p, o in zip(probs.unbind(1), outputs))
    l1 = (soft - target).abs().mean()
    lc, la = class_loss(probs), average_loss(probs)
    return weights[0] * l1 + weights[1] * lc + weights[2] * la, {"L1": l1.item(), "class": lc.item(), "average": la.item()}


def psnr_labels(reference: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, hr: torch.Tensor,
                thresholds: Sequence[float], batch: int = 64, **metric_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassSR's difficulty labels: the PSNR (dB) of a reference model on each sub-image, binned by
    increasing ``thresholds``: class 0 (easy) >= thresholds[-1], ..., last class (hard) < thresholds[0].
    ClassSR uses MSRResNet with [27.16882, 35.149761] dB.

    Returns:
        (labels int64 (n,), psnr float64 (n,)).
    Raises:
        ValueError: thresholds not increasing, or LR/HR counts differ.
    """
    t = list(thresholds)
    if any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"thresholds must increase, got {t}")
    if lr.shape[0] != hr.shape[0]:
        raise ValueError(f"{lr.shape[0]} LR sub-images for {hr.shape[0]} HR sub-images")
    scores = []
    with torch.no_grad():
        for k in range(0, lr.shape[0], batch):
            out = reference(lr[k:k + batch])
            scores += [psnr(o, h, **metric_kwargs) for o, h in zip(out, hr[k:k + batch])]
    p = torch.tensor(scores, dtype=torch.float64)
    labels = len(t) - torch.bucketize(p, torch.tensor(t, dtype=torch.float64), right=True)
    return labels.long(), p
