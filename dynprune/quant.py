"""Int8 quantization for deployment: scales, packing for the int8 vector kernel, and its exact reference.

Activations are uint8 with a per-tensor affine scale (``x ~ scale * (q - zero)``, zero point 0 after a
ReLU), weights int8 symmetric per output channel (``w ~ scale[o] * q``, q in [-127, 127]) on the *masked*,
BatchNorm-folded weight of one branch; products accumulate in int32 and each output is requantized with one
float multiplier and offset per channel (the standard x86 scheme: oneDNN, FBGEMM, PT2E's X86InductorQuantizer;
Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018, eqs. 1-7).

:func:`qconv_reference` defines the arithmetic; the kernel (:func:`dynprune.sparse_cpu.vec_qconv2d`) is
bit-exact against it, and it is the fallback on CPUs without the kernel's instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import sparse_cpu

__all__ = ["ActQuant", "act_qparams", "quantize", "dequantize", "quantize_weight", "QConvPacked",
           "pack_int8", "pack_int8_weights", "requantization", "qconv_reference", "unpack_int8"]

QMAX_W = 127


@dataclass(frozen=True)
class ActQuant:
    """A uint8 activation's affine quantization: real value = ``scale * (q - zero)``; ``scale`` > 0 (float32),
    ``zero`` in 0..255."""

    scale: float
    zero: int


def act_qparams(lo: float, hi: float) -> ActQuant:
    """The uint8 quantization covering [lo, hi] (widened to contain 0, so zero padding is exact).

    Raises:
        ValueError: non-finite bounds, or ``lo`` > ``hi``.
    """
    lo, hi = float(lo), float(hi)
    if not (torch.isfinite(torch.tensor([lo, hi])).all() and lo <= hi):
        raise ValueError(f"activation range [{lo}, {hi}] is not a finite interval: calibrate with finite images")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    scale = float(torch.tensor(scale, dtype=torch.float32))
    zero = int(min(255, max(0, round(-lo / scale))))
    return ActQuant(scale, zero)


def quantize(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    """float32 (any shape) -> uint8: ``clamp(round(x * inv) + zero, 0, 255)`` (half to even; ``inv`` the float32
    of 1 / scale), memory format kept. One pass in the int8 kernel's extension where it runs, the same values."""
    inv = float(torch.tensor(1.0 / q.scale, dtype=torch.float32))
    if x.dtype == torch.float32 and x.device.type == "cpu" and sparse_cpu.has_int8_kernel():
        return sparse_cpu.kernel().quantize_u8(x, inv, q.zero)
    return torch.clamp(torch.round(x * torch.tensor(inv, dtype=torch.float32)) + q.zero, 0, 255).to(torch.uint8)


def dequantize(x: torch.Tensor, q: ActQuant) -> torch.Tensor:
    """uint8 -> float32 ``scale * (x - zero)``."""
    return (x.float() - q.zero) * q.scale


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 weights: (Cout, Cin, kh, kw) float -> (int8 same shape in
    [-127, 127], scale (Cout,) float32); an all-zero channel gets scale 1."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).float()
    scale = torch.where(amax > 0, amax / QMAX_W, torch.ones_like(amax))
    q = torch.clamp(torch.round(w.float() / scale.view(-1, 1, 1, 1)), -QMAX_W, QMAX_W).to(torch.int8)
    return q, scale


@dataclass
class QConvPacked:
    """One branch of one convolution for :func:`dynprune.sparse_cpu.vec_qconv2d`.

    values (B, taps, K/4, V, 4) int8: per block of V output channels, tap and group of 4 kept input channels,
    the 4 weights of every output channel; gidx (taps, cb) uint8: the input channel of each compacted byte
    (block b's K channels at [b*K, b*K + K)); acc0 (B*V,) int32, scale (B*V,) and shift (B*V,) float32:
    the requantization (:func:`qconv_reference`).
    """

    values: torch.Tensor
    gidx: torch.Tensor
    acc0: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


