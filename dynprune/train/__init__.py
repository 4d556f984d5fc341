"""The shared training machinery: :class:`Run` (the step loop, checkpoints, resume, validation, logging),
:class:`Phase`, the schedule, the optimizer and EMA, and step-keyed DataLoader batches. Methods live in
:mod:`dynprune.methods`."""

from .data import StepBatches, batch_loader, sample_batch
from .optim import EMA, build_optimizer
from .run import Method, Phase, Run, config_differences
from .schedule import WarmupCosine, cosine_lr

__all__ = ["Run", "Phase", "Method", "config_differences", "StepBatches", "batch_loader", "sample_batch", "EMA",
           "build_optimizer", "WarmupCosine", "cosine_lr"]
