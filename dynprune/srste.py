"""SR-STE's decay, once per optimizer update.

SR-STE (Zhou et al., ICLR 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From
Scratch", eq. 4) updates a weight W trained through an N:M mask m as

    W <- W - lr * (g(W * m) + lambda_w * (1 - m) * W),

so the pruned weights decay by lambda_w once per update. Adding the decay inside backward would add it
once per *use* of the weight (twice in a network that applies a layer twice, as RESCAN's stages and
SRN's scales do), once per micro-batch under gradient accumulation, and scaled by AMP's loss scale.
Here a dynamic layer only records which of its sparse branches ran with gradients; a global
``torch.optim`` step pre-hook (installed on first use) adds ``lambda_w * (1 - m_b) * W`` to the
gradient once for each recorded branch b, right before the optimizer's update (after
``GradScaler.unscale_``), and clears the record. Nested branches that train one shared weight in one
update each contribute their own term, once. Loops that update weights without a ``torch.optim``
optimizer call :func:`apply_decay` themselves before their update.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

__all__ = ["apply_decay", "pending"]

_LAYERS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_HOOK = None


def track(layer: nn.Module) -> None:
    """Register a dynamic layer so the optimizer hook sees its recorded branches (idempotent)."""
    global _HOOK
    _LAYERS.add(layer)
    if _HOOK is None:
        _HOOK = register_optimizer_step_pre_hook(_before_step)


def _decay_layer(layer: nn.Module) -> int:
    used = getattr(layer, "_nm_used", None)
    if not used or not any(used):
        return 0
    w = layer._parameters["weight"]
    count = 0
    if w.grad is not None and layer.nm_decay > 0:
        with torch.no_grad():
            for b, was_used in enumerate(used):
                if was_used:
                    w.grad.add_(w * ~layer.branch_mask(b), alpha=layer.nm_decay)
                    count += 1
    layer._nm_used = [False] * len(used)
    return count


def apply_decay(model: nn.Module) -> int:
    """Add SR-STE's decay to the gradients of ``model``'s dynamic layers for every sparse branch that
    ran with gradients since the last update, once each, and clear the record. ``torch.optim``
    optimizers do this themselves in ``step()``; call it only before a hand-written update.

    Returns:
        The number of (layer, branch) decay terms added.
    """
    return sum(_decay_layer(m) for m in model.modules() if m in _LAYERS)


def pending(model: nn.Module) -> dict[str, list[int]]:
    """{layer name: branch indices recorded for the next update's decay} of ``model``."""
    return {name: [b for b, u in enumerate(m._nm_used) if u]
            for name, m in model.named_modules() if m in _LAYERS and any(getattr(m, "_nm_used", ()))}


def _before_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    layers = [m for m in list(_LAYERS) if any(getattr(m, "_nm_used", ()))]
    if not layers:
        return
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for layer in layers:
        w = layer._parameters.get("weight")
        if w is not None and id(w) in params:
            _decay_layer(layer)
