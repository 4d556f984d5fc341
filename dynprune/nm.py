"""N:M ratios, nested N:M masks and the SR-STE gradient.

An N:M pattern keeps at most N non-zero weights in every group of M consecutive weights along a
layer's *reduction* (input-channel) axis, as in NVIDIA ASP and SR-STE (Zhou et al., ICLR 2021,
"Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"). One magnitude ordering
per group serves every ratio, so the masks of 1:4, 2:4 and 4:4 are nested.

The *pattern* (:class:`NMPattern`) says what one ordering ranks. ``element`` (the default, the paper's
and ASP's) ranks every weight on its own: each output channel keeps its own input channels, per tap. A
``vector<V>`` pattern ranks blocks of V consecutive output channels by their L2 norm: the block shares
the kept input channels of every group of M (per tap, or for all taps with ``-shared``), so a kernel
broadcasts each kept input value once into a whole SIMD vector of weights (1xN / vector-wise sparsity:
Lin et al., "1xN Pattern for Pruning CNNs", TPAMI 2023; Zhu et al., "Sparse Tensor Core", MICRO 2019).
Both patterns are "the element pattern of a score tensor": :func:`pattern_scores` reduces the weight to
one score per (block, input channel, tap) and :func:`expand_keep` lays the score's mask back on the weight.
"""

from __future__ import annotations

import math
import re
from collections import namedtuple
from typing import Literal, Union

import torch

__all__ = ["NMRatio", "RatioLike", "NMPattern", "PatternLike", "ELEMENT", "VECTOR_SIZES", "pattern_scores",
           "expand_keep", "parse_ratios", "nm_order", "mask_from_order", "nm_mask", "apply_mask", "MaskGrad", "covered", "grouped", "grouped_to_weight", "order_keeps_top", "pack_order",
           "unpack_order"]

MaskGrad = Literal["sr-ste", "ste", "masked"]
_RATIO_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class NMRatio(namedtuple("_NM", "n m")):
    """An N:M sparsity ratio: at most ``n`` non-zeros in every group of ``m`` weights.

    A named tuple of two ints (so ``torch.compile`` and ``torch.export`` trace it as constants and
    it pickles by value); ratios order as tuples, (n, m).

    Args:
        n: kept weights per group, 1 <= n <= m.
        m: group size along the reduction axis, m >= 1.

    Raises:
        TypeError: n or m is not an int. ValueError: n < 1, n > m, or m < 1.
    """

    __slots__ = ()

    def __new__(cls, n: int, m: int) -> "NMRatio":
        if isinstance(n, bool) or isinstance(m, bool) or not (isinstance(n, int) and isinstance(m, int)):
            raise TypeError(f"NMRatio needs integers, got n={n!r}, m={m!r}")
        if m < 1 or n < 1 or n > m:
            raise ValueError(f"invalid N:M ratio {n}:{m}: need 1 <= N <= M")
        return super().__new__(cls, int(n), int(m))

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

    def __repr__(self) -> str:
        return f"NMRatio({self.n}, {self.m})"


RatioLike = Union[str, NMRatio, "tuple[int, int]"]


def parse_ratios(ratios) -> tuple[NMRatio, ...]:
    """Parse and order ratios from sparsest to densest (branch order).

    Nested masks come from one magnitude ordering per group of M, so every sparse ratio of a set must
    share one M; a dense ratio ("k:k") keeps every weight and may use any k.

    Raises:
        ValueError: empty, duplicated densities, sparse ratios with different M (the ratios are named),
            or any invalid ratio.
    """
    if isinstance(ratios, (str, NMRatio)):
        ratios = [ratios]
    parsed = [NMRatio.parse(r) for r in ratios]
    if not parsed:
        raise ValueError("ratios is empty: give at least one N:M ratio, e.g. ['1:4', '2:4', '4:4']")
    if len({r.density for r in parsed}) != len(parsed):
        raise ValueError(f"duplicate densities in ratios {[str(r) for r in parsed]}")
    ms = sorted({r.m for r in parsed if not r.is_dense})
    if len(ms) > 1:
        raise ValueError(f"ratios {[str(r) for r in parsed]} mix M={', '.join(map(str, ms))}: nested masks need one M "
                         f"for every sparse ratio (a dense 'k:k' may use any k), e.g. ['1:8', '3:8', '8:8']")
    return tuple(sorted(parsed, key=lambda r: r.density))


