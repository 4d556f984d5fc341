"""Routing under an average-MACs budget: one Lagrange multiplier on the branches' costs.

The classifier's argmax (ClassPruning's rule) fixes the average cost of the routed model. A user who
needs a lower one moves the decision with a single number lam >= 0:

    branch(x) = argmax_k  log p_k(x) - lam * C_k,

``C_k`` the MACs of branch k as a fraction of the dense model's. This is the Lagrangian relaxation of
"maximise the classifier's log-likelihood of the chosen branches subject to mean cost <= budget": for a
fixed lam each image takes the branch with the best likelihood-minus-price, and the mean cost is
non-increasing in lam, so the smallest lam that meets a budget is found by bisection on calibration
images. The images that move first are those the classifier is least sure of, at the smallest cost
step. lam = 0 is the plain argmax.

"At most the budget" leaves compute unspent when the argmax already costs less. With ``fill`` the
budget is a target instead: lam may go below 0 (a subsidy for dense branches), and the least-sure images
move to denser branches until the mean cost reaches the budget, for a classifier that under-routes.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .audit import audit
from .classpruning import ClassPruning

__all__ = ["mean_cost", "solve_penalty", "calibrate_budget"]


def _choose(log_probs: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """Branch per image, int64 (N,): argmax_k(log p_k - lam C_k), in float64."""
    return (log_probs.double() - lam * costs.double()).argmax(1)


def mean_cost(log_probs: torch.Tensor, costs: torch.Tensor, lam: float, weights: torch.Tensor | None = None) -> float:
    """Mean branch cost of routing ``argmax_k(log_probs - lam * costs)``.

    Args:
        log_probs: (N, L) float, per image. costs: (L,) relative MACs per branch (dense = 1). Computed in
            float64, as :func:`solve_penalty` and :meth:`ClassPruning.classify` with a penalty do.
        weights: (N,) per-image weights (e.g. pixel counts; MACs scale with them), default equal.
    Returns:
        The weighted mean of the chosen branches' costs (a fraction of the dense MACs).
    """
    costs = costs.double()
    choice = _choose(log_probs, costs, lam)
    w = torch.ones(len(log_probs), dtype=torch.float64) if weights is None else weights.double()
    return float((costs[choice] * w).sum() / w.sum())


def solve_penalty(log_probs: torch.Tensor, costs: torch.Tensor, budget: float,
                  weights: torch.Tensor | None = None, iters: int = 60, fill: bool = False) -> float:
    """The smallest lam >= 0 (any real lam with ``fill``) with ``mean_cost(log_probs, costs, lam, weights)
    <= budget`` (bisection).

    Args:
        log_probs: (N, L) float. costs: (L,) strictly increasing (sparsest branch first), relative MACs.
        budget: the allowed mean cost, same unit as ``costs``.
        fill: also move images to denser branches (lam < 0) while the budget allows.
    Returns:
        lam (without ``fill``, 0.0 when the argmax already meets the budget); within ``2**-iters`` of the
        exact breakpoint (relative to the bracket), on its feasible side.
    Raises:
        ValueError: costs not strictly increasing or not one per column, or a budget below the cheapest
            branch's cost (infeasible; both numbers are named).
    """
    costs = costs.double()
    log_probs = log_probs.double()
    if costs.dim() != 1 or costs.numel() != log_probs.shape[1] or (costs.diff() <= 0).any():
        raise ValueError(f"costs must be strictly increasing, one per branch ({log_probs.shape[1]}); got {costs.tolist()}")
    if budget < costs[0].item() - 1e-12:
        raise ValueError(f"budget {budget:.4f} is below the cheapest branch's cost {costs[0].item():.4f}: "
                         f"no routing can meet it")
    under = mean_cost(log_probs, costs, 0.0, weights) <= budget
    if under and not fill:
        return 0.0
    if under:   # below this (negative) price every image takes the densest branch
        loss = (log_probs[:, :-1] - log_probs[:, -1:]) / (costs[-1] - costs[:-1])
        lo, hi = -(max(float(loss.max()), 0.0) + 1.0), 0.0
        if mean_cost(log_probs, costs, lo, weights) <= budget:
            return lo
    else:       # above this price every image takes the cheapest branch
        gain = (log_probs[:, 1:] - log_probs[:, :1]) / (costs[1:] - costs[0])
        lo, hi = 0.0, max(float(gain.max()), 0.0) + 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mean_cost(log_probs, costs, mid, weights) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


@torch.no_grad()
def calibrate_budget(model: ClassPruning, images: Iterable[torch.Tensor], budget: float,
                     audit_model: torch.nn.Module | None = None, fill: bool = False) -> dict:
    """Set ``model.route_penalty`` so that routing the calibration ``images`` costs at most ``budget``
    (with ``fill``, as close to it as the images allow: see :func:`solve_penalty`).

    Costs are fvcore's (:func:`dynprune.audit`), per image, the classifier included, as a fraction of the
    dense model's MACs, weighted by pixel count like :func:`dynprune.evaluate.evaluate` reports them.
    Calibrate on images the model will not be tested on (e.g. the training set, degraded at every level).

    Args:
        model: a ClassPruning model (its penalty is overwritten).
        images: degraded images, each (1, C, H, W) float32 in [0, 1].
        budget: mean MACs allowed, as a fraction of the dense model's (e.g. 0.58).
        audit_model: the model whose MACs are audited (default ``model``; a deployed model passes its
            dynamic original, as in :func:`dynprune.evaluate.evaluate`).
    Returns:
        ``{"budget", "penalty" (lam), "branch_costs", "classifier_cost", "images",
        "argmax_cost", "calibrated_cost", "argmax_routing", "calibrated_routing"}`` (costs are fractions
        of dense MACs, classifier included; routings are image counts per branch, sparsest first).
    Raises:
        ValueError: no images, or a budget no routing can meet (see :func:`solve_penalty`).
    """
    model.eval()
    logp, pixels, first = [], [], None
    for x in images:
        first = x if first is None else first
        logp.append(model.route_log_probs(x))
        pixels.append(x.shape[-1] * x.shape[-2])
    if first is None:
        raise ValueError("calibrate_budget() needs at least one calibration image")
    rep = audit(model if audit_model is None else audit_model, first)
    costs, cls = rep.relative_costs().double(), rep.classifier_macs / rep.dense_macs
    if budget < costs[0].item() + cls:
        raise ValueError(f"budget {budget:.4f} is below the cheapest routing's cost {costs[0].item() + cls:.4f} "
                         f"(branch {model.ratios[0]} plus the classifier, fractions of the dense MACs)")
    logp, w = torch.cat(logp), torch.tensor(pixels, dtype=torch.float64)
    lam = solve_penalty(logp, costs, budget - cls, w, fill=fill)
    model.route_penalty.copy_(lam * costs)
    L = len(costs)

    def routing(lam_: float) -> list[int]:
        return torch.bincount(_choose(logp, costs, lam_), minlength=L).tolist()

    return {"budget": budget, "penalty": lam, "branch_costs": costs.tolist(), "classifier_cost": cls,
            "images": len(pixels), "argmax_cost": mean_cost(logp, costs, 0.0, w) + cls,
            "calibrated_cost": mean_cost(logp, costs, lam, w) + cls,
            "argmax_routing": routing(0.0), "calibrated_routing": routing(lam)}
