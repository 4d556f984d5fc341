"""The learning-rate schedule of every dynprune training phase: linear warm-up, then cosine annealing.

The schedule is a closed-form function of (step, total steps), kept by a ``torch.optim.lr_scheduler``
scheduler so that its state travels in checkpoints like any torch scheduler's. Extending a run (``--resume``
with more epochs or steps) stretches the cosine over the new total: the steps already run keep the rates they
had, and from the resumed step on the rate follows the longer curve (a phase that had finished at
``lr_end`` restarts at the longer curve's value at that step, then anneals to ``lr_end`` again).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["cosine_lr", "WarmupCosine"]


def cosine_lr(step: int, total: int, lr0: float, lr1: float) -> float:
    """Cosine annealing (Loshchilov & Hutter, "SGDR", ICLR 2017) from lr0 at step 0 to lr1 at step
    ``total`` (and after)."""
    return lr1 + 0.5 * (lr0 - lr1) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def warmup_cosine_lr(step: int, steps: int, lr0: float, lr1: float, warmup: int = 0) -> float:
    """The rate at ``step`` of a phase of ``steps`` steps: ``lr0 * (step + 1) / (warmup + 1)`` for the first
    ``warmup`` steps (Goyal et al. 2017's linear warm-up), then :func:`cosine_lr` from lr0 to lr1 over the
    remaining steps (reaching lr1 at the last step)."""
    if step < warmup:
        return lr0 * (step + 1) / (warmup + 1)
    return cosine_lr(step - warmup, steps - 1 - warmup, lr0, lr1)


class WarmupCosine(LRScheduler):
    """:func:`warmup_cosine_lr` for every parameter group of ``optimizer`` (each group's ``initial_lr`` is
    lr0); ``last_epoch`` counts optimizer steps. The rate of step ``s`` is set before that step runs.

    Args:
        steps: the phase's number of steps. lr_end: lr1. warmup: warm-up steps (0: none).
        A resumed phase builds a new scheduler, then loads the optimizer's state and this one's (in that
        order): :meth:`load_state_dict` sets the rate of the step it resumes at.
    Raises:
        ValueError: ``warmup`` not smaller than ``steps``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, lr_end: float, warmup: int = 0):
        if warmup and warmup >= steps:
            raise ValueError(f"warmup_steps={warmup} must be smaller than the phase's {steps} steps")
        self.steps, self.lr_end, self.warmup = int(steps), float(lr_end), int(warmup)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [warmup_cosine_lr(self.last_epoch, self.steps, base, self.lr_end, self.warmup)
                for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step count and set every group's rate for the next step from this scheduler's own
        length (``steps``), so a resumed, extended phase follows the longer curve (module doc)."""
        keep = self.steps, self.lr_end, self.warmup
        super().load_state_dict(state_dict)
        self.steps, self.lr_end, self.warmup = keep
        self.at(self.last_epoch)

    def at(self, step: int) -> None:
        """Set every group's rate to that of ``step`` (the next step to run)."""
        self.last_epoch = int(step)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
