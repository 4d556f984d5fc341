"""``convert()``: rewrite a model's Conv/Linear layers into dynamic N:M layers and its norms into
variable norms; ``export_branch()``: freeze one branch back into a plain static model."""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .branch import BranchLike, resolve_branch
from .layers import DynamicNMMixin, VariableNormMixin, is_dynamic, make_dynamic, make_variable_norm, restore_base
from .nm import MaskGrad, NMRatio, RatioLike, covered, parse_ratios

__all__ = ["convert", "export_branch", "ConversionReport", "LayerRecord", "conversion_report", "model_ratios"]


@dataclass
class LayerRecord:
    """One layer seen by :func:`convert`: its name, class, weight shape, if skipped or shared why, and
    ``coverage``: the share of its reduction axis (and so of its MACs) that N:M covers (1.0 = whole)."""

    name: str
    type: str
    shape: tuple[int, ...]
    reason: str = ""
    coverage: float = 1.0


@dataclass
class ConversionReport:
    """What :func:`convert` did: converted layers (``coverage`` < 1 for partly converted ones), skipped
    layers with reasons, norms made variable, norms left shared across branches (with why), raw weight
    parameters left dense (e.g. ``nn.MultiheadAttention.in_proj_weight``, position embeddings), and the
    parameters the conversion added (the per-branch norm copies)."""

    ratios: tuple[str, ...]
    converted: list[LayerRecord] = field(default_factory=list)
    skipped: list[LayerRecord] = field(default_factory=list)
    norms: list[LayerRecord] = field(default_factory=list)
    shared_norms: list[LayerRecord] = field(default_factory=list)
    dense_params: list[LayerRecord] = field(default_factory=list)
    params_added: int = 0

    @property
    def partial(self) -> list[LayerRecord]:
        """Converted layers whose reduction axis is not divisible by M: N:M on its first (K // M) * M."""
        return [r for r in self.converted if r.coverage < 1.0]

    def __str__(self) -> str:
        lines = [f"ratios {', '.join(self.ratios)}: {len(self.converted)} layers converted "
                 f"({len(self.partial)} partly), {len(self.skipped)} skipped, {len(self.norms)} variable norms, "
                 f"{len(self.shared_norms)} shared norms, {len(self.dense_params)} raw weights dense, "
                 f"+{self.params_added} parameters"]
        densest = NMRatio.parse(self.ratios[-1])
        if not densest.is_dense:
            lines.append(f"  no dense ratio: outside use_branch the model runs its densest branch {densest}, "
                         "not the original network")
        lines += [f"  partly converted {r.name} ({r.type} {r.shape}): N:M on {100 * r.coverage:.1f}% of its "
                  f"input channels and MACs, the rest dense" for r in self.partial]
        lines += [f"  skipped {r.name} ({r.type} {r.shape}): {r.reason}" for r in self.skipped]
        lines += [f"  shared norm {r.name} ({r.type}): {r.reason}" for r in self.shared_norms]
        lines += [f"  dense weight {r.name} {r.shape}: {r.reason}" for r in self.dense_params]
        return "\n".join(lines)


NormsOption = Union[bool, Literal["all", "batch", "none"]]


def _reduction(layer: nn.Module) -> tuple[int, int]:
    """(axis, per-group length) of the N:M reduction axis of a Conv/ConvTranspose/Linear weight."""
    w = layer._parameters["weight"]
    if isinstance(layer, _ConvTransposeNd):
        return 0, w.shape[0] // layer.groups
    return 1, w.shape[1]


def _skip_reason(layer: nn.Module, m: int) -> str:
    w = layer._parameters.get("weight")
    if not isinstance(w, nn.Parameter):
        return "weight is not a plain Parameter (parametrized or missing)"
    axis, k = _reduction(layer)
    if k == 1:
        return "input-channel axis has length 1 (depthwise)"
    if k < m:
        return f"input-channel axis length {k} is shorter than M={m}"
    return ""


