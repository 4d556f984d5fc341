"""Haze by the atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d) (Koschmieder; RESIDE's
recipe, docs/reference/architectures.md 6.4). Without a depth map, a ground-plane prior stands in:
d(y) = (1 - y / H) ** gamma in [0, 1] (far at the top of the frame, near at the bottom), or a constant
depth ("homogeneous"). Difficulty level i = the beta range i.

A training patch is a crop of a scene, not a scene: with ``frame`` = F, an input shorter than F pixels is
taken as a random vertical window of a frame F pixels tall, so its depth spans only h / F of the ground
plane, as in a real crop. Without it, a 96 px patch carries the whole far-to-near haze ramp, which a
classifier learns as its cue and then never meets on whole images."""

from __future__ import annotations

from typing import Sequence

import torch

from dynprune.hookspecs import hookimpl

__all__ = ["Haze", "ground_plane_depth"]


def ground_plane_depth(h: int, w: int, gamma: float = 1.0, top: int = 0, frame: int | None = None) -> torch.Tensor:
    """Depth (H, W) in [0, 1] from the ground-plane prior d(y) = (1 - y/(F-1)) ** gamma over a frame of
    F = ``frame`` rows (default H), of which the input shows rows ``top`` .. ``top`` + H - 1."""
    f = h if frame is None else frame
    y = (torch.arange(h, dtype=torch.float32) + top) / max(f - 1, 1)
    return ((1 - y.clamp(0, 1)) ** gamma).view(h, 1).expand(h, w)


class Haze:
    """Seeded haze synthesizer.

    Args:
        betas: one (min, max) scattering range per level (RESIDE ITS: 0.6-1.8 in three buckets).
        airlight: (min, max) of the gray airlight A, within [0, 1] (ITS: 0.7-1.0).
        depth: "ground_plane" (default) or "homogeneous" (d = 1 everywhere); a depth map (B, 1, H, W) may
            also be passed per call.
        gamma: ground-plane exponent.
        frame: None (default: every input is a whole scene) or the height F in pixels of the scene an input
            shorter than F is a crop of (its rows drawn uniformly inside the frame; inputs of F rows or
            more stay whole scenes, so evaluation on whole images is unchanged).
    Raises:
        ValueError: betas < 0 or not increasing pairs, airlight outside [0, 1], unknown depth mode,
            frame < 2.
    """

    def __init__(self, betas: Sequence[Sequence[float]] = ((0.6, 1.0), (1.0, 1.4), (1.4, 1.8)),
                 airlight: Sequence[float] = (0.7, 1.0), depth: str = "ground_plane", gamma: float = 1.0,
                 frame: int | None = None):
        self.betas = [tuple(float(v) for v in b) for b in betas]
        if not self.betas or any(len(b) != 2 or b[0] < 0 or b[0] > b[1] for b in self.betas):
            raise ValueError(f"haze betas must be (min, max) ranges with 0 <= min <= max, got {list(betas)}")
        a = tuple(float(v) for v in airlight)
        if len(a) != 2 or not 0 <= a[0] <= a[1] <= 1:
            raise ValueError(f"haze airlight must be a (min, max) range inside [0, 1], got {list(airlight)}")
        if depth not in ("ground_plane", "homogeneous"):
            raise ValueError(f"unknown haze depth mode {depth!r}; accepted: 'ground_plane', 'homogeneous'")
        if frame is not None and int(frame) < 2:
            raise ValueError(f"haze frame must be a height in pixels >= 2 (or None), got {frame!r}")
        self.airlight, self.depth, self.gamma, self.levels = a, depth, float(gamma), len(self.betas)
        self.frame = None if frame is None else int(frame)

    def describe_level(self, i: int) -> str:
        return f"haze beta {self.betas[i][0]:g}-{self.betas[i][1]:g}"

    def __call__(self, clean, generator=None, level=None, depth: torch.Tensor | None = None):
        n, _, h, w = clean.shape
        if level is None:
            level = torch.randint(0, self.levels, (n,), generator=generator)
        elif isinstance(level, int):
            level = torch.full((n,), level, dtype=torch.long)
        u = torch.rand(n, 2, generator=generator)
        lo = torch.tensor([self.betas[int(i)][0] for i in level])
        hi = torch.tensor([self.betas[int(i)][1] for i in level])
        beta = (lo + (hi - lo) * u[:, 0]).view(n, 1, 1, 1)
        a = (self.airlight[0] + (self.airlight[1] - self.airlight[0]) * u[:, 1]).view(n, 1, 1, 1)
        if depth is None and self.depth == "homogeneous":
            depth = torch.ones(1, 1, h, w)
        elif depth is None and self.frame is not None and h < self.frame:
            tops = torch.randint(0, self.frame - h + 1, (n,), generator=generator).tolist()
            depth = torch.stack([ground_plane_depth(h, w, self.gamma, t, self.frame) for t in tops]).unsqueeze(1)
        elif depth is None:
            depth = ground_plane_depth(h, w, self.gamma).view(1, 1, h, w)
        t = torch.exp(-beta * depth.to(beta))
        return (clean * t.to(clean) + a.to(clean) * (1 - t.to(clean))).clamp(0, 1), level


@hookimpl
def dynprune_register_degradations(register):
    register("haze", Haze, "atmospheric scattering model, RESIDE-like A and beta, ground-plane depth fallback")
