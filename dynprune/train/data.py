"""Training batches: each batch a pure function of (seed, stream, step), built in DataLoader workers.

:class:`StepBatches` is a map-style dataset whose item ``step`` is the whole batch of that step: the
patches drawn by a seeded permutation per epoch, degraded with a generator seeded per step, and labelled.
A ``torch.utils.data.DataLoader`` over the steps still to run (``batch_size=None``) builds them in its
worker processes (degradation and labelling included), with prefetching and, on a GPU, pinned memory.
Because nothing depends on the worker count or on the steps before, a resumed run sees exactly the batches
an uninterrupted one would, with 0 or any number of workers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["sample_batch", "StepBatches", "batch_loader"]


def sample_batch(dataset, degrade, seed: int, stream: int, step: int, batch_size: int, steps_per_epoch: int):
    """Batch ``step`` of a seeded stream over ``dataset``: (clean (B, C, h, w), degraded, level int64 (B,)).

    Each epoch of ``steps_per_epoch`` steps draws a fresh permutation (seeded by ``seed``, ``stream`` and the
    epoch) and, for datasets with ``set_epoch``, fresh crops; the degradation is seeded per step.
    A dataset whose items are ``(degraded, clean)`` pairs (real pairs) is not degraded again: its batch's
    ``level`` is None, and the labeler decides the class.
    """
    epoch, k = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 7919 + stream * 104729 + epoch)
    perm = torch.randperm(len(dataset), generator=g)
    idx = perm[(k * batch_size) % len(perm):][: batch_size]
    if idx.numel() < batch_size:
        idx = torch.cat([idx, perm[: batch_size - idx.numel()]])
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(stream * 100_000 + epoch)
    items = [dataset[int(i)] for i in idx]
    if isinstance(items[0], (tuple, list)):
        return torch.stack([c for _, c in items]), torch.stack([d for d, _ in items]), None
    clean = torch.stack(items)
    g_noise = torch.Generator().manual_seed((seed * 31 + stream) * 1_000_003 + step)
    degraded, level = degrade(clean, generator=g_noise)
    return clean, degraded, level


class StepBatches(Dataset):
    """Item ``step`` = the training batch of that step (:func:`sample_batch`), optionally labelled.

    Args:
        dataset: clean patches (C, h, w), or ``(degraded, clean)`` pairs. degrade: the degradation plugin
            (unused for pairs). seed, stream: the run's seed and this phase's stream number.
        batch_size, steps_per_epoch: as in :func:`sample_batch`.
        labeler: ``(clean, degraded, level) -> (degraded, labels int64 (B,))``, or None (items are
            ``(clean, degraded, level)``).
    Items: ``(clean, degraded, labels, level)`` float32 (B, C, h, w) x2, int64 (B,) x2 with a labeler
    (``level`` = labels for pairs); ``(clean, degraded, level)`` without.
    """

    def __init__(self, dataset, degrade, seed: int, stream: int, batch_size: int, steps_per_epoch: int,
                 labeler: Callable | None = None):
        self.dataset, self.degrade, self.labeler = dataset, degrade, labeler
        self.seed, self.stream, self.batch_size, self.spe = seed, stream, batch_size, steps_per_epoch

    def __len__(self) -> int:
        return 2**62  # steps are unbounded; the sampler says which to build

    def __getitem__(self, step: int):
        clean, degraded, level = sample_batch(self.dataset, self.degrade, self.seed, self.stream, step,
                                              self.batch_size, self.spe)
        if self.labeler is None:
            return clean, degraded, level
        degraded, labels = self.labeler(clean, degraded, level)
        return clean, degraded, labels, labels if level is None else level


def batch_loader(batches: Dataset, start: int, stop: int, workers: int = 0, prefetch: int = 2,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding ``batches[start]``, ..., ``batches[stop - 1]`` in order, built by ``workers``
    processes (0: in this process), each keeping ``prefetch`` batches ahead; ``pin_memory`` for a GPU."""
    return DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
                      prefetch_factor=prefetch if workers else None, pin_memory=pin_memory,
                      persistent_workers=False)
