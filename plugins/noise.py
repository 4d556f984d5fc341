"""Additive white Gaussian noise (AWGN), the DnCNN / ClassPruning denoising degradation.

y = x + n, n ~ N(0, (sigma/255)^2) per pixel and channel, on [0, 1] images; not clipped (DnCNN,
KAIR and the ClassPruning recipe do not clip; clipping biases the residual variance).
"""

from __future__ import annotations

import math

from typing import Sequence

import torch

from dynprune.hookspecs import hookimpl

__all__ = ["GaussianNoise"]


class GaussianNoise:
    """Seeded AWGN with fixed sigma levels or a blind range.

    Args:
        sigmas: noise levels on the 0-255 scale, one difficulty level each, e.g. (15, 25, 50).
        sigma_range: (lo, hi) for blind noise, sigma ~ U[lo, hi] per sample; ``levels`` equal bins
            of the range give the difficulty level.
        levels: number of bins in blind mode.
    Call: ``(clean (B,C,H,W) float, generator=None, level=None) -> (noisy, level int64 (B,))``.
    Raises:
        ValueError: both or neither of sigmas / sigma_range, or negative or non-finite sigma values.
    """

    def __init__(self, sigmas: Sequence[float] | None = (15, 25, 50), sigma_range: Sequence[float] | None = None,
                 levels: int = 3):
        if (sigmas is None) == (sigma_range is None):
            raise ValueError("GaussianNoise needs exactly one of sigmas=[...] or sigma_range=[lo, hi]")
        if sigmas is not None:
            self.sigmas = tuple(float(s) for s in sigmas)
            if not self.sigmas or not all(0 <= s < math.inf for s in self.sigmas):
                raise ValueError(f"sigmas must be non-empty, finite and >= 0 (0-255 scale), got {list(sigmas)}")
            self.range, self.levels = None, len(self.sigmas)
        else:
            lo, hi = (float(v) for v in sigma_range)
            if not 0 <= lo < hi < math.inf:
                raise ValueError(f"sigma_range must be finite with 0 <= lo < hi, got {list(sigma_range)}")
            self.sigmas, self.range, self.levels = None, (lo, hi), int(levels)

    def describe_level(self, i: int) -> str:
        if self.sigmas is not None:
            return f"sigma={self.sigmas[i]:g}"
        lo, hi = self.range
        w = (hi - lo) / self.levels
        return f"sigma in [{lo + i * w:g}, {lo + (i + 1) * w:g})"

    def sample_sigma(self, n: int, generator: torch.Generator | None = None,
                     level: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (n,) on the 0-255 scale, level int64 (n,))."""
        if self.sigmas is not None:
            if level is None:
                level = torch.randint(0, self.levels, (n,), generator=generator)
            return torch.tensor(self.sigmas)[level], level
        lo, hi = self.range
        sigma = lo + (hi - lo) * torch.rand(n, generator=generator)
        lvl = ((sigma - lo) / (hi - lo) * self.levels).long().clamp_(0, self.levels - 1)
        return sigma, lvl

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None,
                 level: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = clean.shape[0]
        if isinstance(level, int):
            level = torch.full((n,), level, dtype=torch.long)
        sigma, level = self.sample_sigma(n, generator, level)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        return clean + noise.to(clean.device) * (sigma / 255.0).view(-1, 1, 1, 1).to(clean), level


@hookimpl
def dynprune_register_degradations(register):
    register("gaussian_noise", GaussianNoise, "AWGN, sigma on the 0-255 scale (fixed levels or a blind range)")
