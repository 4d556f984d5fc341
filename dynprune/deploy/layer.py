"""``SparseConv2d``: a deployed dynamic ``Conv2d``, one backend per branch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..branch import current_branch, resolve_branch
from ..nm import NMPattern, NMRatio
from .backends import get_backend
from .fold import branch_norm, fold_batchnorm

__all__ = ["SparseConv2d", "LayerPlan", "chained"]


@dataclass
class LayerPlan:
    """How one dynamic layer runs after :func:`~dynprune.deploy`: per branch the backend's name (``"vector_cpu"``,
    ``"nm_cpu"``, ``"onednn"``, ...) or ``"dynamic"`` (the layer left as converted), with the reason for every
    sparse branch that no sparse kernel runs, and what was fused into it."""

    name: str
    type: str
    shape: tuple[int, ...]
    paths: list[str]
    reasons: list[str]
    folded_norm: str = ""
    relu: bool = False


class SparseConv2d(nn.Module):
    """A deployed dynamic ``Conv2d``: per branch, the buffers its backend packed; inference only.

    Buffers per branch i: ``bias_i`` float32 (Cout,) (BatchNorm folded in) and the backend's own, suffixed
    ``_i``: ``weight_i`` (Cout, Cin, kh, kw) for ``onednn``; ``values_i``/``index_i`` (Cout, kh*kw, Cin*N/M)
    float32/int16 for ``nm_cpu`` (:func:`dynprune.sparse_cpu.compress`); ``vvalues_i`` (B, kh*kw, K, V) float32
    and ``vindex_i`` (B, kh*kw, K) int32 for ``vector_cpu`` (:func:`dynprune.sparse_cpu.compress_vector`). What
    depends on the machine (SIMD layout) is derived from them on first use.

    Forward: (B, Cin, H, W) float32 -> (B, Cout, Ho, Wo) float32 on the active branch (channels_last memory,
    or NCHW with ``channels_last=False``: the kernels then copy in and out). Where a branch's backend cannot
    run on this machine (no compiler, no AVX2), its weights run densely through ``F.conv2d`` after one
    warning, with the same result to float tolerance.
    """

    packed_inference = True  # no gradients: what probes a model by backpropagation checks for

    def train(self, mode: bool = True) -> "SparseConv2d":
        """Deployed layers are inference-only: ``eval()`` (``train(False)``) is accepted, ``train()`` refused.

        Raises:
            RuntimeError: ``mode`` True (what to train instead is named).
        """
        if mode:
            raise RuntimeError("a deployed model is inference-only (packed weights, BatchNorm folded, no "
                               "gradients): train the dynamic model instead (dynprune.load of its training "
                               "checkpoint, or dynprune.convert), or dynprune.export_branch for a plain model")
        return super().train(False)

    def __init__(self, conv: nn.Conv2d, plan: LayerPlan, norm: nn.Module | None = None, channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last
        ratios: tuple[NMRatio, ...] = conv.nm_ratios
        self.ratios, self.paths, self.relu = ratios, list(plan.paths), plan.relu
        self.pattern: NMPattern = conv.nm_pattern
        self.labels = conv.nm_labels  # what use_branch values resolve against (ratios, or plan names)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self._kernel_cache: dict = {}
        self._dense: dict[int, torch.Tensor] = {}
        self._keys: list[tuple[str, ...]] = []
        with torch.no_grad():
            w0 = conv.dense_weight.detach()
            for i, ratio in enumerate(ratios):
                mask = conv.branch_mask(i)
                w, b = w0 * mask, (conv.bias.detach().clone() if conv.bias is not None else None)
                if norm is not None:
                    w, b = fold_batchnorm(w, b, branch_norm(norm, i, len(ratios)))
                if b is None:
                    b = torch.zeros(self.out_channels)
                self.register_buffer(f"bias_{i}", b.float().contiguous())
                packed = get_backend(self.paths[i]).pack(w.float(), mask, b.float(), ratio, self.pattern)
                for key, t in packed.items():
                    self.register_buffer(f"{key}_{i}", t if channels_last or t.dim() != 4 else t.contiguous())
                self._keys.append(tuple(packed))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"dilation={self.dilation}, pattern={self.pattern}, "
                f"paths=({', '.join(f'{r}:{p}' for r, p in zip(self.ratios, self.paths))})" + (", relu" if self.relu else ""))

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel_cache.clear()
        self._dense.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def check_buffers(self) -> str:
        """What is wrong with this layer's buffers (as loaded): each branch by its backend
        (:meth:`~dynprune.deploy.backends.Backend.check`: shapes, index ranges, N:M counts), the bias shape, and
        the nesting of branches whose backends give their exact masks; "" when consistent."""
        kept = []
        for i, path in enumerate(self.paths):
            buffers = self.branch_buffers(i)
            backend = get_backend(path)
            why = backend.check(self, i, buffers)
            if not why and tuple(buffers["bias"].shape) != (self.out_channels,):
                why = f"bias is {tuple(buffers['bias'].shape)}, expected ({self.out_channels},)"
            if why:
                return f"branch {self.ratios[i]} ({path}): {why}"
            kept.append(backend.kept(self, buffers))
        for i in range(len(kept) - 1):
            a, b = kept[i], kept[i + 1]
            if a is not None and b is not None and bool((a & ~b).any()):
                return (f"branch {self.ratios[i]} keeps weights that branch {self.ratios[i + 1]} prunes: the branches "
                        f"are not nested")
        return ""

    def branch_buffers(self, i: int) -> dict[str, torch.Tensor]:
        """Branch ``i``'s buffers by their backend's names (``bias`` included)."""
        out = {key: getattr(self, f"{key}_{i}") for key in self._keys[i]}
        out["bias"] = getattr(self, f"bias_{i}")
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = resolve_branch(current_branch(), self.labels)
        backend, buffers = get_backend(self.paths[i]), self.branch_buffers(i)
        if backend.status()[0]:
            y = backend.run(self, i, x, buffers)
            return y if self.channels_last or not backend.sparse else y.contiguous()
        return backend.fallback(self, i, x, buffers)


def chained(net: nn.Module, backend: str):
    """(a, b, branch) for every two deployed layers that follow each other in an ``nn.Sequential`` (only
    ``nn.Identity`` between them: fused BatchNorm and ReLU) and both run ``branch`` on ``backend``: ``a``'s output
    is ``b``'s input alone, so ``a`` may write it in ``b``'s low-precision format."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        kids = [k for k in seq.children() if not isinstance(k, nn.Identity)]
        for a, b in zip(kids, kids[1:]):
            if isinstance(a, SparseConv2d) and isinstance(b, SparseConv2d):
                for i, (pa, pb) in enumerate(zip(a.paths, b.paths)):
                    if pa == pb == backend:
                        yield a, b, i