def pack_int8_weights(wq: torch.Tensor, mask: torch.Tensor, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack int8 weights ``wq`` (Cout, Cin, kh, kw) kept by ``mask`` (a vector pattern of block ``v``; an all-True
    mask packs the dense weight) for the int8 kernel. Machine-independent.

    Returns:
        ``values`` (B, taps, K/4, V, 4) int8 (K padded to a multiple of 4 with zero weights on channel 0),
        ``gidx`` (taps, cb) uint8 (cb = B*K rounded up to 64) and ``wsum`` (B*V,) int32, the sum of each output
        channel's kept weights (for the input zero point).
    Raises:
        ValueError: a mask that is not a vector pattern of ``v`` (:func:`dynprune.sparse_cpu.compress_vector`), or
            more than 256 input channels (one byte per channel index).
    """
    cout, cin, kh, kw = wq.shape
    if cin > 256:
        raise ValueError(f"the int8 kernel takes at most 256 input channels, got {cin}")
    vals, index, _ = sparse_cpu.compress_vector(wq.float(), mask, v)               # (B, T, K, V) exact small integers
    blocks, taps, k, _ = vals.shape
    k4 = -(-k // 4) * 4
    if k4 != k:
        vals = F.pad(vals, (0, 0, 0, k4 - k))
        index = F.pad(index, (0, k4 - k))
    values = vals.view(blocks, taps, k4 // 4, 4, v).permute(0, 1, 2, 4, 3).to(torch.int8).contiguous()
    cb = -(-blocks * k4 // 64) * 64
    gidx = torch.zeros(taps, cb, dtype=torch.uint8)
    gidx[:, : blocks * k4] = index.permute(1, 0, 2).reshape(taps, blocks * k4).to(torch.uint8)
    wsum = torch.zeros(blocks * v, dtype=torch.int32)
    wsum[:cout] = (wq.long() * mask).sum((1, 2, 3)).to(torch.int32)
    return values, gidx, wsum


def requantization(wsum: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor, act_in: ActQuant,
                   act_out: ActQuant | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(acc0 int32, scale float32, shift float32), each (len(wsum),): the accumulator's start ``-zin * wsum``
    (the input zero point) and the per-channel ``scale = s_in * s_w / s_out``, ``shift = bias / s_out``
    (``s_out`` = 1 for float output) of :func:`qconv_reference`; channels past ``len(w_scale)`` are zero."""
    n, cout = wsum.numel(), w_scale.numel()
    s_out = act_out.scale if act_out is not None else 1.0
    scale, shift = torch.zeros(n), torch.zeros(n)
    scale[:cout] = (torch.tensor(act_in.scale, dtype=torch.float32) * w_scale.float()) / s_out
    shift[:cout] = bias.float() / s_out
    return (-act_in.zero * wsum.long()).to(torch.int32), scale, shift


def pack_int8(wq: torch.Tensor, mask: torch.Tensor, v: int, w_scale: torch.Tensor, bias: torch.Tensor,
              act_in: ActQuant, act_out: ActQuant | None) -> QConvPacked:
    """:func:`pack_int8_weights` and :func:`requantization` in one :class:`QConvPacked`, for input quantization
    ``act_in`` and output ``act_out`` (None: float32 output)."""
    values, gidx, wsum = pack_int8_weights(wq, mask, v)
    return QConvPacked(values, gidx, *requantization(wsum, w_scale, bias, act_in, act_out))


def unpack_int8(values: torch.Tensor, gidx: torch.Tensor, cout: int, cin: int,
                kernel_size: tuple[int, int]) -> torch.Tensor:
    """The dense int8 weight (Cout, Cin, kh, kw) (zeros where pruned) that :func:`pack_int8_weights`'s
    ``values`` and ``gidx`` encode."""
    return sparse_cpu.decompress_grouped(values, gidx, cout, cin, kernel_size).round().to(torch.int8)


def qconv_reference(xq: torch.Tensor, act_in: ActQuant, wq: torch.Tensor, p: QConvPacked, padding: tuple[int, int],
                    dilation: tuple[int, int], relu: bool, act_out: ActQuant | None) -> torch.Tensor:
    """The int8 convolution's arithmetic, exact: uint8 ``xq`` (B, Cin, H, W) with zero point ``act_in.zero``
    (padding reads the zero point), int8 ``wq`` (Cout, Cin, kh, kw) -> int32 accumulators (exact in float64)
    -> ``float32(acc) * scale + shift`` (two float32 roundings) -> ``relu``; uint8 (B, Cout, Ho, Wo) with
    zero point ``act_out.zero`` (clamped, rounded half to even) or float32 when ``act_out`` is None."""
    cout = wq.shape[0]
    x = F.pad(xq.double() - act_in.zero, (padding[1], padding[1], padding[0], padding[0]))
    acc = F.conv2d(x, wq.double(), dilation=dilation).to(torch.int64).to(torch.int32)   # exact: |acc| < 2^31
    scale, shift = p.scale[:cout].view(1, -1, 1, 1), p.shift[:cout].view(1, -1, 1, 1)
    f = acc.float() * scale + shift
    if act_out is None:
        return torch.relu(f) if relu else f
    z = act_out.zero
    f = torch.clamp(f, 0.0 if relu else float(-z), float(255 - z))
    return (torch.round(f) + z).to(torch.uint8)
