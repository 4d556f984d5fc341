"""Seeded rain-streak synthesis with light / medium / heavy presets (docs/reference/architectures.md
6.2): sparse seeds, a line motion blur at an angle near vertical, levels normalisation to an intensity,
several layers for heavy rain, screen blend of white streaks over the image."""

from __future__ import annotations

from typing import Sequence

import torch

from dynprune.hookspecs import hookimpl

from .blur import convolve, line_kernel

__all__ = ["RainStreaks", "PRESETS"]

# density rho, length L (px), angle spread (deg), intensity alpha, layers
PRESETS = {
    "light": dict(density=(0.002, 0.004), length=(15, 25), spread=10.0, alpha=(0.5, 0.7), layers=(1, 1)),
    "medium": dict(density=(0.005, 0.008), length=(25, 40), spread=20.0, alpha=(0.7, 0.9), layers=(1, 2)),
    "heavy": dict(density=(0.008, 0.012), length=(35, 55), spread=30.0, alpha=(0.9, 1.0), layers=(3, 5)),
}


class RainStreaks:
    """Rain streak synthesizer; level i = ``levels[i]`` preset.

    Args:
        levels: preset names, easiest first.
        angle: mean streak angle in degrees from horizontal (90 = vertical).
    Call: ``(clean (B, C, H, W) in [0, 1], generator=None, level=None) -> (rainy, level)``.
    Raises:
        ValueError: an unknown preset (the presets are listed).
    """

    def __init__(self, levels: Sequence[str] = ("light", "medium", "heavy"), angle: float = 90.0):
        bad = [lv for lv in levels if lv not in PRESETS]
        if bad or not levels:
            raise ValueError(f"unknown rain preset(s) {bad}; accepted: {', '.join(PRESETS)}")
        self.names, self.levels, self.angle = list(levels), len(levels), float(angle)

    def describe_level(self, i: int) -> str:
        return f"rain {self.names[i]}"

    def streaks(self, h: int, w: int, preset: dict, g: torch.Generator | None) -> torch.Tensor:
        """One sample's streak map (H, W) in [0, 1]."""
        def uni(lo, hi):
            return lo + (hi - lo) * torch.rand(1, generator=g).item()

        lo, hi = preset["layers"]
        layers = int(torch.randint(lo, hi + 1, (1,), generator=g))
        theta = self.angle + uni(-preset["spread"], preset["spread"])
        total = torch.zeros(h, w)
        for _ in range(layers):
            rho = uni(*preset["density"])
            seeds = torch.rand(h, w, generator=g)
            s0 = seeds * (seeds > 1 - rho)
            s1 = convolve(s0.unsqueeze(0), line_kernel(uni(*preset["length"]), theta + uni(-5, 5)))[0].clamp_min(0)
            top = torch.quantile(s1.flatten()[:: max(1, s1.numel() // 200_000)], 0.999).clamp_min(1e-6)
            total = total + uni(*preset["alpha"]) * (s1 / top).clamp(0, 1)
        return total.clamp(0, 1)

    def __call__(self, clean, generator=None, level=None):
        n, _, h, w = clean.shape
        if level is None:
            level = torch.randint(0, self.levels, (n,), generator=generator)
        elif isinstance(level, int):
            level = torch.full((n,), level, dtype=torch.long)
        s = torch.stack([self.streaks(h, w, PRESETS[self.names[int(level[k])]], generator) for k in range(n)])
        s = s.unsqueeze(1).to(clean)
        return 1 - (1 - clean) * (1 - s), level


@hookimpl
def dynprune_register_degradations(register):
    register("rain_streaks", RainStreaks, "seeded rain streaks, light/medium/heavy presets, screen blend")
