"""The CPU N:M sparse convolution kernel: build, ISA choice, weight packing, and its dense fallback.

The kernel (``dynprune/csrc``) is a direct, im2col-free fp32 convolution on channels-last activations:
stride 1, groups 1, any kernel size, padding and dilation, bias and ReLU fused. One SIMD register holds
L output channels (16 on AVX-512, 8 on AVX2); per kept entry, one permute hands every output lane its
own kept input channel from the pixel's loaded chunk and one FMA multiplies it by that lane's weight. Weights are stored per
branch in a *compressed* form that does not depend on the machine (:func:`compress`: the kept values and
their input-channel indices, ``N/M`` of the dense weight) and re-packed for the SIMD width on first use
(:func:`pack_for_kernel`). The vector-pattern kernel (:func:`vec_conv2d`, :func:`compress_vector`) lives in the
same extension. It is compiled at first use with ``torch.utils.cpp_extension`` and ninja (one line on stderr
says so: 1-2 minutes on 2 cores) into ``$DYNPRUNE_CACHE/kernels/<key>`` (default ``~/.cache/dynprune``), the
key a hash of the sources, flags, torch version and Python environment, so each virtual environment keeps its
own build and switching between them rebuilds nothing; nothing is downloaded.

ISA: AVX-512F when the CPU has it, else AVX2 + FMA; ``DYNPRUNE_ISA=avx2`` forces the AVX2 path (to test
it on an AVX-512 machine), ``DYNPRUNE_ISA=none`` disables the kernel. Where no kernel can run (no
compiler, no AVX2, a build error), :func:`kernel` returns None and warns once, naming the reason; the
callers then run the same weights densely through ``F.conv2d`` (identical results to float tolerance).
Threads follow ``torch.set_num_threads`` (output rows split over that many threads).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from .nm import VECTOR_SIZES
from .outputs import write_text

__all__ = ["kernel", "kernel_status", "build_dir", "vector_isa", "cpu_name", "lanes", "tune_allocator", "compress",
           "decompress", "pack_for_kernel", "nm_conv2d", "compress_vector", "decompress_vector", "decompress_grouped", "vec_conv2d", "lowp_kernel", "has_int8_kernel", "warn_lowp_fallback", "vec_qconv2d", "has_bf16_kernel", "pack_bf16", "vec_bf16conv2d",
           "SUPPORTED_M"]

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = ("nm_conv.cpp", "nm_conv_avx512.cpp", "nm_conv_avx2.cpp", "nm_conv_vnni.cpp", "nm_conv_bf16.cpp")
_HEADERS = ("nm_conv.h", "nm_conv_impl.h", "vec_conv_impl.h", "vec_qconv_impl.h", "tile_rows.h")
SUPPORTED_M = (2, 4, 8)   # M must divide the SIMD chunk (8 lanes on AVX2, 16 on AVX-512)
_ISA_NAMES = {"avx512": 512, "avx2": 256, "none": 0}
_status: dict[str, object] = {}


_NAME, _CFLAGS = "dynprune_nm_conv", ("-O3", "-ffp-contract=off", "-fopenmp")


def build_dir() -> Path:
    """Where this environment's build of the kernel lives: ``$DYNPRUNE_CACHE/kernels/nm_conv-<key>``, the key
    a hash of the sources and headers, compiler flags, torch version and ``sys.prefix`` (the environment)."""
    h = hashlib.sha256()
    for name in (*_SOURCES, *_HEADERS):
        h.update((_CSRC / name).read_bytes())
    h.update(repr((_CFLAGS, torch.__version__, sys.prefix, sys.version_info[:2])).encode())
    cache = Path(os.environ.get("DYNPRUNE_CACHE", Path.home() / ".cache" / "dynprune"))
    return cache / "kernels" / f"nm_conv-{h.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def _build() -> tuple[ModuleType | None, int, str]:
    """(extension, ISA bits, reason) -- the extension is None where it cannot run, with the reason."""
    forced = os.environ.get("DYNPRUNE_ISA", "").strip().lower()
    if forced and forced not in _ISA_NAMES:
        raise ValueError(f"DYNPRUNE_ISA={forced!r} is not one of {sorted(_ISA_NAMES)}")
    if forced == "none":
        return None, 0, "DYNPRUNE_ISA=none"
    try:
        # torch logs "No CUDA runtime is found" when this CPU-only build imports cpp_extension: not ours to show
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            return None, 0, "ninja is not installed (pip install ninja)"
        where = build_dir()
        if not (where / f"{_NAME}.so").is_file():
            print(f"dynprune: compiling the N:M CPU kernel for this environment, once (1-2 minutes on 2 cores) "
                  f"into {where}", file=sys.stderr, flush=True)
        where.mkdir(parents=True, exist_ok=True)
        ext = cpp_extension.load(name=_NAME, sources=[str(_CSRC / s) for s in _SOURCES], extra_cflags=list(_CFLAGS), extra_ldflags=["-fopenmp"],
                                 build_directory=str(where), verbose=False)
    except Exception as err:  # no compiler, headers or a build error: the dense path still runs
        lines = str(err).strip().splitlines() or [type(err).__name__]
        first = next((ln for ln in lines if "error" in ln.lower() and "Error building" not in ln), lines[0])
        return None, 0, f"the C++ kernel did not build ({type(err).__name__}: {first.strip()[:300]})"
    isa = int(ext.cpu_isa())
    if isa == 0:
        return None, 0, "this CPU has neither AVX-512F nor AVX2+FMA"
    if forced:
        want = _ISA_NAMES[forced]
        if want > isa:
            return None, 0, f"DYNPRUNE_ISA={forced} but this CPU only runs the {isa}-bit kernel"
        isa = want
    return ext, isa, ""


def kernel() -> ModuleType | None:
    """The compiled extension, or None (after one warning naming the reason) where it cannot run."""
    ext, _, reason = _build()
    if ext is None and not _status.get("warned"):
        _status["warned"] = True
        warnings.warn(f"dynprune: N:M CPU kernel unavailable, running the dense masked weights instead: {reason}",
                      RuntimeWarning, stacklevel=2)
    return ext


def tune_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Let glibc serve and keep large blocks from its heap (``mallopt`` M_MMAP_THRESHOLD and
    M_TRIM_THRESHOLD set to ``threshold_bytes``) instead of a fresh ``mmap`` per allocation.

    Every activation of a full-image restoration network is tens of MB (DnCNN on a 481x321 image: 39.5
    MB per layer), above glibc's 32 MB mmap cap, so each layer's output is otherwise a new mapping whose
    first touch page-faults (measured: a 64->64 3x3 oneDNN layer on 481x321 takes 85.6 ms with the default
    allocator, 70.4 ms tuned; docs/results.md). This is
    process-wide: memory freed by tensors is kept for reuse rather than returned to the OS. Returns
    True when both settings were accepted (False on a non-glibc platform, where nothing changes).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold_bytes))) and bool(libc.mallopt(-1, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


def kernel_status() -> dict[str, object]:
    """``{"available": bool, "isa": "avx512" | "avx2" | None, "reason": str}`` (builds on first call)."""
    ext, isa, reason = _build()
    return {"available": ext is not None, "isa": {512: "avx512", 256: "avx2"}.get(isa), "reason": reason}


def compress(weight: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Machine-independent compressed N:M form of a masked Conv2d weight.

    Args:
        weight: (Cout, Cin, kh, kw) float32 (values outside the mask are ignored).
        mask: bool, same shape, exactly ``n`` kept in every group of ``m`` consecutive input channels
            (the layout of :func:`dynprune.nm.nm_mask` with ``axis=1``).
    Returns:
        ``values`` float32 (Cout, kh*kw, Cin*n/m) and ``index`` int16 (same shape): the kept weights of
        each (output channel, tap) in ascending input-channel order, and those input channels.
    Raises:
        ValueError: Cin not divisible by ``m``, Cin >= 32768, or a group that does not keep exactly ``n``.
    """
    cout, cin, kh, kw = weight.shape
    if cin % m or cin >= 2 ** 15:
        raise ValueError(f"compress: Cin={cin} must be divisible by M={m} and below 32768")
    w = weight.detach().permute(0, 2, 3, 1).reshape(cout, kh * kw, cin // m, m)
    k = mask.permute(0, 2, 3, 1).reshape(cout, kh * kw, cin // m, m)
    counts = k.sum(-1)
    if not bool((counts == n).all()):
        bad = (counts != n).nonzero()[0].tolist()
        raise ValueError(f"compress: mask keeps {int(counts[tuple(bad)])} of {m} in group {bad} "
                         f"(output channel, tap, group), expected exactly {n}")
    pos = torch.argsort((~k).to(torch.int8), dim=-1, stable=True)[..., :n]       # kept positions, ascending
    values = torch.gather(w, -1, pos).reshape(cout, kh * kw, -1).contiguous()
    base = torch.arange(0, cin, m).view(1, 1, -1, 1)
    index = (base + pos).reshape(cout, kh * kw, -1).to(torch.int16).contiguous()
    return values, index


def decompress(values: torch.Tensor, index: torch.Tensor, cin: int, kernel_size: tuple[int, int]) -> torch.Tensor:
    """The dense (Cout, Cin, kh, kw) weight (zeros where pruned) of :func:`compress`'s output."""
    cout, taps, _ = values.shape
    w = values.new_zeros(cout, taps, cin).scatter_(2, index.long(), values)
    return w.reshape(cout, *kernel_size, cin).permute(0, 3, 1, 2).contiguous()


def lanes() -> int:
    """SIMD lanes of the active kernel (16 for AVX-512, 8 for AVX2; 0 without a kernel)."""
    return _build()[1] // 32


def pack_for_kernel(values: torch.Tensor, index: torch.Tensor, bias: torch.Tensor | None, cin: int, n: int, m: int,
                    lanes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Re-pack :func:`compress`'s output into the kernel layout for ``lanes`` SIMD lanes.

    Output channels are padded to blocks of ``lanes``, input channels to chunks of ``lanes`` (padded
    entries carry weight 0). Returns ``(values (B, T, C, J, L) float32, index int32 same shape (input
    channel inside its chunk), bias (B*L,) float32, J)`` with B output blocks, T taps, C chunks and
    J = (L/m)*n kept entries per output channel, tap and chunk.

    Raises:
        ValueError: ``m`` does not divide ``lanes``.
    """
    if lanes % m:
        raise ValueError(f"M={m} does not divide the kernel's {lanes} lanes; supported M: {SUPPORTED_M}")
    cout, taps, kept = values.shape
    chunks, blocks, J = -(-cin // lanes), -(-cout // lanes), lanes // m * n
    v = values.new_zeros(blocks * lanes, taps, chunks * J)
    i = torch.zeros(blocks * lanes, taps, chunks * J, dtype=torch.int64)
    v[:cout, :, :kept] = values
    # the k-th kept entry lies in chunk k // J (ascending input channels, n per group of m)
    i[:cout, :, :kept] = index.long() - (torch.arange(kept) // J * lanes).view(1, 1, -1)
    v = v.view(blocks, lanes, taps, chunks, J).permute(0, 2, 3, 4, 1).contiguous()
    i = i.view(blocks, lanes, taps, chunks, J).permute(0, 2, 3, 4, 1).to(torch.int32).contiguous()
    b = torch.zeros(blocks * lanes)
    if bias is not None:
        b[:cout] = bias.detach().float()
    return v, i, b, J


def nm_conv2d(x: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int], cout: int,
              kernel_size: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
              relu: bool = False) -> torch.Tensor:
    """Run the kernel: ``relu?(conv2d(x, W) + bias)``, stride 1, groups 1, W packed by :func:`pack_for_kernel`.

    Args:
        x: (B, Cin, H, W) float32 CPU tensor, channels_last memory (otherwise one copy is made).
    Returns:
        (B, cout, Ho, Wo) float32 in channels_last memory.
    Raises:
        RuntimeError: no kernel available (see :func:`kernel_status`), or shapes that do not match.
    """
    ext, isa, reason = _build()
    if ext is None:
        raise RuntimeError(f"the N:M CPU kernel is unavailable: {reason}")
    values, index, bias, J = packed
    return ext.nm_conv2d(x, values, index, bias, cout, kernel_size[0], kernel_size[1], padding[0], padding[1],
                         dilation[0], dilation[1], J, relu, isa)


def compress_vector(weight: torch.Tensor, mask: torch.Tensor, v: int,
                    bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compressed form of a Conv2d weight under a vector N:M pattern, for :func:`vec_conv2d` (it does not
    depend on the machine: V is the pattern's).

    Args:
        weight: (Cout, Cin, kh, kw) float (values outside the mask are ignored).
        mask: bool, same shape: every block of ``v`` consecutive output channels (the last one may be
            partial) keeps the same input channels at each tap, the same number K per (block, tap)
            (:func:`dynprune.nm.nm_mask` with a vector pattern).
        v: the pattern's V (8, 16 or 32). bias: (Cout,) or None.
    Returns:
        ``values`` float32 (B, kh*kw, K, v) (B = ceil(Cout / v), output channels zero-padded to B*v),
        ``index`` int32 (B, kh*kw, K): the kept input channels, ascending; ``bias`` float32 (B*v,).
    Raises:
        ValueError: ``v`` not in 8/16/32, or a mask that is not a vector pattern of V = ``v`` (the first block
            and tap that differ named).
    """
    if v not in VECTOR_SIZES:
        raise ValueError(f"compress_vector: V={v} is not one of {', '.join(map(str, VECTOR_SIZES))}")
    cout, cin, kh, kw = weight.shape
    blocks, taps = -(-cout // v), kh * kw
    keep = mask.reshape(cout, cin, taps)
    lead = keep[::v]                                          # (B, Cin, taps): each block's first channel
    same = (keep == lead.repeat_interleave(v, 0)[:cout]).all(dim=1)        # (Cout, taps)
    if not bool(same.all()):
        o, t = (~same).nonzero()[0].tolist()
        raise ValueError(f"compress_vector: output channel {o} keeps other input channels than its block's first "
                         f"(channel {o // v * v}) at tap {t}: not a vector{v} pattern")
    counts = lead.sum(1)                                       # (B, taps)
    if not bool((counts == counts.flatten()[0]).all()):
        raise ValueError(f"compress_vector: blocks keep different input-channel counts per tap "
                         f"({sorted(set(counts.flatten().tolist()))}); a vector N:M mask keeps the same number")
    k = int(counts.flatten()[0])
    # the kept channels of every (block, tap), ascending
    order = torch.argsort((~lead).permute(0, 2, 1).to(torch.int8), dim=-1, stable=True)[..., :k]  # (B, taps, K)
    w = torch.zeros(blocks * v, cin, taps, dtype=torch.float32)
    w[:cout] = (weight.detach() * mask).reshape(cout, cin, taps).float()
    w = w.view(blocks, v, cin, taps).permute(0, 3, 2, 1)       # (B, taps, Cin, v)
    values = torch.gather(w, 2, order.unsqueeze(-1).expand(-1, -1, -1, v)).contiguous()
    b = torch.zeros(blocks * v)
    if bias is not None:
        b[:cout] = bias.detach().float()
    return values, order.to(torch.int32).contiguous(), b


def decompress_vector(values: torch.Tensor, index: torch.Tensor, cout: int, cin: int,
                      kernel_size: tuple[int, int]) -> torch.Tensor:
    """The dense (Cout, Cin, kh, kw) weight (zeros where pruned) of :func:`compress_vector`'s output. Entries that
    name the same channel add up (the low-precision packings pad K with zero weights on channel 0)."""
    blocks, taps, k, v = values.shape
    w = values.new_zeros(blocks, taps, cin, v).scatter_add_(2, index.long().unsqueeze(-1).expand(-1, -1, -1, v), values)
    return w.permute(0, 3, 2, 1).reshape(blocks * v, cin, *kernel_size)[:cout].contiguous()


def decompress_grouped(values: torch.Tensor, gidx: torch.Tensor, cout: int, cin: int,
                       kernel_size: tuple[int, int]) -> torch.Tensor:
    """The dense float32 (Cout, Cin, kh, kw) weight of a low-precision packing: ``values`` (B, taps, K/G, V, G) in
    groups of G kept entries (int8: :func:`dynprune.quant.pack_int8_weights`, G = 4; bf16: :func:`pack_bf16`,
    G = 2) and ``gidx`` (taps, >= B*K), block b's input channels at [b*K, b*K + K)."""
    blocks, taps, kg, v, g = values.shape
    vals = values.permute(0, 1, 2, 4, 3).reshape(blocks, taps, kg * g, v).float()
    index = gidx[:, : blocks * kg * g].reshape(taps, blocks, kg * g).permute(1, 0, 2)
    return decompress_vector(vals, index, cout, cin, kernel_size)


def vec_conv2d(x: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cout: int,
               kernel_size: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
               relu: bool = False, isa: int | None = None) -> torch.Tensor:
    """Run the vector-pattern kernel: ``relu?(conv2d(x, W) + bias)``, stride 1, groups 1, W packed by
    :func:`compress_vector` (values, index, bias).

    Args:
        x: (B, Cin, H, W) float32 CPU tensor, channels_last memory (otherwise one copy is made).
        isa: 512 or 256 to run that code path (at most the active one, see :func:`vector_isa`); None: the active.
    Returns:
        (B, cout, Ho, Wo) float32 in channels_last memory.
    Raises:
        RuntimeError: no kernel available (see :func:`kernel_status`), or shapes and indices that do not match.
    """
    ext, active, reason = _build()
    if ext is None:
        raise RuntimeError(f"the N:M CPU kernel is unavailable: {reason}")
    values, index, bias = packed
    return ext.vec_conv2d(x, values, index, bias, cout, kernel_size[0], kernel_size[1], padding[0], padding[1],
                          dilation[0], dilation[1], relu, min(isa or active, active))


_LOWP_NEEDS = {"int8": ("cpu_has_vnni", "AVX-512 VNNI and VBMI"), "bf16": ("cpu_has_bf16", "AVX-512 BF16")}


def lowp_kernel(precision: str) -> tuple[bool, str]:
    """(the ``precision`` ("int8" or "bf16") kernel runs here, why not): the extension built, the CPU has the
    instructions, and ``DYNPRUNE_ISA`` does not force a narrower path. Answered once per kernel state (every
    deployed low-precision layer asks on every call)."""
    key = f"lowp_{precision}"
    if key not in _status:   # _status is cleared whenever the kernel is reset (tests switching DYNPRUNE_ISA)
        ext, _, reason = _build()
        probe, needs = _LOWP_NEEDS[precision]
        forced = os.environ.get("DYNPRUNE_ISA", "")
        if ext is None:
            _status[key] = (False, reason)
        elif forced not in ("", "avx512"):
            _status[key] = (False, f"DYNPRUNE_ISA={forced}")
        elif not getattr(ext, probe)():
            _status[key] = (False, f"this CPU lacks {needs}")
        else:
            _status[key] = (True, "")
    return _status[key]


def has_int8_kernel() -> bool:
    """Whether the int8 kernel runs here (:func:`lowp_kernel`): AVX-512 VNNI and VBMI."""
    return lowp_kernel("int8")[0]


def has_bf16_kernel() -> bool:
    """Whether the bf16 kernel runs here (:func:`lowp_kernel`): AVX-512 BF16."""
    return lowp_kernel("bf16")[0]


def pack_bf16(weight: torch.Tensor, mask: torch.Tensor, v: int,
              bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The vector-pattern weight in bf16 for :func:`vec_bf16conv2d` (machine-independent).

    Args:
        weight: (Cout, Cin, kh, kw) float; mask: bool, a vector pattern of block ``v`` (all True: dense).
    Returns:
        ``values`` (B, taps, K/2, V, 2) bfloat16 (K padded to even with a zero weight on channel 0), ``gidx``
        (taps, cb/2) int16 (the input channel of every compacted element; cb = B*K*2 bytes rounded up to 64)
        and ``bias`` (B*V,) float32.
    Raises:
        ValueError: as :func:`compress_vector`, or more than 256 input channels (the kernel's limit).
    """
    vals, index, b = compress_vector(weight, mask, v, bias)
    blocks, taps, k, _ = vals.shape
    if weight.shape[1] > 256:
        raise ValueError(f"pack_bf16: the bf16 kernel takes at most 256 input channels, got {weight.shape[1]}")
    k2 = k + k % 2
    if k2 != k:
        vals = torch.nn.functional.pad(vals, (0, 0, 0, 1))
        index = torch.nn.functional.pad(index, (0, 1))
    values = vals.view(blocks, taps, k2 // 2, 2, v).permute(0, 1, 2, 4, 3).to(torch.bfloat16).contiguous()
    cb = -(-blocks * k2 * 2 // 64) * 64
    gidx = torch.zeros(taps, cb // 2, dtype=torch.int16)
    gidx[:, : blocks * k2] = index.permute(1, 0, 2).reshape(taps, blocks * k2).to(torch.int16)
    return values, gidx, b


def vec_bf16conv2d(x: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cout: int,
                   kernel_size: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], relu: bool,
                   out_bf16: bool) -> torch.Tensor:
    """Run the bf16 vector-pattern kernel: ``relu?(conv2d(x, W) + bias)`` with bf16 products accumulated in fp32
    (AVX-512 BF16 ``vdpbf16ps``), W packed by :func:`pack_bf16`.

    Args:
        x: (B, Cin, H, W) bfloat16 CPU tensor, channels_last memory (else one copy).
    Returns:
        (B, cout, Ho, Wo) bfloat16 (``out_bf16``, rounded to nearest even) or float32, channels_last.
    Raises:
        RuntimeError: the kernel cannot run here (:func:`has_bf16_kernel`), or shapes that do not match.
    """
    if not has_bf16_kernel():
        raise RuntimeError(f"the bf16 CPU kernel cannot run here: {lowp_kernel('bf16')[1]}")
    values, gidx, bias = packed
    return _build()[0].vec_bf16conv2d(x, values, gidx, bias, cout, kernel_size[0], kernel_size[1], padding[0],
                                      padding[1], dilation[0], dilation[1], relu, out_bf16)


def warn_lowp_fallback(precision: str) -> None:
    """Warn once per process where the ``precision`` ("int8" or "bf16") kernel cannot run: its layers then run the
    reference arithmetic (int8: the same outputs; bf16: the same to float tolerance), slower."""
    runs, why = lowp_kernel(precision)
    if not runs and not _status.get(f"warned_{precision}"):
        _status[f"warned_{precision}"] = True
        warnings.warn(f"dynprune: {precision} CPU kernel unavailable ({why}); {precision} layers run the reference "
                      f"arithmetic instead (slower)", RuntimeWarning, stacklevel=3)


def vec_qconv2d(x: torch.Tensor, packed, cout: int, kernel_size: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int], zin: int, zout: int | None, relu: bool) -> torch.Tensor:
    """Run the int8 vector-pattern kernel (arithmetic: :func:`dynprune.quant.qconv_reference`, bit-exact).

    Args:
        x: (B, Cin, H, W) uint8 CPU tensor with zero point ``zin``, channels_last memory (else one copy).
        packed: a :class:`dynprune.quant.QConvPacked`. zout: the output's zero point, or None for float32 output.
    Returns:
        (B, cout, Ho, Wo) uint8 (``zout`` given) or float32, channels_last memory.
    Raises:
        RuntimeError: the kernel cannot run here (:func:`has_int8_kernel`), or shapes that do not match.
    """
    if not has_int8_kernel():
        raise RuntimeError(f"the int8 CPU kernel cannot run here: {lowp_kernel('int8')[1]}")
    p = packed
    return _build()[0].vec_qconv2d(x, p.values, p.gidx, p.acc0, p.scale, p.shift, cout, kernel_size[0],
                                   kernel_size[1], padding[0], padding[1], dilation[0], dilation[1], int(zin),
                                   0 if zout is None else int(zout), relu, zout is not None)


_PROBES: dict[str, int] = {}


def _probe_file() -> Path:
    return Path(os.environ.get("DYNPRUNE_CACHE", Path.home() / ".cache" / "dynprune")) / "vector_isa.json"


def vector_isa(packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cin: int, cout: int,
               kernel_size: tuple[int, int], dilation: tuple[int, int]) -> int:
    """The faster code path (512 or 256 bits) of the vector kernel for this layer shape on this machine.

    Where AVX-512 runs, both paths are timed once on a probe input (1 x cin x 64 x 112, 5 interleaved rounds,
    medians) and the answer cached per (CPU model, torch threads, layer shape, kept entries, V) in this
    process and in ``$DYNPRUNE_CACHE/vector_isa.json``: CPUs that run 512-bit operations on 256-bit units
    (AMD Zen 4) run the AVX2 tiles 3-5% faster, CPUs with full 512-bit units the AVX-512 ones. Without
    AVX-512, or with ``DYNPRUNE_ISA`` set, the active path is returned untimed.
    """
    import json
    import statistics
    import time

    active = _build()[1]
    if active != 512 or os.environ.get("DYNPRUNE_ISA"):
        return active
    values, index, _ = packed
    key = "|".join(map(str, (cpu_name(), torch.get_num_threads(), cin, cout, *kernel_size, *dilation,
                              values.shape[2], values.shape[3])))
    if key not in _PROBES:
        try:
            _PROBES.update(json.loads(_probe_file().read_text()))
        except (OSError, ValueError):
            pass
    if key not in _PROBES:
        x = torch.rand(1, cin, 64, 112).contiguous(memory_format=torch.channels_last)
        pad = tuple((k - 1) * d // 2 for k, d in zip(kernel_size, dilation))
        times: dict[int, list[float]] = {512: [], 256: []}
        for rnd in range(6):
            for bits in times:
                t0 = time.perf_counter()
                vec_conv2d(x, packed, cout, kernel_size, pad, dilation, True, bits)
                if rnd:  # the first round warms up
                    times[bits].append(time.perf_counter() - t0)
        _PROBES[key] = min(times, key=lambda b: statistics.median(times[b]))
        try:
            write_text(_probe_file(), json.dumps(_PROBES, indent=0))
        except (OSError, ValueError):
            pass  # a read-only cache: the answer holds for this process
    return _PROBES[key]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), for timing records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
