"""ClassSR's training (Kong et al., CVPR 2021) on the shared run loop: each branch pretrained with L1 on its
class of sub-images, then the Class-Module trained with soft routing through every branch (:mod:`dynprune.classsr`
has the model parts and losses). Both loops train on in-memory sub-images, without a run folder
(:class:`dynprune.train.Run` with ``folder=False``); every batch is a pure function of (seed, step)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from ..branch import each_branch
from ..classsr import classsr_loss
from ..config import StageConfig, TrainConfig
from ..train import Phase, Run

__all__ = ["SubImageBatches", "train_sr", "train_classsr_classifier"]


class SubImageBatches(Dataset):
    """Item ``step``: ``batch`` random (LR, HR) sub-image pairs drawn with a generator seeded by (seed, step),
    with one of the 8 flip/rotation modes applied to the whole batch when ``augment``.

    Args:
        lr: (n, C, h, w) and hr: (n, C, s*h, s*w) float32 in [0, 1].
    Raises:
        ValueError: empty data or mismatched counts.
    """

    def __init__(self, lr: torch.Tensor, hr: torch.Tensor, batch: int, seed: int, augment: bool):
        if lr.shape[0] == 0 or lr.shape[0] != hr.shape[0]:
            raise ValueError(f"need matching non-empty LR/HR sub-images, got {lr.shape[0]} and {hr.shape[0]}")
        self.lr, self.hr, self.batch, self.seed, self.augment = lr, hr, batch, seed, augment

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(0, self.lr.shape[0], (self.batch,), generator=g)
        x, y = self.lr[idx], self.hr[idx]
        if self.augment:
            k = int(torch.randint(0, 8, (1,), generator=g))
            x, y = (torch.rot90(t, k % 4, dims=(2, 3)) for t in (x, y))
            if k >= 4:
                x, y = x.flip(3), y.flip(3)
        return x, y


def _train(phase: Phase, seed: int, betas=(0.9, 0.999)) -> None:
    cfg = TrainConfig.model_validate({"seed": seed, "optim": {"betas": list(betas)}})
    Run(cfg, (), folder=False).fit(_Single(phase))


class _Single:
    """A method of one in-memory phase (nothing to checkpoint)."""

    def __init__(self, phase: Phase):
        self.phase = phase

    def phases(self) -> list[Phase]:
        return [self.phase]

    def checkpoint(self) -> dict:
        return {}


def train_sr(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, steps: int, batch: int = 32, lr_start: float = 1e-3,
             lr_end: float = 1e-5, seed: int = 0, desc: str = "train") -> float:
    """L1 training of an SR network on fixed sub-images (ClassSR's branch pretraining on one class):
    Adam, cosine LR, random batches with flips/rotations (:class:`SubImageBatches`). lr (n, 3, h, w),
    hr (n, 3, h*s, w*s) in [0, 1]. Returns the mean L1 of the last 50 steps.

    Raises:
        ValueError: empty data or mismatched counts.
    """
    tail: list[torch.Tensor] = []

    def loss(batch):
        x, y = batch
        value = (net(x) - y).abs().mean()
        tail[:] = (tail + [value.detach()])[-50:]  # read once at the end, not per step (a host sync on a GPU)
        return value, {}

    _train(Phase(name="sr", desc=desc, steps=steps, schedule=StageConfig(lr_start=lr_start, lr_end=lr_end),
                 params=net.parameters, batches=SubImageBatches(lr, hr, batch, seed, augment=True), loss=loss,
                 start=net.train), seed)
    net.eval()
    return float(sum(tail) / len(tail)) if tail else 0.0


def train_classsr_classifier(model: nn.Module, lr: torch.Tensor, hr: torch.Tensor, steps: int, batch: int = 32,
                             lr_start: float = 2e-4, lr_end: float = 1e-6, weights=(1000.0, 0.5, 3.0), seed: int = 0,
                             freeze_sr: bool = True) -> dict[str, float]:
    """ClassSR's stage 2: soft routing through every branch, loss :func:`~dynprune.classsr.classsr_loss`
    (Adam with betas (0.9, 0.99) as its configs); with ``freeze_sr`` (``fix_SR_module`` in ClassSR's configs)
    only the classifier trains. ``model`` is a :class:`~dynprune.classpruning.ClassPruning`. Returns the
    last step's loss parts."""
    parts: dict[str, float] = {}

    def start():
        model.classifier.train()
        model.restorer.train(not freeze_sr)

    def loss(batch):
        x, y = batch
        probs = model.classifier(x).softmax(1)
        with torch.set_grad_enabled(not freeze_sr):
            outs = each_branch(lambda i: model.restorer(x), model.num_branches)
        value, p = classsr_loss(probs, outs, y, weights)
        parts.update(p)
        return value, p

    params = model.classifier.parameters if freeze_sr else model.parameters
    _train(Phase(name="classifier", desc="ClassSR classifier", steps=steps,
                 schedule=StageConfig(lr_start=lr_start, lr_end=lr_end), params=params,
                 batches=SubImageBatches(lr, hr, batch, seed, augment=False), loss=loss, start=start), seed,
           betas=(0.9, 0.99))
    model.eval()
    return parts
