"""Learning-rate schedule of every dynprune training loop."""

from __future__ import annotations

import math

__all__ = ["cosine_lr"]


def cosine_lr(step: int, total: int, lr0: float, lr1: float) -> float:
    """Cosine annealing (Loshchilov & Hutter 2017) from lr0 at step 0 to lr1 at step ``total`` (and after)."""
    return lr1 + 0.5 * (lr0 - lr1) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
