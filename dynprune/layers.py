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
import torch.nn.functional as F
from torch import nn

from . import mask_cpu, srste
from .branch import current_branch, resolve_branch
from .nm import (ELEMENT, MaskGrad, NMPattern, NMRatio, apply_mask, covered, expand_keep, mask_from_order, nm_order,
                 order_keeps_top, pack_order, pattern_scores, unpack_order)

__all__ = ["DynamicNMMixin", "VariableNormMixin", "make_dynamic", "make_variable_norm", "dynamic_layers",
           "variable_norms", "is_dynamic", "restore_base", "sync_variable_norms", "pin_order", "pinned_order",
           "pin_from_state", "check_pinned", "freeze_norm_stats"]

_CLASSES: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type, prefix: str) -> type:
    key = (mixin, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{prefix}{base.__name__}", (mixin, base),
                             {"_dynprune_base": base, "__module__": __name__})
    return _CLASSES[key]


def _rebuild(mixin: type, base: type) -> nn.Module:
    """Unpickling: the dynamic subclass of ``base`` (made again if this process has not made it yet)."""
    cls = _subclass(mixin, base, mixin._dynprune_prefix)
    return cls.__new__(cls)


class _Picklable:
    """Pickle and deepcopy a dynamic layer by (mixin, base class, state): its class is made on the fly
    and cannot be found by name. Caches are dropped from the state."""

    _dynprune_base: type
    _dynprune_prefix = ""
    _dynprune_transient: tuple[str, ...] = ()

    def __reduce_ex__(self, protocol):
        state = dict(self.__dict__)
        for key in self._dynprune_transient:
            state.pop(key, None)
        mixin = next(c for c in type(self).__mro__ if c in (DynamicNMMixin, VariableNormMixin))
        return _rebuild, (mixin, self._dynprune_base), state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._dynprune_init()

    def _dynprune_init(self) -> None:
        pass


