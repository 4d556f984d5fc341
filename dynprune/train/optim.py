"""The optimizer of a training phase and the exponential moving average of the restorer (``optim`` config)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["build_optimizer", "EMA"]


def build_optimizer(params: Iterable, cfg, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``AdamW`` (``cfg.name``) over ``params`` (tensors or parameter groups) at rate
    ``lr`` with ``cfg.betas`` and ``cfg.weight_decay`` (an :class:`~dynprune.config.OptimConfig`)."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return kind(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class EMA:
    """An exponential moving average of a module's parameters (``torch.optim.swa_utils.AveragedModel`` with
    ``get_ema_multi_avg_fn(decay)``): ``p_ema <- decay * p_ema + (1 - decay) * p`` per :meth:`update`, the
    first update copying ``p``. Buffers (e.g. BatchNorm statistics) are not averaged: the live module's are
    used (as BasicSR does).

    Args:
        module: the module averaged (e.g. a ClassPruning model's restorer). decay: in (0, 1).
    """

    def __init__(self, module: nn.Module, decay: float):
        self.module = module
        self.average = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    def update(self) -> None:
        """Average in the module's current parameters (call after each optimizer step)."""
        self.average.update_parameters(self.module)

    def parameters(self) -> dict[str, torch.Tensor]:
        """{name: averaged parameter} in the module's own names."""
        return {k: p.detach() for k, p in self.average.module.named_parameters()}

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)

    def copy_to(self) -> None:
        """Write the averaged parameters into the module (for good: a finished run's model)."""
        with torch.no_grad():
            live = dict(self.module.named_parameters())
            for k, v in self.parameters().items():
                live[k].copy_(v)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The module runs with the averaged parameters inside the context, its own after."""
        with torch.no_grad():
            live = {k: p.detach().clone() for k, p in self.module.named_parameters()}
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.module.named_parameters():
                    p.copy_(live[k])
