"""Dynamic N:M layers (one shared weight, nested masks) and variable normalization.

Both are made by swapping the class of an existing layer for a subclass built on the fly
(``NMConv2d`` for ``nn.Conv2d``, ``NMConv2dSame`` for timm's ``Conv2dSame``, ...). The subclass
reads ``weight`` through the active branch's mask and otherwise keeps the original ``forward``,
so layers that override ``forward`` keep their behaviour and parameter names do not change.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from .branch import current_branch, resolve_branch
from .nm import MaskGrad, NMRatio, apply_mask, mask_from_order, nm_order

__all__ = ["DynamicNMMixin", "VariableNormMixin", "make_dynamic", "make_variable_norm", "dynamic_layers",
           "variable_norms", "is_dynamic", "restore_base", "sync_variable_norms"]

_CLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type, prefix: str) -> type:
    key = (mixin, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{prefix}{base.__name__}", (mixin, base),
                             {"_dynprune_base": base, "__module__": __name__})
    return _CLASSES[key]


class DynamicNMMixin:
    """Mixin for a Conv/ConvTranspose/Linear whose ``weight`` is read through the active N:M branch.

    Attributes set by :func:`make_dynamic`: ``nm_ratios`` (sparsest first), ``nm_axis`` (the
    reduction axis: 1, or 0 for transposed convolutions), ``nm_mask_grad`` and ``nm_decay``.
    While gradients are enabled the mask is recomputed from the current weights and trained with
    SR-STE/STE; without gradients (inference) the masked weight of each branch is cached until
    the weight changes (its version counter), so routing costs no mask work.
    """

    _dynprune_base: type
    nm_ratios: tuple[NMRatio, ...]
    nm_axis: int
    nm_mask_grad: MaskGrad
    nm_decay: float

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        w = self._parameters["weight"]
        i = resolve_branch(current_branch(), self.nm_ratios)
        ratio = self.nm_ratios[i]
        if ratio.is_dense:
            return w
        key = (w._version, w.data_ptr())
        if torch.is_grad_enabled() and w.requires_grad:
            mask = mask_from_order(self._nm_rank(w, ratio.m, key), ratio.n, w.shape, self.nm_axis)
            return apply_mask(w, mask, self.nm_mask_grad, self.nm_decay)
        hit = self._nm_cache.get(i)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                mask = mask_from_order(self._nm_rank(w, ratio.m, key), ratio.n, w.shape, self.nm_axis)
                hit = (key, w * mask)
            self._nm_cache[i] = hit
        return hit[1]

    @property
    def dense_weight(self) -> nn.Parameter:
        """The shared, unmasked weight parameter."""
        return self._parameters["weight"]

    def branch_mask(self, branch: int) -> torch.Tensor:
        """Boolean mask (weight-shaped) of branch index ``branch``."""
        w = self._parameters["weight"]
        ratio = self.nm_ratios[resolve_branch(branch, self.nm_ratios)]
        if ratio.is_dense:
            return torch.ones_like(w, dtype=torch.bool)
        rank = self._nm_rank(w, ratio.m, (w._version, w.data_ptr()))
        return mask_from_order(rank, ratio.n, w.shape, self.nm_axis)

    def _nm_rank(self, w: torch.Tensor, m: int, key) -> torch.Tensor:
        hit = self._nm_rank_cache.get(m)
        if hit is None or hit[0] != key:
            hit = (key, nm_order(w, self.nm_axis, m))
            self._nm_rank_cache[m] = hit
        return hit[1]

    def extra_repr(self) -> str:
        return super().extra_repr() + ", ratios=(" + ", ".join(map(str, self.nm_ratios)) + ")"


class VariableNormMixin:
    """Variable (switchable) normalization: per-branch statistics and affine parameters.

    The densest branch uses the layer's own parameters and buffers (the original names, like
    timm's ``SplitBatchNorm2d``), branch i < L-1 uses ``aux_norms[i]``. Loading a state_dict that
    lacks the ``aux_norms`` keys (an unconverted checkpoint) initializes them from the main ones.
    ClassPruning section 3.3 "variable BatchNorm"; Yu et al. 2019 (slimmable networks).
    """

    _dynprune_base: type
    nm_ratios: tuple[NMRatio, ...]
    aux_norms: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = resolve_branch(current_branch(), self.nm_ratios)
        if i == len(self.nm_ratios) - 1:
            return super().forward(x)
        return self.aux_norms[i](x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = [k for k in list(state_dict) if k.startswith(prefix) and "." not in k[len(prefix):]]
        for i in range(len(self.aux_norms)):
            aux_prefix = f"{prefix}aux_norms.{i}."
            if not any(k.startswith(aux_prefix) for k in state_dict):
                for k in own:
                    state_dict[aux_prefix + k[len(prefix):]] = state_dict[k]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def make_dynamic(layer: nn.Module, ratios: tuple[NMRatio, ...], axis: int, mask_grad: MaskGrad = "sr-ste",
                 decay: float = 2e-4) -> nn.Module:
    """Turn ``layer`` (in place) into its dynamic N:M subclass; returns the same object."""
    layer.__class__ = _subclass(DynamicNMMixin, type(layer), "NM")
    layer.nm_ratios, layer.nm_axis = ratios, axis
    layer.nm_mask_grad, layer.nm_decay = mask_grad, decay
    layer._nm_cache, layer._nm_rank_cache = {}, {}
    return layer


def make_variable_norm(norm: nn.Module, ratios: tuple[NMRatio, ...]) -> nn.Module:
    """Turn a norm layer (in place) into its variable subclass with L-1 copies for the sparser branches."""
    aux = nn.ModuleList(copy.deepcopy(norm) for _ in ratios[:-1])
    norm.__class__ = _subclass(VariableNormMixin, type(norm), "Variable")
    norm.nm_ratios = ratios
    norm.aux_norms = aux
    return norm


def is_dynamic(module: nn.Module) -> bool:
    return isinstance(module, (DynamicNMMixin, VariableNormMixin))


def dynamic_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every dynamic N:M layer in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, DynamicNMMixin))


def variable_norms(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, VariableNormMixin))


def restore_base(module: nn.Module, branch: int) -> nn.Module:
    """Turn a dynamic layer (in place) back into its base class, frozen on ``branch``."""
    if isinstance(module, DynamicNMMixin):
        with torch.no_grad():
            masked = module.dense_weight * module.branch_mask(branch)
        module.__class__ = module._dynprune_base
        module.weight.data = masked
        for attr in ("nm_ratios", "nm_axis", "nm_mask_grad", "nm_decay", "_nm_cache", "_nm_rank_cache"):
            module.__dict__.pop(attr, None)
    elif isinstance(module, VariableNormMixin):
        i = resolve_branch(branch, module.nm_ratios)
        aux = module.aux_norms
        del module.aux_norms
        module.__class__ = module._dynprune_base
        module.__dict__.pop("nm_ratios", None)
        if i < len(aux):
            module.load_state_dict(aux[i].state_dict())
    return module


def sync_variable_norms(model: nn.Module) -> int:
    """Copy each variable norm's densest-branch parameters and statistics into all its branch copies
    (e.g. after training the dense network alone). Returns the number of norms synced."""
    count = 0
    for _, norm in variable_norms(model):
        own = {k: v for k, v in norm.state_dict().items() if not k.startswith("aux_norms.")}
        for aux in norm.aux_norms:
            aux.load_state_dict(own)
        count += 1
    return count