class DynamicNMMixin(_Picklable):
    """Mixin for a Conv/ConvTranspose/Linear whose ``weight`` is read through the active N:M branch.

    Attributes set by :func:`make_dynamic`: ``nm_ratios`` (this layer's ratio per branch, sparsest
    first), ``nm_labels`` (the model's branch labels: ratios, or plan names), ``nm_axis`` (the
    reduction axis: 1, or 0 for transposed convolutions), ``nm_span`` (how much of that axis N:M
    covers: all of it, or its first ``(K // M) * M`` entries when K is not divisible by M, the rest
    kept dense), ``nm_mask_grad`` and ``nm_decay`` (SR-STE's lambda_w), ``nm_pattern`` (an
    :class:`~dynprune.nm.NMPattern`: element-wise, or blocks of V output channels sharing their kept inputs).
    ``nm_weight_transform`` (None, or a callable ``(weight, branch index) -> weight``) is applied last to the
    weight every branch reads: quantization-aware training sets it (:mod:`dynprune.qat`); it is never saved
    or copied.

    Masks come from one magnitude ordering per group of M (nested by construction). In eager mode
    the ordering is cached packed (2 bits per weight for M=4, 1/16 of the float32 weight) and checked
    against the current weight on every read (:func:`~dynprune.nm.order_keeps_top`), so no change to
    the weight, however made (optimizer, ``load_state_dict``, ``weight.data.copy_()``), can leave a
    branch computing with a stale mask. Under ``torch.compile``/``torch.export`` and ``torch.func``
    the mask is computed in the traced graph instead. A *pinned* ordering (:func:`pin_order`, PnG) replaces
    the magnitude ordering: the masks are then ``rank < N`` of the ``nm_rank`` buffer whatever the weights
    become. With gradients the masked weight trains by
    straight-through (:func:`~dynprune.nm.apply_mask`) and the branch is recorded for SR-STE's decay,
    which enters once per optimizer update (:mod:`dynprune.srste`).
    """

    _dynprune_prefix = "NM"
    _dynprune_transient = ("_nm_order_cache", "_nm_frozen", "_nm_used", "nm_weight_transform")
    nm_ratios: tuple
    nm_axis: int
    nm_span: int
    nm_mask_grad: MaskGrad
    nm_decay: float
    nm_pattern: NMPattern = ELEMENT  # the class default serves layers pickled before patterns existed
    nm_weight_transform = None

    def _dynprune_init(self) -> None:
        self._nm_order_cache = None
        self._nm_frozen = None
        self._nm_used = [False] * len(self.nm_ratios)
        srste.track(self)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        i = resolve_branch(current_branch(), self.nm_labels)
        w = self._branch_weight(i)
        return w if self.nm_weight_transform is None else self.nm_weight_transform(w, i)

    def _branch_weight(self, i: int) -> torch.Tensor:
        """The weight branch index ``i`` computes with (masked; straight-through under autograd)."""
        w = self._parameters["weight"]
        n, m = self.nm_ratios[i]
        if n == m:
            return w
        frozen = self._nm_frozen
        if frozen is not None and frozen[0] == i:
            return frozen[1]
        train = torch.is_grad_enabled() and w.requires_grad
        if train and self.nm_decay > 0 and self.nm_mask_grad == "sr-ste":
            self._nm_used[i] = True
        masked, keep = self._masked(w, n, m, train and self.nm_mask_grad == "masked")
        if not train:
            return masked
        return apply_mask(w, keep, self.nm_mask_grad, masked)

    @property
    def dense_weight(self) -> nn.Parameter:
        """The shared, unmasked weight parameter."""
        return self._parameters["weight"]

    def branch_mask(self, branch: int) -> torch.Tensor:
        """Boolean mask (weight-shaped) of branch index ``branch``."""
        w = self._parameters["weight"]
        n, m = self.nm_ratios[resolve_branch(branch, self.nm_labels)]
        if n == m:
            return torch.ones_like(w, dtype=torch.bool)
        return self._masked(w, n, m, True)[1]

    def branch_density(self, branch: int) -> tuple[int, int]:
        """Kept fraction of the weight on branch index ``branch`` as (numerator, denominator): N/M on
        the covered part of the reduction axis, 1 on the rest (ints, for exact MACs)."""
        n, m = self.nm_ratios[resolve_branch(branch, self.nm_labels)]
        k = self._parameters["weight"].shape[self.nm_axis]
        return self.nm_span * n + (k - self.nm_span) * m, k * m

    def nm_scores(self) -> torch.Tensor:
        """What this layer's ordering ranks, over the covered part of the reduction axis: the weight's
        magnitudes (element pattern) or its blocks' squared L2 norms (vector pattern); see
        :func:`~dynprune.nm.pattern_scores`. No autograd history."""
        w = self._parameters["weight"].detach()
        return pattern_scores(w, self.nm_axis, self.nm_pattern).narrow(self.nm_axis, 0, self.nm_span).contiguous()

    def _masked(self, w: torch.Tensor, n: int, m: int, want_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(``w * mask`` with no autograd history or, traced, in the graph; the bool mask if ``want_mask``)."""
        pat, axis = self.nm_pattern, self.nm_axis
        traced = torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(w)
        if not pat.is_vector:
            return self._element_masked(w, n, m, want_mask, traced)
        score = pattern_scores(w if traced else w.detach(), axis, pat)
        keep = expand_keep(self._element_masked(score, n, m, True, traced)[1], w.shape, axis, pat)
        return w.detach() * keep, keep

    def _element_masked(self, w: torch.Tensor, n: int, m: int, want_mask: bool,
                        traced: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The element-wise N:M of ``w`` (the weight, or a vector pattern's scores): (``w * mask``, mask)."""
        axis, span, k = self.nm_axis, self.nm_span, w.shape[self.nm_axis]
        pinned = self._buffers.get("nm_rank")
        if pinned is not None:
            mask = mask_from_order(pinned, n, w.shape, axis)
            return w.detach() * mask, mask
        if traced or m > 255 or not mask_cpu.usable(w):
            part = w if span == k else w.narrow(axis, 0, span)
            rank = nm_order(part, axis, m) if traced else self._order(part.contiguous(), n, m)
            mask = mask_from_order(rank, n, w.shape, axis)
            return w.detach() * mask, mask
        part = w.detach() if span == k else w.detach().narrow(axis, 0, span).contiguous()
        hit = self._nm_order_cache
        if hit is None or hit[0].device != part.device:
            hit = self._nm_order_cache = mask_cpu.order(part, axis, m)
        masked, keep, _ = mask_cpu.apply(part, hit[0], hit[1], n, True, want_mask)  # checked, stale groups re-ranked
        if span < k:
            masked = torch.cat([masked, w.detach().narrow(axis, span, k - span)], axis)
            if keep is not None:
                keep = torch.cat([keep, keep.new_ones(*w.shape[:axis], k - span, *w.shape[axis + 1:])], axis)
        return masked, keep

    def _valid_cache(self, part: torch.Tensor):
        hit = self._nm_order_cache
        if hit is None or hit[0].device != part.device or (hit[0].is_inference() and not torch.is_inference_mode_enabled()):
            return None
        return hit

    def _order(self, part: torch.Tensor, n: int, m: int) -> torch.Tensor:
        """The cached ordering if it still selects the top n of ``part``, else a fresh one (cached)."""
        hit = self._valid_cache(part)
        if hit is not None:
            rank = unpack_order(hit[0], hit[1])
            if order_keeps_top(part, rank, n, self.nm_axis):
                return rank
        with torch.no_grad():
            rank = nm_order(part, self.nm_axis, m)
        self._nm_order_cache = (pack_order(rank), rank.shape)
        return rank

    def extra_repr(self) -> str:
        return super().extra_repr() + ", ratios=(" + ", ".join(map(str, self.nm_ratios)) + ")"


class VariableNormMixin(_Picklable):
    """Variable (switchable) normalization: per-branch statistics and affine parameters.

    The densest branch uses the layer's own parameters and buffers (the original names, like
    timm's ``SplitBatchNorm2d``), branch i < L-1 uses ``aux_norms[i]``. Loading a state_dict that
    lacks the ``aux_norms`` keys (an unconverted checkpoint) initializes them from the main ones.
    ClassPruning section 3.3 "variable BatchNorm"; Yu et al. 2019 (slimmable networks).

    ``nm_frozen_stats`` (:func:`freeze_norm_stats`): a BatchNorm then normalizes with its running statistics in
    training mode too (and does not update them), as in eval mode; its affine parameters still train.
    """

    _dynprune_prefix = "Variable"
    _dynprune_transient = ("nm_frozen_stats",)
    nm_ratios: tuple
    aux_norms: nn.ModuleList
    nm_frozen_stats = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = resolve_branch(current_branch(), self.nm_ratios)
        last = i == len(self.nm_ratios) - 1
        norm = self if last else self.aux_norms[i]
        if self.nm_frozen_stats and norm.training:  # set only on BatchNorms (running statistics)
            return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
        return super().forward(x) if last else norm(x)

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


def freeze_norm_stats(model: nn.Module, frozen: bool = True) -> int:
    """Frozen BatchNorm statistics in every variable BatchNorm of ``model`` (``frozen`` False: batch statistics
    again). Frozen, each branch normalizes with its running statistics in training mode as in eval mode, so
    what trains is exactly what runs (torchvision's ``FrozenBatchNorm2d`` does this for detection fine-tuning);
    the per-branch affine parameters still train. A network that is fine-tuned into nested sparse branches
    from dense weights keeps the dense statistics (copied into every branch at conversion); with batch
    statistics, the branches' eval-mode errors compound with depth (docs/results.md, "The embedded default").
    Norms without running statistics (InstanceNorm, GroupNorm) are left as they are. Returns the number of
    variable BatchNorms set. Not saved in checkpoints: a training run sets it from its config."""
    count = 0
    for _, norm in variable_norms(model):
        if getattr(norm, "running_var", None) is not None:
            norm.nm_frozen_stats = bool(frozen)
            count += 1
    return count


def make_dynamic(layer: nn.Module, ratios: tuple[NMRatio, ...], axis: int, mask_grad: MaskGrad = "sr-ste",
                 decay: float = 2e-4, labels: tuple | None = None, pattern: NMPattern = ELEMENT) -> nn.Module:
    """Turn ``layer`` (in place) into its dynamic N:M subclass; returns the same object.

    ``ratios``: this layer's ratio on each branch (sparsest first; repeats allowed, e.g. a plan that keeps
    the layer dense on two branches); their sparse members share one M. ``labels``: the model's branch
    labels that :func:`use_branch` values resolve against (default: ``ratios``). N:M covers the first
    ``(K // M) * M`` entries of the reduction axis of length K. ``pattern``: what one ordering ranks
    (:class:`~dynprune.nm.NMPattern`).
    """
    layer.__class__ = _subclass(DynamicNMMixin, type(layer), "NM")
    k = layer._parameters["weight"].shape[axis]
    m = max((r.m for r in ratios if not r.is_dense), default=1)
    layer.nm_ratios, layer.nm_axis, layer.nm_span = tuple(ratios), axis, covered(k, m)
    layer.nm_labels = tuple(labels) if labels is not None else layer.nm_ratios
    layer.nm_mask_grad, layer.nm_decay = mask_grad, float(decay)
    layer.nm_pattern = NMPattern.parse(pattern)
    layer._dynprune_init()
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
        module._buffers.pop("nm_rank", None)
        for attr in ("nm_ratios", "nm_labels", "nm_axis", "nm_span", "nm_mask_grad", "nm_decay", "nm_pattern",
                     *DynamicNMMixin._dynprune_transient):
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


def pinned_order(layer: nn.Module) -> torch.Tensor | None:
    """The pinned ordering of a dynamic layer (see :func:`pin_order`), or None when it ranks by magnitude."""
    return layer._buffers.get("nm_rank") if isinstance(layer, DynamicNMMixin) else None


def pin_order(layer: nn.Module, rank: torch.Tensor | None = None) -> torch.Tensor:
    """Pin the nested ordering of a dynamic layer: from now on branch N:M keeps exactly the weights whose
    rank is < N, whatever values the weights take (PnG's fixed per-task ownership), instead of the top-N
    magnitudes. The ordering is the ``nm_rank`` buffer, so it is saved in and loaded from the state_dict,
    moves with ``.to()``, and is read by every path (eager, compiled, ``branch_mask``, ``export_branch``,
    deployment).

    Args:
        layer: a dynamic N:M layer (:func:`make_dynamic`).
        rank: the rank of every covered weight (of every covered score, :meth:`DynamicNMMixin.nm_scores`,
            for a vector pattern) inside its group, shaped (pre, G, M, post) as :func:`~dynprune.nm.nm_order`
            returns (uint8, int16 for M > 256), each group a permutation of 0..M-1; None pins the current
            magnitude ordering.
    Returns:
        the pinned rank (the layer's buffer).
    Raises:
        TypeError: ``layer`` is not dynamic. ValueError: ``rank`` of the wrong shape, or a group that is not a
            permutation of 0..M-1 (the first such group's position named).
    """
    if not isinstance(layer, DynamicNMMixin):
        raise TypeError(f"pin_order needs a dynamic N:M layer (dynprune.convert), got {type(layer).__name__}")
    w = layer._parameters["weight"]
    m = max((r.m for r in layer.nm_ratios if not r.is_dense), default=0)
    if m == 0:
        raise ValueError(f"layer {type(layer).__name__} has only dense branches {layer.nm_ratios}: nothing to pin")
    expected = nm_order(layer.nm_scores(), layer.nm_axis, m)
    if rank is None:
        rank = expected
    if tuple(rank.shape) != tuple(expected.shape):
        raise ValueError(f"rank shape {tuple(rank.shape)} does not fit this layer's groups: expected "
                         f"{tuple(expected.shape)} (pre, groups, M={m}, post)")
    rank = rank.to(device=w.device, dtype=expected.dtype)
    why = _rank_problem(rank, m)
    if why:
        raise ValueError(why)
    if "nm_rank" in layer._buffers:
        layer._buffers["nm_rank"].copy_(rank)
    else:
        layer.register_buffer("nm_rank", rank.clone())
    layer._nm_order_cache = None
    return layer._buffers["nm_rank"]


def _rank_problem(rank: torch.Tensor, m: int) -> str:
    """"" when every group of ``rank`` (pre, G, M, post) is a permutation of 0..M-1, else the first bad one."""
    ok = rank.long().sort(dim=2).values == torch.arange(m, device=rank.device).view(1, 1, m, 1)
    if bool(ok.all()):
        return ""
    bad = (~ok.all(dim=2)).nonzero()[0].tolist()
    return f"rank group at (pre, group, post) = {tuple(bad)} is not a permutation of 0..{m - 1}"


def check_pinned(model: nn.Module) -> None:
    """Check every pinned ordering of ``model`` (e.g. just loaded): each group a permutation of 0..M-1, so
    every branch keeps exactly N of M and the branches are nested.

    Raises:
        ValueError: the layer and the first bad group named.
    """
    for name, layer in dynamic_layers(model):
        rank = pinned_order(layer)
        if rank is not None:
            why = _rank_problem(rank, max(r.m for r in layer.nm_ratios if not r.is_dense))
            if why:
                raise ValueError(f"layer {name}: pinned N:M order: {why}")


def pin_from_state(model: nn.Module, state_dict: dict) -> int:
    """Pin (with placeholder ranks) every dynamic layer of ``model`` whose ``<name>.nm_rank`` is in
    ``state_dict``, so that ``load_state_dict(state_dict)`` then restores the pinned orderings of a PnG
    model. Returns the number of layers pinned."""
    count = 0
    for name, layer in dynamic_layers(model):
        key = f"{name}.nm_rank" if name else "nm_rank"
        if key in state_dict and pinned_order(layer) is None:
            pin_order(layer)
            count += 1
    return count


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
