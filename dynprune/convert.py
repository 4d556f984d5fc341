"""``convert()``: rewrite a model's Conv/Linear layers into dynamic N:M layers and its norms into
variable norms; ``export_branch()``: freeze one branch back into a plain static model."""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .branch import BranchLike, resolve_branch
from .layers import DynamicNMMixin, VariableNormMixin, is_dynamic, make_dynamic, make_variable_norm, restore_base
from .nm import MaskGrad, NMRatio, RatioLike, parse_ratios

__all__ = ["convert", "export_branch", "ConversionReport", "LayerRecord", "conversion_report", "model_ratios"]


@dataclass
class LayerRecord:
    """One layer seen by :func:`convert`: its name, class, weight shape and, if skipped, why."""

    name: str
    type: str
    shape: tuple[int, ...]
    reason: str = ""


@dataclass
class ConversionReport:
    """What :func:`convert` did: converted and skipped layers (with reasons), norms made variable,
    and the parameters the conversion added (the per-branch norm copies)."""

    ratios: tuple[str, ...]
    converted: list[LayerRecord] = field(default_factory=list)
    skipped: list[LayerRecord] = field(default_factory=list)
    norms: list[LayerRecord] = field(default_factory=list)
    params_added: int = 0

    def __str__(self) -> str:
        lines = [f"ratios {', '.join(self.ratios)}: {len(self.converted)} layers converted, "
                 f"{len(self.skipped)} skipped, {len(self.norms)} variable norms, +{self.params_added} parameters"]
        lines += [f"  skipped {r.name} ({r.type} {r.shape}): {r.reason}" for r in self.skipped]
        return "\n".join(lines)


def _reduction(layer: nn.Module) -> tuple[int, int]:
    """(axis, per-group length) of the N:M reduction axis of a Conv/ConvTranspose/Linear weight."""
    w = layer._parameters["weight"]
    if isinstance(layer, _ConvTransposeNd):
        return 0, w.shape[0] // layer.groups
    return 1, w.shape[1]


def _skip_reason(layer: nn.Module, ms: set[int]) -> str:
    w = layer._parameters.get("weight")
    if not isinstance(w, nn.Parameter):
        return "weight is not a plain Parameter (parametrized or missing)"
    axis, k = _reduction(layer)
    if k == 1:
        return "input-channel axis has length 1 (depthwise)"
    bad = [m for m in ms if k % m]
    if bad:
        return f"input-channel axis length {k} is not divisible by M={bad[0]}"
    return ""


def convert(model: nn.Module, ratios: Sequence[RatioLike] = ("1:4", "2:4", "4:4"), *,
            exclude: Iterable[str] = (), exclude_types: Iterable[type] = (), mask_grad: MaskGrad = "sr-ste",
            srste_decay: float = 2e-4, norms: bool = True, inplace: bool = False) -> nn.Module:
    """Convert ``model`` into one dynamic N:M network with a branch per ratio.

    Every Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear (subclasses too, e.g. timm's Conv2dSame)
    whose per-group input-channel count is divisible by every M becomes a dynamic layer that shares
    its weight across branches through nested masks; every BatchNorm and affine InstanceNorm
    becomes a variable norm. On the densest branch (the default outside :func:`use_branch`) the
    result computes exactly what ``model`` computes and loads ``model``'s state_dict.

    Args:
        model: any ``nn.Module``; copied unless ``inplace``.
        ratios: N:M ratios, e.g. ``("1:4", "2:4", "4:4")``; sorted sparsest first (branch order).
            Include "M:M" to keep the original network as a branch.
        exclude: fnmatch patterns of module names to keep dense, e.g. ``("head.*",)``.
        exclude_types: module classes to keep dense.
        mask_grad: "sr-ste" (default), "ste" or "masked" (see :func:`dynprune.nm.apply_mask`).
        srste_decay: SR-STE's lambda_w (default 2e-4, Zhou et al. 2021).
        norms: make norm layers variable (per-branch statistics and affine).
        inplace: modify ``model`` itself.

    Returns:
        The converted model; its :class:`ConversionReport` is ``conversion_report(result)``.

    Raises:
        ValueError: invalid ratios, or nothing in ``model`` can be converted (the reasons are listed).
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() needs an nn.Module, got {type(model).__name__}")
    parsed = parse_ratios(ratios)
    if mask_grad not in ("sr-ste", "ste", "masked"):
        raise ValueError(f"unknown mask_grad {mask_grad!r}: expected 'sr-ste', 'ste' or 'masked'")
    if any(is_dynamic(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already converted; convert the original model instead")
    exclude, exclude_types = tuple(exclude), tuple(exclude_types)
    if not inplace:
        model = copy.deepcopy(model)
    ms = {r.m for r in parsed}
    report = ConversionReport(ratios=tuple(str(r) for r in parsed))
    for name, mod in list(model.named_modules()):
        excluded = next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None)
        if isinstance(mod, (_ConvNd, nn.Linear)):
            rec = LayerRecord(name, type(mod).__name__, tuple(mod.weight.shape))
            if excluded or isinstance(mod, exclude_types):
                rec.reason = f"excluded by pattern {excluded!r}" if excluded else "excluded by type"
            else:
                rec.reason = _skip_reason(mod, ms)
            if rec.reason:
                report.skipped.append(rec)
                continue
            axis, _ = _reduction(mod)
            make_dynamic(mod, parsed, axis, mask_grad, srste_decay)
            report.converted.append(rec)
        elif norms and (isinstance(mod, _BatchNorm) or (isinstance(mod, _InstanceNorm) and mod.affine)):
            if excluded or isinstance(mod, exclude_types) or len(parsed) == 1:
                continue
            report.norms.append(LayerRecord(name, type(mod).__name__, (mod.num_features,)))
            make_variable_norm(mod, parsed)
            added = sum(p.numel() for p in mod.aux_norms.parameters())
            report.params_added += added
    if not report.converted:
        why = "; ".join(f"{r.name}: {r.reason}" for r in report.skipped) or "it has no Conv or Linear layer"
        raise ValueError(f"nothing to convert in {type(model).__name__} for ratios "
                         f"{list(report.ratios)}: {why}")
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
