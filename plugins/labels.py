"""Difficulty labelers: class = degradation level (sigma index, frame count), or the paper's
residual-variance recipe (ClassPruning eq. 2-3), shared by every additive degradation."""

from __future__ import annotations

from typing import Sequence

import torch

from dynprune.hookspecs import hookimpl

__all__ = ["LevelLabeler", "ResidualVarianceLabeler", "InputPSNRLabeler"]


class LevelLabeler:
    """Label = the synthesizer's level index (sigma index for noise, N frames for blur).

    Raises:
        ValueError: a level outside [0, num_classes).
    """

    needs_level = True  # real pairs carry no level: they need a labeler that scores the pair

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)

    def check_degradation(self, degradation, name: str) -> None:
        """Refuse a degradation whose number of levels is not the number of branches (a level with no
        branch, or a branch no image is ever labelled for).

        Raises:
            ValueError: the two counts and the way out are named.
        """
        levels = getattr(degradation, "levels", None)
        if levels is not None and levels != self.num_classes:
            raise ValueError(f"degradation {name!r} has {levels} levels but the model has {self.num_classes} branches: "
                             "the level labeler needs one level per branch (give as many sigmas/levels as ratios, "
                             "or use the residual_variance labeler)")

    def __call__(self, clean, degraded, level):
        if level is None or int(level.max()) >= self.num_classes or int(level.min()) < 0:
            raise ValueError(f"levels {None if level is None else level.tolist()} do not fit "
                             f"{self.num_classes} classes; use the residual_variance labeler or match the counts")
        return degraded, level


class ResidualVarianceLabeler:
    """ClassPruning eq. 2-3: R = y - x; the class of Var(R) (per sample) among ``num_classes`` bins, and
    R rescaled to the median variance of that class: y_i = x + R * sqrt(median_i / Var(R)).

    Args:
        num_classes: L.
        edges: L-1 increasing variance thresholds between classes; ``medians``: L per-class median
            variances. Either give both, or call :meth:`fit` on a sample of residual variances.
        rescale: apply eq. 2 (else only classify).
    Raises:
        ValueError: wrong lengths or non-increasing edges; use before fitting.
    """

    def __init__(self, num_classes: int, edges: Sequence[float] | None = None, medians: Sequence[float] | None = None,
                 rescale: bool = True):
        self.num_classes, self.rescale = int(num_classes), rescale
        self.edges = self.medians = None
        if edges is not None or medians is not None:
            self.set_bins(edges, medians)

    def set_bins(self, edges, medians) -> None:
        edges = torch.as_tensor(edges, dtype=torch.float64)
        medians = torch.as_tensor(medians, dtype=torch.float64)
        if edges.numel() != self.num_classes - 1 or medians.numel() != self.num_classes:
            raise ValueError(f"need {self.num_classes - 1} edges and {self.num_classes} medians, "
                             f"got {edges.numel()} and {medians.numel()}")
        if (edges.diff() <= 0).any():
            raise ValueError(f"edges must increase, got {edges.tolist()}")
        self.edges, self.medians = edges, medians

    def fit(self, variances: torch.Tensor) -> "ResidualVarianceLabeler":
        """Equal-count bins of observed Var(R) values (1-D), medians per bin."""
        v = torch.sort(variances.double().flatten()).values
        if v.numel() < self.num_classes:
            raise ValueError(f"need at least {self.num_classes} variances to fit, got {v.numel()}")
        chunks = torch.tensor_split(v, self.num_classes)
        self.set_bins([c[0].item() for c in chunks[1:]], [c.median().item() for c in chunks])
        return self

    @staticmethod
    def variance(clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """Var(R) per sample, float64 (B,)."""
        return (degraded - clean).flatten(1).double().var(dim=1)

    score = variance  # what fit() takes, computed on training samples by the trainer

    def __call__(self, clean, degraded, level=None):
        if self.edges is None:
            raise ValueError("ResidualVarianceLabeler is not fitted: call fit(variances) or give edges and medians")
        var = self.variance(clean, degraded)
        labels = torch.bucketize(var, self.edges.to(var.device), right=True)
        if not self.rescale:
            return degraded, labels
        scale = (self.medians.to(var.device)[labels] / var.clamp_min(1e-12)).sqrt().to(clean.dtype)
        return clean + (degraded - clean) * scale.view(-1, *([1] * (clean.dim() - 1))), labels


class InputPSNRLabeler:
    """Difficulty of a real degraded/clean pair: the PSNR (dB, peak 1) of the degraded input against its clean
    image, per sample, in ``num_classes`` equal-count bins fitted on training samples; the highest PSNR
    (least degraded) is class 0, the sparsest branch, the lowest is the last, the densest. Works for any
    degradation, synthetic or real, since it reads only the pair; the images are not changed.

    Args:
        num_classes: L. edges: L-1 increasing PSNR thresholds (dB), or None to :meth:`fit`.
    Raises:
        ValueError: wrong number of edges, or edges that do not increase; use before fitting.
    """

    def __init__(self, num_classes: int, edges: Sequence[float] | None = None):
        self.num_classes = int(num_classes)
        self.edges = None
        if edges is not None:
            e = torch.as_tensor(edges, dtype=torch.float64)
            if e.numel() != self.num_classes - 1 or (e.diff() <= 0).any():
                raise ValueError(f"need {self.num_classes - 1} increasing PSNR edges (dB), got {e.tolist()}")
            self.edges = e

    @staticmethod
    def score(clean: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """PSNR (dB) of each degraded sample against its clean one, float64 (B,); a clean-sized degraded
        input is needed (restoration pairs, not SR)."""
        if degraded.shape != clean.shape:
            raise ValueError(f"input_psnr compares the degraded input with its clean image, but their shapes differ "
                             f"({tuple(degraded.shape)} vs {tuple(clean.shape)}, e.g. SR pairs): use another labeler")
        mse = (degraded.double() - clean.double()).pow(2).flatten(1).mean(1)
        return -10 * torch.log10(mse.clamp_min(1e-12))

    def fit(self, scores: torch.Tensor) -> "InputPSNRLabeler":
        """Equal-count bins of observed input PSNRs (1-D, dB)."""
        v = torch.sort(scores.double().flatten()).values
        if v.numel() < self.num_classes:
            raise ValueError(f"need at least {self.num_classes} samples to fit, got {v.numel()}")
        self.edges = torch.stack([c[0] for c in torch.tensor_split(v, self.num_classes)[1:]])
        return self

    def __call__(self, clean, degraded, level=None):
        if self.edges is None:
            raise ValueError("InputPSNRLabeler is not fitted: call fit(scores) or give edges")
        bins = torch.bucketize(self.score(clean, degraded), self.edges.to(clean.device), right=True)
        return degraded, (self.num_classes - 1 - bins).long()


@hookimpl
def dynprune_register_labelers(register):
    register("level", LevelLabeler, "class = the degradation level (sigma index, frame count)")
    register("residual_variance", ResidualVarianceLabeler, "ClassPruning eq. 2-3: Var(R) bins, R rescaled to the class median")
    register("input_psnr", InputPSNRLabeler, "real pairs: bins of the degraded input's PSNR against its clean image")
