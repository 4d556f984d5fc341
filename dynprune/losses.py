"""ClassPruning's losses (paper eq. 4-7): L_W, L_E, L_C and L_F, plus stage 1's cross-entropy."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["weighted_reconstruction", "entropy_loss", "cost_loss", "final_loss", "classifier_loss"]

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weighted_reconstruction(probs: torch.Tensor, outputs: Sequence[torch.Tensor], target: torch.Tensor,
                            loss: PerSampleLoss) -> torch.Tensor:
    """L_W = sum_i p_i(y) * loss(f_i(y), x), averaged over the batch (eq. 6; ``loss`` = L1 in the paper).

    Args:
        probs: (B, L) class probabilities. outputs: L tensors (B, C, H, W). target: (B, C, H, W).
        loss: per-sample loss (pred, target) -> (B,).
    Raises:
        ValueError: len(outputs) != L.
    """
    if len(outputs) != probs.shape[1]:
        raise ValueError(f"{len(outputs)} branch outputs for {probs.shape[1]} probabilities")
    per_branch = torch.stack([loss(o, target) for o in outputs], dim=1)
    return (probs * per_branch).sum(1).mean()


def entropy_loss(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L_E = sum_i -p_i log p_i, batch mean (eq. 4). probs: (B, L)."""
    return -(probs * probs.clamp_min(eps).log()).sum(1).mean()


def cost_loss(probs: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """L_C = sum_i p_i C_i, batch mean (eq. 5). costs: (L,) relative MACs of each branch (audit)."""
    return (probs * costs.to(probs)).sum(1).mean()


def final_loss(probs, outputs, target, costs, loss: PerSampleLoss,
               weights: Sequence[float] = (1.0, 0.1, 0.1)) -> tuple[torch.Tensor, dict[str, float]]:
    """L_F = w1 L_W + w2 L_E + w3 L_C (eq. 7). Returns (L_F, {"L_W", "L_E", "L_C"} as floats)."""
    lw = weighted_reconstruction(probs, outputs, target, loss)
    le, lc = entropy_loss(probs), cost_loss(probs, costs)
    total = weights[0] * lw + weights[1] * le + weights[2] * lc
    return total, {"L_W": lw.item(), "L_E": le.item(), "L_C": lc.item()}


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage 1: cross-entropy on pseudo labels (paper 3.3). logits (B, L), labels int64 (B,)."""
    return F.cross_entropy(logits, labels)
