"""The deployed ClassPruning classifier: BatchNorm folded into its convolutions, in bf16 at low precision."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .. import sparse_cpu
from .fold import foldable

__all__ = ["LowPrecisionClassifier", "fold_sequential_bn"]


def fold_sequential_bn(module: nn.Module) -> int:
    """Fold (in place) every eval-mode ``BatchNorm2d`` that directly follows an ``nn.Conv2d`` inside an
    ``nn.Sequential`` of ``module`` into that convolution (torch's ``fuse_conv_bn_eval``; the norm becomes
    ``nn.Identity``). Returns how many were folded."""
    count = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq.named_children())
        for (key, conv), (nkey, norm) in zip(kids, kids[1:]):
            if type(conv) is nn.Conv2d and foldable(norm) and type(norm) is nn.BatchNorm2d:
                setattr(seq, key, fuse_conv_bn_eval(conv.eval(), norm.eval()))
                setattr(seq, nkey, nn.Identity())
                count += 1
    return count


class LowPrecisionClassifier(nn.Module):
    """A deployed classifier at ``deploy(precision="bf16" | "int8")``: its BatchNorms folded and its convolutions in
    bf16 (``torch.autocast``, oneDNN's bf16 kernels) where the bf16 kernel runs
    (:func:`dynprune.sparse_cpu.has_bf16_kernel`: AVX512-BF16), in fp32 elsewhere; logits
    (B, classes) float32. On DnCNN-B's classifier (481x321, 2 threads, Zen 4) 2.3 ms against 3.5-3.9 ms in fp32,
    and no routing decision of BSD68 x sigma 15/25/50 changes (the smallest logit margin is 2.6, the bf16
    error 0.06; docs/results.md). It stays out of the int8 path: 0.2% of the routed model's MACs, and int8
    through ``torch.ao`` would cost more in conversions than it saves."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = copy.deepcopy(classifier).eval()
        fold_sequential_bn(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not sparse_cpu.has_bf16_kernel():
            return self.classifier(x)
        with torch.autocast("cpu", torch.bfloat16):
            return self.classifier(x).float()
