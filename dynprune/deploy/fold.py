"""BatchNorm folding for deployment."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import VariableNormMixin

__all__ = ["fold_batchnorm", "bn_scale", "branch_norm", "foldable"]


def branch_norm(norm: nn.Module, branch: int, num: int) -> nn.Module:
    """The norm module that branch ``branch`` of ``num`` uses (a variable norm's copy, or the norm itself)."""
    if isinstance(norm, VariableNormMixin) and branch < num - 1:
        return norm.aux_norms[branch]
    return norm


def foldable(norm: nn.Module) -> bool:
    """An eval-mode ``BatchNorm2d`` with running statistics (what :func:`fold_batchnorm` folds)."""
    return (isinstance(norm, _BatchNorm) and norm.track_running_stats and norm.running_mean is not None
            and isinstance(norm, nn.BatchNorm2d))


def bn_scale(bn: nn.Module) -> torch.Tensor:
    """``gamma / sqrt(running_var + eps)`` (C,) of a :func:`foldable` norm: what folding multiplies the weight by."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding convolution: (W * s, (b - mean) * s + beta),
    s = gamma / sqrt(var + eps) (Ioffe & Szegedy 2015, inference form).

    Args:
        weight: (Cout, Cin, kh, kw) float. bias: (Cout,) or None. bn: a :func:`foldable` norm over Cout.
    Returns:
        the folded (weight, bias), same shapes and dtype.
    """
    scale = bn_scale(bn)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    b = (b - bn.running_mean) * scale
    if bn.bias is not None:
        b = b + bn.bias
    return weight * scale.view(-1, 1, 1, 1), b
