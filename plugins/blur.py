"""Blur synthesizers: the average of N consecutive sharp frames (GoPro; ClassPruning eq. 1 with the
difficulty class = N), and a single-image linear motion kernel of length L (class = L bucket) for data
without frame sequences (docs/reference/architectures.md 6.3)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dynprune.hookspecs import hookimpl

__all__ = ["line_kernel", "convolve", "average_frames", "blur_from_frames", "MotionBlur"]


def line_kernel(length: float, angle_deg: float) -> torch.Tensor:
    """Normalized (sum 1) line of ``length`` px at ``angle_deg`` from horizontal, rasterized by bilinear
    splatting into a k x k kernel, k the smallest odd size holding it. float32 (k, k).

    Raises:
        ValueError: length < 1.
    """
    if length < 1:
        raise ValueError(f"motion length must be >= 1 px, got {length}")
    k = int(math.ceil(length)) // 2 * 2 + 1
    c = k // 2
    t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(4 * length)))
    a = math.radians(angle_deg)
    xs, ys = c + t * math.cos(a), c - t * math.sin(a)
    ker = torch.zeros(k, k)
    x0, y0 = xs.floor().long(), ys.floor().long()
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).clamp(0, k - 1), (y0 + dy).clamp(0, k - 1)
        ker.index_put_((yi, xi), w, accumulate=True)
    return ker / ker.sum()


def convolve(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of (C, H, W) with a (k, k) kernel, reflect padding (replicate when the
    image is smaller than the kernel)."""
    k = kernel.shape[-1]
    mode = "reflect" if min(img.shape[-2:]) > k // 2 else "replicate"
    x = F.pad(img.unsqueeze(1), (k // 2,) * 4, mode=mode)
    return F.conv2d(x, kernel.to(img).view(1, 1, k, k)).squeeze(1)


def average_frames(frames: torch.Tensor, n: int, center: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurred, sharp): the mean of ``n`` consecutive frames (n odd) around ``center`` and that centre
    frame (GoPro's recipe; ClassPruning eq. 1). frames: (T, C, H, W) in [0, 1].

    Raises:
        ValueError: n even or < 1, or fewer than n frames around the centre (counts named).
    """
    if n < 1 or n % 2 == 0:
        raise ValueError(f"frame count n must be odd and >= 1, got {n}")
    t = frames.shape[0]
    center = t // 2 if center is None else center
    lo, hi = center - n // 2, center + n // 2 + 1
    if lo < 0 or hi > t:
        raise ValueError(f"{n} frames around frame {center} need frames {lo}..{hi - 1}, but the sequence has {t} "
                         f"frame(s)")
    return frames[lo:hi].mean(0), frames[center]


def blur_from_frames(root: str, n: int, center: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurred, sharp) from a folder of consecutive sharp frames (sorted by name), as GoPro was made.

    Raises:
        FileNotFoundError / ValueError: missing or empty folder; ValueError when the folder holds fewer
        frames than ``n`` around the centre (both counts named).
    """
    from dynprune.imageio import read_folder

    files, frames = read_folder(root)
    if len(frames) < n:
        raise ValueError(f"frame folder {root!r} holds {len(frames)} frame(s), fewer than the {n} asked")
    return average_frames(torch.stack(frames), n, center)


class MotionBlur:
    """Linear motion blur: per sample a length L ~ U(bucket of its level) and an angle ~ U[0, 180).

    Args:
        lengths: one (min, max) length range in pixels per difficulty level.
        noise: std of added Gaussian noise after blurring (0 = none); output clipped to [0, 1].
    Raises:
        ValueError: empty or invalid ranges.
    """

    def __init__(self, lengths: Sequence[Sequence[float]] = ((5, 11), (13, 21), (23, 35)), noise: float = 0.0):
        self.lengths = [tuple(float(v) for v in r) for r in lengths]
        if not self.lengths or any(len(r) != 2 or not 1 <= r[0] <= r[1] for r in self.lengths):
            raise ValueError(f"lengths must be (min, max) ranges with 1 <= min <= max, got {list(lengths)}")
        self.levels, self.noise = len(self.lengths), float(noise)

    def describe_level(self, i: int) -> str:
        return f"motion length {self.lengths[i][0]:g}-{self.lengths[i][1]:g} px"

    def __call__(self, clean, generator=None, level=None):
        n = clean.shape[0]
        if level is None:
            level = torch.randint(0, self.levels, (n,), generator=generator)
        elif isinstance(level, int):
            level = torch.full((n,), level, dtype=torch.long)
        u = torch.rand(n, 2, generator=generator)
        out = []
        for k in range(n):
            lo, hi = self.lengths[int(level[k])]
            out.append(convolve(clean[k], line_kernel(lo + (hi - lo) * u[k, 0].item(), 180 * u[k, 1].item())))
        y = torch.stack(out)
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=generator).to(y)
        return y.clamp(0, 1), level


@hookimpl
def dynprune_register_degradations(register):
    register("motion_blur", MotionBlur, "linear motion kernel, class = length bucket")
