"""The CPU mask kernel: N:M masked weights from a cached packed ordering, checked on every call.

A dynamic layer keeps one packed magnitude ordering per weight (:func:`dynprune.nm.pack_order`, 2 bits
per weight for M=4) and, on every read of a sparse branch, checks that the ordering still selects the
n largest magnitudes of every group of the *current* weight before masking with it, so no change to
the weight can leave a stale mask. In torch ops that check costs a dozen strided passes (slow for 3x3
convolution weights, whose groups are 9 floats apart); ``dynprune/csrc/nm_mask.c`` does check and mask
in one pass, ranking afresh only the groups whose order changed. It is plain C, compiled at first use with the system's C compiler (about a second; no
torch headers) into ``$DYNPRUNE_CACHE`` (default ``~/.cache/dynprune``) and called through ctypes on
contiguous float32 CPU tensors. Where it cannot build, :func:`available` is False and the callers use
the torch ops of :mod:`dynprune.nm` (same results); ``DYNPRUNE_MASK_KERNEL=0`` forces that fallback.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .nm import _bits

__all__ = ["available", "order", "apply"]

_SOURCE = Path(__file__).with_name("csrc") / "nm_mask.c"
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("DYNPRUNE_MASK_KERNEL", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = _SOURCE.read_bytes()
    tag = hashlib.sha256(source + compiler.encode() + sys.platform.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("DYNPRUNE_CACHE", Path.home() / ".cache" / "dynprune"))
    lib = cache / f"nm_mask_{tag}.so"
    if not lib.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build, then rename: atomic for parallel runs
                out = Path(tmp) / lib.name
                cmd = [compiler, "-O3", "-shared", "-fPIC", "-pthread", str(_SOURCE), "-o", str(out), "-lm"]
                if subprocess.run(cmd, capture_output=True).returncode != 0:
                    return None
                os.replace(out, lib)
        except OSError:
            return None
    try:
        cdll = ctypes.CDLL(str(lib))
    except OSError:
        return None
    cdll.nm_order_pack.argtypes = [_P, _I64, _I64, _I64, _I64, _INT, _P]
    cdll.nm_order_pack.restype = None
    cdll.nm_apply.argtypes = [_P, _P, _INT, _I64, _I64, _I64, _I64, _I64, _INT, _P, _P, _INT]
    cdll.nm_apply.restype = _I64
    return cdll


def available() -> bool:
    """Whether the compiled mask kernel can run (built on first call)."""
    return _library() is not None


def usable(w: torch.Tensor) -> bool:
    """Whether ``w`` can go through the kernel: float32, CPU, contiguous, m <= 255 handled by callers."""
    return w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous() and available()


def _dims(shape: torch.Size, axis: int, m: int) -> tuple[int, int, int, int]:
    pre = 1
    for d in shape[:axis]:
        pre *= d
    post = 1
    for d in shape[axis + 1:]:
        post *= d
    return pre, shape[axis] // m, m, post


def order(w: torch.Tensor, axis: int, m: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The packed ordering of ``w`` (see :func:`dynprune.nm.nm_order` and :func:`~dynprune.nm.pack_order`;
    bit-identical to them) and the grouped shape (pre, G, m, post). ``w``: see :func:`usable`, m <= 255."""
    dims = _dims(w.shape, axis, m)
    bits = _bits(m)
    packed = torch.empty(-(-w.numel() * bits // 8), dtype=torch.uint8)
    _library().nm_order_pack(w.data_ptr(), *dims, bits, packed.data_ptr())
    return packed, dims


def apply(w: torch.Tensor, packed: torch.Tensor, dims: tuple[int, int, int, int], n: int, repair: bool,
          want_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(``w * keep``, ``keep`` bool or None, groups ranked afresh) for ``keep = rank < n`` of the packed
    ordering. With ``repair`` every group is first checked against ``w`` (its kept entries must still be
    its n largest magnitudes) and a group that fails is ranked afresh in ``packed`` (in place), so the
    result always equals a mask computed from scratch."""
    out = torch.empty_like(w)
    keep = torch.empty(w.shape, dtype=torch.bool) if want_mask else None
    repaired = _library().nm_apply(w.data_ptr(), packed.data_ptr(), _bits(dims[2]), *dims, n, int(repair),
                                   out.data_ptr(), keep.data_ptr() if keep is not None else None,
                                   torch.get_num_threads())
    return out, keep, int(repaired)
