"""Per-sample reconstruction losses for L_W (ClassPruning eq. 6 uses L1)."""

from __future__ import annotations

import torch

from dynprune.hookspecs import hookimpl

__all__ = ["l1", "mse", "Charbonnier"]


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample, (B,)."""
    return (pred - target).abs().flatten(1).mean(1)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, (B,)."""
    return (pred - target).square().flatten(1).mean(1)


class Charbonnier:
    """sqrt((pred - target)^2 + eps^2) averaged per sample, (B,); eps=1e-3 as in BasicSR."""

    def __init__(self, eps: float = 1e-3):
        self.eps = float(eps)

    def __call__(self, pred, target):
        return ((pred - target).square() + self.eps ** 2).sqrt().flatten(1).mean(1)


@hookimpl
def dynprune_register_losses(register):
    register("l1", lambda: l1, "mean absolute error (ClassPruning L_W)")
    register("mse", lambda: mse, "mean squared error")
    register("charbonnier", Charbonnier, "Charbonnier (smooth L1), eps=1e-3")