_PATTERN_RE = re.compile(r"^\s*vector(\d+)?(-shared)?\s*$")
VECTOR_SIZES = (8, 16, 32)


class NMPattern(namedtuple("_Pattern", "v shared")):
    """Which weights one N:M ordering ranks together (see the module docstring).

    ``v`` = 1 is the element pattern; ``v`` in :data:`VECTOR_SIZES` ranks blocks of ``v`` consecutive
    output channels by their L2 norm (a partial last block, Cout not a multiple of v, is ranked on its own
    channels); ``shared`` also shares the kept input channels across all taps of a block. Written as
    ``"element"``, ``"vector16"`` or ``"vector16-shared"`` (``"vector"`` = ``"vector16"``).

    Raises:
        ValueError: unknown name (the valid ones listed), or ``v`` not in :data:`VECTOR_SIZES` (a divisor or
            multiple of the SIMD widths: 8 fp32 lanes on AVX2, 16 on AVX-512).
    """

    __slots__ = ()

    def __new__(cls, v: int = 1, shared: bool = False) -> "NMPattern":
        if isinstance(v, bool) or not isinstance(v, int) or (v != 1 and v not in VECTOR_SIZES):
            raise ValueError(f"vector size V={v!r} is not supported: V must be one of {list(VECTOR_SIZES)} (a "
                             f"divisor or multiple of the SIMD widths: 8 fp32 lanes on AVX2, 16 on AVX-512)")
        if v == 1 and shared:
            raise ValueError("the element pattern has no taps to share: use 'vector<V>-shared'")
        return super().__new__(cls, v, bool(shared))

    @classmethod
    def parse(cls, value: "PatternLike") -> "NMPattern":
        """Parse ``"element"``, ``"vector"``, ``"vector16"``, ``"vector8-shared"`` or an ``NMPattern``.

        Raises:
            ValueError: an unknown name or V (the valid ones named). TypeError: any other type.
        """
        if isinstance(value, NMPattern):
            return value
        if not isinstance(value, str):
            raise TypeError(f"invalid mask pattern {value!r}: expected a name like 'element' or 'vector16'")
        if value.strip() == "element":
            return ELEMENT
        match = _PATTERN_RE.match(value)
        if not match:
            raise ValueError(f"unknown mask pattern {value!r}: valid patterns are 'element', "
                             + ", ".join(f"'vector{v}'" for v in VECTOR_SIZES) + " (and '-shared' forms, e.g. "
                             "'vector16-shared'); 'vector' is 'vector16'")
        return cls(int(match.group(1) or 16), match.group(2) is not None)

    @property
    def is_vector(self) -> bool:
        return self.v > 1

    def __str__(self) -> str:
        return "element" if self.v == 1 else f"vector{self.v}" + ("-shared" if self.shared else "")

    def __repr__(self) -> str:
        return f"NMPattern({str(self)!r})"


ELEMENT = NMPattern()
PatternLike = Union[str, NMPattern]