def _is_norm(mod: nn.Module, which: str) -> bool:
    """A norm layer with per-branch state (parameters or running statistics) under ``norms=which``:
    BatchNorm and InstanceNorm for "batch"; also GroupNorm, LayerNorm, RMSNorm and any leaf module whose
    class name contains "Norm" (NAFNet's LayerNorm2d, Restormer's WithBias_LayerNorm) for "all"."""
    if not (any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False))):
        return False
    if isinstance(mod, (_BatchNorm, _InstanceNorm)):
        return True
    if which == "batch":
        return False
    if isinstance(mod, (nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        return True
    return next(mod.children(), None) is None and "norm" in type(mod).__name__.lower()


def convert(model: nn.Module, ratios: Sequence[RatioLike] = ("1:4", "2:4", "4:4"), *,
            exclude: Iterable[str] = (), exclude_types: Iterable[type] = (), mask_grad: MaskGrad = "sr-ste",
            srste_decay: float = 2e-4, norms: NormsOption = True, inplace: bool = False) -> nn.Module:
    """Convert ``model`` into one dynamic N:M network with a branch per ratio.

    Every Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear (subclasses too, e.g. timm's Conv2dSame)
    becomes a dynamic layer that shares its weight across branches through nested masks; when its
    per-group input-channel count K is not divisible by M, N:M covers the first (K // M) * M channels
    and the rest stays dense (``report.partial``); depthwise layers and K < M are skipped. Norm layers
    become variable norms (per-branch statistics and affine parameters). Outside :func:`use_branch`
    the densest branch runs: with an "M:M" ratio in ``ratios`` that is exactly the original model
    (same output, same state_dict keys); without one it is the densest sparse branch.

    Args:
        model: any ``nn.Module``; copied unless ``inplace``.
        ratios: N:M ratios, e.g. ``("1:4", "2:4", "4:4")``; sorted sparsest first (branch order). Sparse
            ratios share one M; include "M:M" to keep the original network as a branch.
        exclude: fnmatch patterns of module names to keep dense, e.g. ``("head.*",)``.
        exclude_types: module classes to keep dense.
        mask_grad: "sr-ste" (default), "ste" or "masked" (see :func:`dynprune.nm.apply_mask`).
        srste_decay: SR-STE's lambda_w (default 2e-4, Zhou et al. 2021), applied once per optimizer
            update (:mod:`dynprune.srste`); a finite number >= 0.
        norms: which norms become variable: True or "all" (BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
            RMSNorm, LayerNorm2d-style leaf modules), "batch" (BatchNorm and InstanceNorm), False or
            "none"; the others are listed in ``report.shared_norms``.
        inplace: modify ``model`` itself.

    Returns:
        The converted model; its :class:`ConversionReport` is ``conversion_report(result)``.

    Raises:
        ValueError: invalid ratios (sparse ratios with different M are named), invalid ``mask_grad``,
            ``srste_decay`` or ``norms``, or nothing in ``model`` can be converted (the reasons are listed).
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() needs an nn.Module, got {type(model).__name__}")
    parsed = parse_ratios(ratios)
    if mask_grad not in ("sr-ste", "ste", "masked"):
        raise ValueError(f"unknown mask_grad {mask_grad!r}: expected 'sr-ste', 'ste' or 'masked'")
    if isinstance(srste_decay, bool) or not isinstance(srste_decay, (int, float)) or not math.isfinite(srste_decay) \
            or srste_decay < 0:
        raise ValueError(f"srste_decay={srste_decay!r}: expected a finite number >= 0 (SR-STE uses 2e-4)")
    which = {True: "all", False: "none"}.get(norms, norms) if isinstance(norms, bool) else norms
    if which not in ("all", "batch", "none"):
        raise ValueError(f"norms={norms!r}: expected True, False, 'all', 'batch' or 'none'")
    if any(is_dynamic(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already converted; convert the original model instead")
    exclude, exclude_types = tuple(exclude), tuple(exclude_types)
    if not inplace:
        model = copy.deepcopy(model)
    m = max((r.m for r in parsed if not r.is_dense), default=1)
    report = ConversionReport(ratios=tuple(str(r) for r in parsed))
    owners: set[int] = set()
    for name, mod in list(model.named_modules()):
        excluded = next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None)
        why_excluded = (f"excluded by pattern {excluded!r}" if excluded
                        else "excluded by type" if isinstance(mod, exclude_types) else "")
        if isinstance(mod, (_ConvNd, nn.Linear)):
            owners.add(id(mod))
            rec = LayerRecord(name, type(mod).__name__, tuple(mod.weight.shape))
            rec.reason = why_excluded or _skip_reason(mod, m)
            if rec.reason:
                report.skipped.append(rec)
                continue
            axis, k = _reduction(mod)
            rec.coverage = covered(k, m) / k
            make_dynamic(mod, parsed, axis, mask_grad, srste_decay)
            report.converted.append(rec)
        elif _is_norm(mod, "all"):
            owners.add(id(mod))
            rec = LayerRecord(name, type(mod).__name__, tuple(getattr(mod, "weight", torch.empty(0)).shape))
            rec.reason = why_excluded or ("one ratio, one branch" if len(parsed) == 1 else
                                          f"norms={norms!r}" if not _is_norm(mod, which) or which == "none" else "")
            if rec.reason:
                report.shared_norms.append(rec)
                continue
            report.norms.append(rec)
            make_variable_norm(mod, parsed)
            report.params_added += sum(p.numel() for p in mod.aux_norms.parameters())
    if not report.converted:
        why = "; ".join(f"{r.name}: {r.reason}" for r in report.skipped) or "it has no Conv or Linear layer"
        raise ValueError(f"nothing to convert in {type(model).__name__} for ratios "
                         f"{list(report.ratios)}: {why}")
    for name, mod in model.named_modules():
        if id(mod) in owners or ".aux_norms." in f".{name}.":
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if sum(d > 1 for d in p.shape) >= 2:  # a matrix or larger, not a per-channel scale
                full = f"{name}.{pname}" if name else pname
                report.dense_params.append(LayerRecord(full, type(mod).__name__, tuple(p.shape),
                                                       "a raw weight parameter, not a Conv/Linear layer"))
    model.dynprune_report = report
    model.dynprune_config = {"ratios": list(report.ratios), "exclude": list(exclude), "mask_grad": mask_grad,
                             "srste_decay": srste_decay, "norms": norms}
    return model


def conversion_report(model: nn.Module) -> ConversionReport:
    """The :class:`ConversionReport` of a model returned by :func:`convert`.

    Raises:
        ValueError: ``model`` was not made by :func:`convert`.
    """
    report = getattr(model, "dynprune_report", None)
    if report is None:
        for m in model.modules():
            report = getattr(m, "dynprune_report", None)
            if report is not None:
                break
    if report is None:
        raise ValueError(f"{type(model).__name__} was not made by dynprune.convert()")
    return report


def model_ratios(model: nn.Module) -> tuple[NMRatio, ...]:
    """The branch ratios (sparsest first) of a converted model.

    Raises:
        ValueError: ``model`` holds no dynamic layer.
    """
    for m in model.modules():
        if isinstance(m, DynamicNMMixin):
            return m.nm_ratios
    raise ValueError(f"{type(model).__name__} holds no dynamic N:M layer; call dynprune.convert() first")


def export_branch(model: nn.Module, branch: BranchLike) -> nn.Module:
    """A plain static copy of ``model`` frozen on ``branch``: torch layers only, masks baked into the
    weights, that branch's norm parameters and statistics. Its output equals ``model``'s under
    ``use_branch(branch)``.

    Raises:
        ValueError: ``model`` is not converted, or ``branch`` is not one of its ratios.
        IndexError: ``branch`` index out of range.
    """
    ratios = model_ratios(model)
    index = resolve_branch(NMRatio.parse(branch) if isinstance(branch, str) else branch, ratios)
    static = copy.deepcopy(model)
    for mod in list(static.modules()):
        if isinstance(mod, (DynamicNMMixin, VariableNormMixin)):
            restore_base(mod, index)
    for m in static.modules():
        m.__dict__.pop("dynprune_report", None)
        m.__dict__.pop("dynprune_config", None)
    return static
