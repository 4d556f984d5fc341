"""N:M ratios, nested N:M masks and the SR-STE gradient.

An N:M pattern keeps at most N non-zero weights in every group of M consecutive weights along a
layer's *reduction* (input-channel) axis, as in NVIDIA ASP and SR-STE (Zhou et al., ICLR 2021,
"Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"). One magnitude ordering
per group serves every ratio, so the masks of 1:4, 2:4 and 4:4 are nested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Union

import torch

__all__ = ["NMRatio", "RatioLike", "parse_ratios", "nm_order", "mask_from_order", "nm_mask",
           "apply_mask", "MaskGrad"]

MaskGrad = Literal["sr-ste", "ste", "masked"]
_RATIO_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class NMRatio:
    """An N:M sparsity ratio: at most ``n`` non-zeros in every group of ``m`` weights.

    Args:
        n: kept weights per group, 1 <= n <= m.
        m: group size along the reduction axis, m >= 1.

    Raises:
        ValueError: n < 1, n > m, or m < 1.
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise TypeError(f"NMRatio needs integers, got n={self.n!r}, m={self.m!r}")
        if self.m < 1 or self.n < 1 or self.n > self.m:
            raise ValueError(f"invalid N:M ratio {self.n}:{self.m}: need 1 <= N <= M")

    @classmethod
    def parse(cls, value: "RatioLike") -> "NMRatio":
        """Parse ``"2:4"``, ``(2, 4)`` or an ``NMRatio``.

        Raises:
            ValueError: malformed string or out-of-range numbers (the value is named).
            TypeError: any other type.
        """
        if isinstance(value, NMRatio):
            return value
        if isinstance(value, str):
            match = _RATIO_RE.match(value)
            if not match:
                raise ValueError(f"invalid N:M ratio {value!r}: expected a string like '2:4'")
            try:
                return cls(int(match.group(1)), int(match.group(2)))
            except ValueError as err:
                raise ValueError(f"invalid N:M ratio {value!r}: need 1 <= N <= M") from err
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return cls(int(value[0]), int(value[1]))
        raise TypeError(f"invalid N:M ratio {value!r}: expected 'N:M', (N, M) or NMRatio")

    @property
    def density(self) -> float:
        """Kept fraction N/M (the relative MACs of a converted layer)."""
        return self.n / self.m

    @property
    def is_dense(self) -> bool:
        return self.n == self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


RatioLike = Union[str, NMRatio, "tuple[int, int]"]


def parse_ratios(ratios) -> tuple[NMRatio, ...]:
    """Parse and order ratios from sparsest to densest (branch order).

    Raises:
        ValueError: empty, duplicated, or any invalid ratio.
    """
    if isinstance(ratios, (str, NMRatio)):
        ratios = [ratios]
    parsed = [NMRatio.parse(r) for r in ratios]
    if not parsed:
        raise ValueError("ratios is empty: give at least one N:M ratio, e.g. ['1:4', '2:4', '4:4']")
    if len({r.density for r in parsed}) != len(parsed):
        raise ValueError(f"duplicate densities in ratios {[str(r) for r in parsed]}")
    return tuple(sorted(parsed, key=lambda r: r.density))


def _grouped(weight: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """View ``weight`` as (..., K/m, m) with the reduction ``axis`` moved last."""
    w = weight.movedim(axis, -1)
    return w.reshape(*w.shape[:-1], w.shape[-1] // m, m)


def nm_order(weight: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """Rank of every weight inside its group of ``m`` along ``axis`` (0 = largest magnitude).

    Ties break towards the lower index (stable sort), so masks are deterministic.

    Args:
        weight: any float tensor whose ``axis`` length is divisible by ``m``.
    Returns:
        int16 tensor shaped like the grouped view (..., K/m, m).
    """
    g = _grouped(weight.detach(), axis, m)
    idx = torch.argsort(-g.abs(), dim=-1, stable=True)
    rank = torch.empty_like(idx)
    ar = torch.arange(m, device=g.device).expand_as(idx)
    rank.scatter_(-1, idx, ar)
    return rank.to(torch.int16)


def mask_from_order(rank: torch.Tensor, n: int, weight_shape: torch.Size, axis: int) -> torch.Tensor:
    """Boolean mask shaped like the weight keeping ranks < n (see :func:`nm_order`)."""
    keep = rank < n
    moved = list(weight_shape)
    moved.append(moved.pop(axis))
    return keep.reshape(moved).movedim(-1, axis)


def nm_mask(weight: torch.Tensor, ratio: RatioLike, axis: int = 1) -> torch.Tensor:
    """Boolean N:M mask of ``weight`` (True = kept), magnitude top-N per group along ``axis``.

    Args:
        weight: e.g. a Conv2d weight (Cout, Cin/groups, kh, kw) with ``axis=1``.
        ratio: the N:M ratio.
        axis: the reduction axis; 1 for Conv/Linear, 0 for ConvTranspose.
    Raises:
        ValueError: the axis length is not divisible by M.
    """
    r = NMRatio.parse(ratio)
    if weight.shape[axis] % r.m:
        raise ValueError(f"axis {axis} of weight {tuple(weight.shape)} has length {weight.shape[axis]}, "
                         f"not divisible by M={r.m}")
    return mask_from_order(nm_order(weight, axis, r.m), r.n, weight.shape, axis)


class _MaskedWeight(torch.autograd.Function):
    """w * mask forward; backward per ``mode`` (SR-STE, Zhou et al. 2021, eq. 4)."""

    @staticmethod
    def forward(ctx, weight, mask, mode: str, decay: float):
        ctx.save_for_backward(weight, mask)
        ctx.mode, ctx.decay = mode, decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        if ctx.mode == "masked":
            g = grad * mask
        elif ctx.mode == "sr-ste":
            g = grad + ctx.decay * (~mask) * weight
        else:  # "ste": straight through to every weight
            g = grad
        return g, None, None, None


def apply_mask(weight: torch.Tensor, mask: torch.Tensor, mode: MaskGrad = "sr-ste",
               decay: float = 2e-4) -> torch.Tensor:
    """Masked weight with a trainable straight-through gradient.

    Modes: ``"sr-ste"`` (gradient reaches every weight; pruned ones get the extra decay
    ``decay * (1 - mask) * W``, SR-STE with lambda_w = 2e-4), ``"ste"`` (plain straight-through,
    no decay), ``"masked"`` (only kept weights get a gradient; ClassPruning's "STE" ablation).

    Raises:
        ValueError: unknown mode.
    """
    if mode not in ("sr-ste", "ste", "masked"):
        raise ValueError(f"unknown mask gradient {mode!r}: expected 'sr-ste', 'ste' or 'masked'")
    return _MaskedWeight.apply(weight, mask, mode, float(decay))