def pattern_scores(weight: torch.Tensor, axis: int, pattern: NMPattern) -> torch.Tensor:
    """What ``pattern`` ranks: ``weight`` itself for the element pattern; for a vector pattern the squared
    L2 norm of every block of V output channels (the axis other than the reduction ``axis`` of 0 / 1),
    summed over all taps (dims 2..) too when ``shared``. Same order as the L2 norm, no square root.

    Args:
        weight: (Cout, Cin, *taps) with ``axis=1``, or (Cin, Cout, *taps) with ``axis=0`` (ConvTranspose).
    Returns:
        the weight for ``element``; else float32 shaped like the weight with the output axis ceil(Cout / V)
        long (and taps of size 1 when ``shared``). Differentiable, traceable by torch.compile/export.
    """
    if not pattern.is_vector:
        return weight
    out_axis = 1 - axis
    v, c = pattern.v, weight.shape[out_axis]
    sq = weight.float().square()
    if c % v:
        pad = [0, 0] * (weight.dim() - 1 - out_axis) + [0, v - c % v]
        sq = torch.nn.functional.pad(sq, pad)
    shape = list(sq.shape)
    sq = sq.reshape(*shape[:out_axis], shape[out_axis] // v, v, *shape[out_axis + 1:]).sum(out_axis + 1)
    if pattern.shared and sq.dim() > 2:
        sq = sq.sum(dim=tuple(range(2, sq.dim())), keepdim=True)
    return sq.contiguous()


def expand_keep(keep: torch.Tensor, weight_shape: torch.Size, axis: int, pattern: NMPattern) -> torch.Tensor:
    """Lay a mask of :func:`pattern_scores` back on the weight: every output channel of a block takes its
    block's row (and every tap its block's shared entry). The identity for the element pattern."""
    if not pattern.is_vector:
        return keep
    out_axis = 1 - axis
    keep = keep.repeat_interleave(pattern.v, dim=out_axis).narrow(out_axis, 0, weight_shape[out_axis])
    return keep.expand(weight_shape)


def covered(length: int, m: int) -> int:
    """Length of the part of a reduction axis that N:M covers: the first ``(length // m) * m`` entries."""
    return length // m * m


def grouped(weight: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """``weight`` as (pre, K/m, m, post): groups of m consecutive entries along the reduction ``axis`` (of
    length K) in dim 2. A view of a contiguous weight: no copy."""
    shape = weight.shape
    return weight.reshape(math.prod(shape[:axis]), shape[axis] // m, m, math.prod(shape[axis + 1:]))


def nm_order(weight: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """Rank of every weight inside its group of ``m`` along ``axis`` (0 = largest magnitude).

    Ties break towards the lower index, so masks are deterministic. For m <= 8 the ranks come from
    pairwise comparisons of the group's m slices (no sort: fast on CPU, and in operators every exporter
    supports; ONNX has no stable sort), for larger m from a stable argsort; both give the same ranks.

    Args:
        weight: any float tensor whose ``axis`` length is divisible by ``m``.
    Returns:
        uint8 tensor (int16 for m > 256) shaped (pre, K/m, m, post), see :func:`grouped`.
    """
    a = grouped(weight.detach(), axis, m).abs()
    dtype = torch.uint8 if m <= 256 else torch.int16
    if m <= 8:
        cols = a.unbind(2)
        ranks = []
        for i, ai in enumerate(cols):
            r = torch.zeros(ai.shape, dtype=dtype, device=a.device)
            for j, aj in enumerate(cols):
                if j != i:  # an earlier equal weight ranks first
                    r += (aj >= ai) if j < i else (aj > ai)
            ranks.append(r)
        return torch.stack(ranks, 2)
    idx = torch.argsort(-a, dim=2, stable=True)
    rank = torch.empty_like(idx)
    rank.scatter_(2, idx, torch.arange(m, device=a.device).view(1, 1, m, 1).expand_as(idx))
    return rank.to(dtype)


def mask_from_order(rank: torch.Tensor, n: int, weight_shape: torch.Size, axis: int) -> torch.Tensor:
    """Boolean mask shaped like the weight keeping ranks < n (see :func:`nm_order`).

    ``rank`` may cover only the first ``G * m`` entries of the reduction axis (a partly converted
    layer, see :func:`covered`); the rest of the axis is kept whole.
    """
    return grouped_to_weight(rank < n, weight_shape, axis)


def grouped_to_weight(sel: torch.Tensor, weight_shape: torch.Size, axis: int, rest: bool = True) -> torch.Tensor:
    """A per-group boolean ``sel`` (pre, G, m, post) laid out like the weight; the part of the reduction axis
    beyond ``G * m`` (a partly converted layer, see :func:`covered`) is ``rest``."""
    pre, g, m, post = sel.shape
    keep = sel.reshape(pre, g * m, post)
    k = weight_shape[axis]
    if g * m < k:
        keep = torch.cat([keep, keep.new_full((pre, k - g * m, post), rest)], dim=1)
    return keep.reshape(weight_shape)


def order_keeps_top(weight: torch.Tensor, rank: torch.Tensor, n: int, axis: int) -> bool:
    """Whether ``rank < n`` still selects the n largest magnitudes of every group of ``weight``.

    True when every kept weight is strictly larger than every dropped one of its group, or both are 0
    (then either choice gives the same masked weight). A few elementwise passes over the weight, no
    sort: this is how a cached ordering is checked against the current weight, whatever changed it.

    Args:
        weight: the covered part of the weight (axis length ``G * m``). rank: its :func:`nm_order`.
    """
    a = grouped(weight.detach(), axis, rank.shape[2]).abs()
    keep = rank < n
    kept = torch.where(keep, a, torch.inf).unbind(2)
    dropped = torch.where(keep, -1.0, a).unbind(2)
    kmin, dmax = kept[0], dropped[0]
    for k, d in zip(kept[1:], dropped[1:]):
        kmin, dmax = torch.minimum(kmin, k), torch.maximum(dmax, d)
    return bool(((kmin > dmax) | ((kmin == 0) & (dmax == 0))).all())


def _bits(m: int) -> int:
    return next(b for b in (1, 2, 4, 8) if (1 << b) >= m) if m <= 256 else 16


def pack_order(rank: torch.Tensor) -> torch.Tensor:
    """Pack a :func:`nm_order` rank into ceil(log2 m) bits per weight (rounded up to 1, 2, 4 or 8):
    2 bits for M=4, so a cached ordering costs 1/16 of the float32 weight. uint8 (int16 for m > 256)."""
    bits = _bits(rank.shape[2])
    per = 8 // bits if bits <= 8 else 1
    flat = rank.reshape(-1)
    if per == 1:
        return flat.clone()
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=rank.device)
    return (flat.view(-1, per) << shifts).sum(-1, dtype=torch.uint8)


def unpack_order(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_order`: the rank tensor of ``shape`` (pre, G, m, post)."""
    bits = _bits(shape[2])
    per = 8 // bits if bits <= 8 else 1
    numel = math.prod(shape)
    if per == 1:
        return packed[:numel].view(shape)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).view(-1)[:numel].view(shape)


def nm_mask(weight: torch.Tensor, ratio: RatioLike, axis: int = 1, partial: bool = False,
            pattern: PatternLike = "element") -> torch.Tensor:
    """Boolean N:M mask of ``weight`` (True = kept), magnitude top-N per group along ``axis``.

    Args:
        weight: e.g. a Conv2d weight (Cout, Cin/groups, kh, kw) with ``axis=1``.
        ratio: the N:M ratio.
        axis: the reduction axis; 1 for Conv/Linear, 0 for ConvTranspose.
        partial: when the axis length is not divisible by M, mask its first ``(K // M) * M`` entries
            and keep the rest (as :func:`dynprune.convert` does for such layers).
        pattern: :class:`NMPattern` or its name; a vector pattern ranks blocks of output channels.
    Raises:
        ValueError: the axis length is not divisible by M (and not ``partial``), or shorter than M; an
            unknown pattern.
    """
    r, pat = NMRatio.parse(ratio), NMPattern.parse(pattern)
    k = weight.shape[axis]
    span = covered(k, r.m)
    if span == 0 or (span != k and not partial):
        raise ValueError(f"axis {axis} of weight {tuple(weight.shape)} has length {k}, not divisible by M={r.m}")
    score = pattern_scores(weight.detach(), axis, pat)
    keep = mask_from_order(nm_order(score.narrow(axis, 0, span).contiguous(), axis, r.m), r.n, score.shape, axis)
    return expand_keep(keep, weight.shape, axis, pat)


class _MaskedWeight(torch.autograd.Function):
    """``weight * mask`` (or the given precomputed product) forward; straight-through backward, or only
    the kept weights' gradient (``masked``)."""

    @staticmethod
    def forward(weight, mask, masked: bool, product):
        return weight * mask if product is None else product

    @staticmethod
    def setup_context(ctx, inputs, output):  # the torch.func-compatible form
        _, mask, masked, _ = inputs
        ctx.save_for_backward(mask if masked else None)
        ctx.masked = masked

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad * mask if ctx.masked else grad), None, None, None


def apply_mask(weight: torch.Tensor, mask: torch.Tensor | None, mode: MaskGrad = "sr-ste",
               product: torch.Tensor | None = None) -> torch.Tensor:
    """Masked weight ``weight * mask`` with a trainable straight-through gradient.

    Modes: ``"sr-ste"`` and ``"ste"`` pass the gradient to every weight (SR-STE's decay on the
    pruned weights is not part of this gradient: it enters once per optimizer update, see
    :mod:`dynprune.srste`), ``"masked"`` gives only kept weights a gradient (ClassPruning's "STE"
    ablation).

    Args:
        weight: the dense weight (any shape, float). mask: bool, weight-shaped (may be None with
            ``product`` outside "masked" mode). product: ``weight * mask`` computed already (no history).
    Raises:
        ValueError: unknown mode, or no mask in "masked" mode.
    """
    if mode not in ("sr-ste", "ste", "masked"):
        raise ValueError(f"unknown mask gradient {mode!r}: expected 'sr-ste', 'ste' or 'masked'")
    if mask is None and (mode == "masked" or product is None):
        raise ValueError("apply_mask needs the mask in 'masked' mode and without a product")
    return _MaskedWeight.apply(weight, mask, mode == "masked", product)
