"""The registry of deploy backends: what runs one branch of one deployed ``Conv2d``.

A backend is a :class:`Backend` subclass registered under its name; each lives in its own module here,
and adding one (a GPU or OpenVINO kernel) is a new module plus one line in :data:`_BUILTIN`, or a
:func:`register_backend` call from a third-party package. :func:`dynprune.deploy` asks every registered
backend, per layer and branch, whether it can run it (:meth:`Backend.supports`) and picks by the
documented rule of :func:`choose`; the deploy report names the choice and the reasons for the others.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...nm import NMPattern, NMRatio

__all__ = ["Backend", "register_backend", "get_backend", "backend_names", "choose", "check_shape", "check_nm_index"]

# built-in backends, in order of preference for a branch they all support (fastest first where it applies)
_BUILTIN = ("int8_cpu", "bf16_cpu", "vector_cpu", "nm_cpu", "onednn")
_REGISTRY: dict[str, "Backend"] = {}


class Backend(ABC):
    """One way to run a branch of a deployed ``Conv2d`` (stride, padding, dilation of the layer; BatchNorm
    folded into ``weight``/``bias``, ReLU fused when ``layer.relu``).

    Subclasses set ``name`` and ``sparse`` (whether it skips pruned weights) and implement the four abstract
    methods. Packed buffers are machine-independent tensors stored in the artifact; what depends on the machine
    (SIMD width) is derived from them at run time.
    """

    name: str = ""
    sparse: bool = False
    precision: str = "fp32"   # what it computes in (the deploy option it serves)

    def status(self) -> tuple[bool, str]:
        """(runs on this machine, why not). Default: always runs."""
        return True, ""

    def handles(self, pattern: NMPattern) -> bool:
        """Whether this backend runs masks of ``pattern`` at all (the others are not asked, nor reported)."""
        return True

    @abstractmethod
    def supports(self, conv: nn.Conv2d, ratio: NMRatio, pattern: NMPattern, opts: dict[str, Any]) -> str:
        """Why this backend cannot (or, by the documented rule, should not) run branch ``ratio`` of the dynamic
        ``conv`` under ``pattern`` and deploy options ``opts``; "" when it can."""

    @abstractmethod
    def pack(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor, ratio: NMRatio,
             pattern: NMPattern) -> dict[str, torch.Tensor]:
        """Buffers for one branch from the masked, folded ``weight`` (Cout, Cin, kh, kw) float32, its bool
        ``mask`` and ``bias`` (Cout,) float32."""

    @abstractmethod
    def run(self, layer: nn.Module, branch: int, x: torch.Tensor,
            buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """Branch ``branch`` of ``layer``: ``relu?(conv2d(x, W) + b)``, x (B, Cin, H, W) float32 channels_last ->
        (B, Cout, Ho, Wo) float32."""

    def check(self, layer: nn.Module, branch: int, buffers: dict[str, torch.Tensor]) -> str:
        """What is wrong with branch ``branch``'s loaded ``buffers`` (shapes against the layer, indices in range,
        N:M counts as declared); "" when they are consistent. Run on every artifact load, before any kernel
        sees them. Default: nothing to check."""
        return ""

    def kept(self, layer: nn.Module, buffers: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The bool (Cout, Cin, kh, kw) mask of the weights the buffers keep, where the format says it exactly
        (an index); None where it does not (a dense weight whose zeros may be values). Used to check that
        the branches of a layer are nested."""
        return None

    def fallback(self, layer: nn.Module, branch: int, x: torch.Tensor,
                 buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """What runs where :meth:`status` is False (an artifact loaded on a machine without the kernel): by default
        :meth:`dense_weight` through ``F.conv2d`` (the same result to float tolerance), built once per branch."""
        if branch not in layer._dense:
            fmt = torch.channels_last if layer.channels_last else torch.contiguous_format
            layer._dense[branch] = self.dense_weight(layer, buffers).contiguous(memory_format=fmt)
        y = F.conv2d(x, layer._dense[branch], buffers["bias"], layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.relu(y, inplace=True) if layer.relu else y

    @abstractmethod
    def dense_weight(self, layer: nn.Module, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (Cout, Cin, kh, kw) float32 weight the buffers encode: the fallback where :meth:`status` is
        False (an artifact loaded on a machine without the kernel)."""


def register_backend(backend: Backend) -> Backend:
    """Register ``backend`` under ``backend.name`` (replacing a backend of that name). Returns it.

    Raises:
        TypeError: not a :class:`Backend`. ValueError: an empty name.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend needs a dynprune Backend, got {type(backend).__name__}")
    if not backend.name:
        raise ValueError(f"backend {type(backend).__name__} has no name")
    _REGISTRY[backend.name] = backend
    return backend


def _load_builtin() -> None:
    for mod in _BUILTIN:
        if mod not in _REGISTRY:
            importlib.import_module(f"{__name__}.{mod}")


def backend_names() -> tuple[str, ...]:
    """Registered backends, built-in ones first in their preference order."""
    _load_builtin()
    return tuple(sorted(_REGISTRY, key=lambda n: (_BUILTIN.index(n) if n in _BUILTIN else len(_BUILTIN), n)))


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises:
        ValueError: no such backend (the registered ones are named).
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown deploy backend {name!r}: registered backends are {list(backend_names())}")
    return _REGISTRY[name]


def choose(conv: nn.Conv2d, ratio: NMRatio, pattern: NMPattern, allowed: tuple[str, ...],
           opts: dict[str, Any]) -> tuple[str, str]:
    """(backend name, why the sparse backends were not chosen) for one branch: the first of ``allowed``, in
    preference order, that supports it. At fp32 a dense ratio always runs on oneDNN (no reason reported); at
    bf16 or int8 every ratio goes to the first backend of that ``precision`` that supports it, else to the fp32
    rule (the reason named)."""
    reasons = []
    if opts.get("precision", "fp32") != "fp32":
        for name in allowed:
            backend = get_backend(name)
            if backend.precision == opts["precision"]:
                why = backend.supports(conv, ratio, pattern, opts)
                if not why:
                    return name, ""
                reasons.append(f"{name}: {why}")
    if ratio.is_dense:
        return "onednn", "; ".join(reasons)
    candidates = [name for name in allowed if get_backend(name).handles(pattern) and get_backend(name).precision == "fp32"]
    if not any(get_backend(name).sparse for name in candidates):
        reasons.append(f"no allowed sparse backend runs pattern {pattern} (allowed: {', '.join(allowed)})")
    for name in candidates:
        why = get_backend(name).supports(conv, ratio, pattern, opts)
        if not why:
            return name, "; ".join(reasons)
        reasons.append(why)
    return "onednn", "; ".join(reasons)


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """"" when ``t`` has ``shape`` and ``dtype``, else the difference in words (for :meth:`Backend.check`)."""
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        return f"{name} is {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} {dtype}"
    return ""


def check_nm_index(index: torch.Tensor, n: int, m: int) -> str:
    """Check an N:M index (..., K) of kept input channels listed group by group, ascending: entry k must lie
    in group k // n (channels [g*m, g*m + m)), so every group keeps exactly ``n`` distinct channels.
    Returns "" or the first offence."""
    k = torch.arange(index.shape[-1])
    lo = (k // n * m).expand_as(index)
    idx = index.long()
    bad = (idx < lo) | (idx >= lo + m)
    if k.numel() > 1:
        step = idx[..., 1:] <= idx[..., :-1]
        bad[..., 1:] |= step & (k[1:] % n != 0)
    if bool(bad.any()):
        at = bad.nonzero()[0].tolist()
        return (f"index {int(idx[tuple(at)])} at {tuple(at)} breaks {n}:{m} (entry {at[-1]} must be a distinct "
                f"channel of group {at[-1] // n}, ascending)")
    return ""
