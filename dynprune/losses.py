"""ClassPruning's losses (paper eq. 4-7): L_W, L_E, L_C and L_F, plus stage 1's cross-entropy, and two
additions to the paper: a floor on every branch's L_W weight and output distillation from a dense teacher."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["weighted_reconstruction", "branch_weights", "distilled", "entropy_loss", "cost_loss", "final_loss",
           "classifier_loss"]

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


FLOOR_TO = ("all", "denser")


def branch_weights(probs: torch.Tensor, floor: float = 0.0, floor_to: str = "all") -> torch.Tensor:
    """Each branch's L_W weight per sample (rows sum to 1).

    ``floor_to="all"``: ``floor + (1 - L * floor) * p_i``. ``floor`` = 0 is the paper's eq. 6 (weights = the
    classifier's probabilities, near one-hot, so a branch sees almost only "its" level); ``floor`` = 1/L
    trains every branch on every image equally.

    ``floor_to="denser"``: ``floor * c_i + (1 - floor * sum_j c_j) * p_i`` with ``c_i = p_1 + ... + p_i`` (branches
    sparsest first) the probability that branch i is at least as dense as the image's: the floor goes only
    to the image's branch and the denser ones, which is what monotone capacity asks (an image sent to a
    denser branch than needed must still come out well), while a sparse branch spends none of its capacity
    on harder levels it never serves. With a one-hot p at branch k: ``floor`` on every branch >= k, 0 below.

    Args:
        probs: (B, L) class probabilities, float.
        floor: minimum weight, 0 <= floor <= 1/L.
        floor_to: ``"all"`` or ``"denser"``.
    Raises:
        ValueError: ``floor`` outside [0, 1/L], or an unknown ``floor_to``.
    """
    n = probs.shape[1]
    if not 0.0 <= floor <= 1.0 / n + 1e-12:
        raise ValueError(f"L_W floor {floor} is outside [0, 1/{n}] for {n} branches")
    if floor_to not in FLOOR_TO:
        raise ValueError(f"L_W floor_to {floor_to!r} is not one of {list(FLOOR_TO)}")
    if floor_to == "all":
        return floor + (1.0 - n * floor) * probs
    c = probs.cumsum(1)
    return floor * c + (1.0 - floor * c.sum(1, keepdim=True)) * probs


def weighted_reconstruction(probs: torch.Tensor, outputs: Sequence[torch.Tensor], target: torch.Tensor,
                            loss: PerSampleLoss, floor: float = 0.0, floor_to: str = "all") -> torch.Tensor:
    """L_W = sum_i w_i(y) * loss(f_i(y), x), averaged over the batch (eq. 6; ``loss`` = L1 in the paper),
    with w = :func:`branch_weights` (probs, floor, floor_to); ``floor`` = 0 gives w_i = p_i as in the paper.

    Args:
        probs: (B, L) class probabilities. outputs: L tensors (B, C, H, W). target: (B, C, H, W).
        loss: per-sample loss (pred, target) -> (B,).
    Raises:
        ValueError: len(outputs) != L, a floor outside [0, 1/L], or an unknown ``floor_to``.
    """
    if len(outputs) != probs.shape[1]:
        raise ValueError(f"{len(outputs)} branch outputs for {probs.shape[1]} probabilities")
    per_branch = torch.stack([loss(o, target) for o in outputs], dim=1)
    return (branch_weights(probs, floor, floor_to) * per_branch).sum(1).mean()


def distilled(loss: PerSampleLoss, teacher_out: torch.Tensor, alpha: float) -> PerSampleLoss:
    """Per-sample ``(1 - alpha) * loss(pred, target) + alpha * loss(pred, teacher_out)``: output-level
    knowledge distillation from a frozen dense teacher (Hinton et al. 2015, applied to the restored image as
    in SR distillation, e.g. Gao et al. 2018). ``alpha`` = 0 returns ``loss`` unchanged.

    Args:
        teacher_out: (B, C, H, W) float, the teacher's restoration of the same degraded batch.
        alpha: in [0, 1].
    Raises:
        ValueError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation weight {alpha} is outside [0, 1]")
    if alpha == 0.0:
        return loss
    return lambda pred, target: (1.0 - alpha) * loss(pred, target) + alpha * loss(pred, teacher_out)


def entropy_loss(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L_E = sum_i -p_i log p_i, batch mean (eq. 4). probs: (B, L)."""
    return -(probs * probs.clamp_min(eps).log()).sum(1).mean()


def cost_loss(probs: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """L_C = sum_i p_i C_i, batch mean (eq. 5). costs: (L,) relative MACs of each branch (audit)."""
    return (probs * costs.to(probs)).sum(1).mean()


def final_loss(probs, outputs, target, costs, loss: PerSampleLoss,
               weights: Sequence[float] = (1.0, 0.1, 0.1), floor: float = 0.0,
               floor_to: str = "all") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_F = w1 L_W + w2 L_E + w3 L_C (eq. 7; L_W with ``floor`` / ``floor_to``, see
    :func:`weighted_reconstruction`). Returns (L_F, {"L_W", "L_E", "L_C"} as detached 0-dim tensors: reading
    them is a host sync on a GPU, which the run loop does at logging steps only)."""
    lw = weighted_reconstruction(probs, outputs, target, loss, floor, floor_to)
    le, lc = entropy_loss(probs), cost_loss(probs, costs)
    total = weights[0] * lw + weights[1] * le + weights[2] * lc
    return total, {"L_W": lw.detach(), "L_E": le.detach(), "L_C": lc.detach()}


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage 1: cross-entropy on pseudo labels (paper 3.3). logits (B, L), labels int64 (B,)."""
    return F.cross_entropy(logits, labels)
