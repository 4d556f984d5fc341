"""``convert()``: rewrite a model's Conv/Linear layers into dynamic N:M layers and its norms into
variable norms; ``export_branch()``: freeze one branch back into a plain static model."""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm

from .branch import BranchLike, branch_key, resolve_branch
from .layers import DynamicNMMixin, VariableNormMixin, is_dynamic, make_dynamic, make_variable_norm, restore_base
from .nm import ELEMENT, MaskGrad, NMPattern, NMRatio, PatternLike, RatioLike, covered, parse_ratios
from .plan import RatioPlan, coerce_branches

__all__ = ["convert", "export_branch", "ConversionReport", "LayerRecord", "conversion_report", "model_ratios"]

# the skip reason of a layer that every branch keeps dense when plans are given (it stays the original layer)
DENSE_EVERYWHERE = "dense on every branch (no plan prunes it)"


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
    pattern: NMPattern = ELEMENT
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

    @property
    def partial_blocks(self) -> list[LayerRecord]:
        """Under a vector pattern, converted layers whose output channels are not a multiple of V: their
        last block (or their only one, when Cout < V) is ranked on the channels it has."""
        v = self.pattern.v
        return [r for r in self.converted if v > 1 and _out_channels(r) % v]

    def __str__(self) -> str:
        lines = [f"ratios {', '.join(self.ratios)}, pattern {self.pattern}: {len(self.converted)} layers converted "
                 f"({len(self.partial)} partly), {len(self.skipped)} skipped, {len(self.norms)} variable norms, "
                 f"{len(self.shared_norms)} shared norms, {len(self.dense_params)} raw weights dense, "
                 f"+{self.params_added} parameters"]
        try:
            densest = NMRatio.parse(self.ratios[-1])
        except ValueError:  # a plan
            densest = None
        if densest is None or not densest.is_dense:
            lines.append(f"  no dense ratio: outside use_branch the model runs its densest branch {self.ratios[-1]}, "
                         "not the original network")
        lines += [f"  partly converted {r.name} ({r.type} {r.shape}): N:M on {100 * r.coverage:.1f}% of its "
                  f"input channels and MACs, the rest dense" for r in self.partial]
        lines += [f"  partial block {r.name} ({r.type} {r.shape}): {_out_channels(r)} output channels, last block "
                  f"of {_out_channels(r) % self.pattern.v} (V={self.pattern.v})" for r in self.partial_blocks]
        lines += [f"  skipped {r.name} ({r.type} {r.shape}): {r.reason}" for r in self.skipped]
        lines += [f"  shared norm {r.name} ({r.type}): {r.reason}" for r in self.shared_norms]
        lines += [f"  dense weight {r.name} {r.shape}: {r.reason}" for r in self.dense_params]
        return "\n".join(lines)


NormsOption = Union[bool, Literal["all", "batch", "none"]]


def _out_channels(rec: LayerRecord) -> int:
    """Output channels of a converted layer's weight (dim 1 of a ConvTranspose weight, else dim 0)."""
    return rec.shape[1] if "Transpose" in rec.type else rec.shape[0]


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
            srste_decay: float = 2e-4, norms: NormsOption = True, pattern: PatternLike = "element",
            inplace: bool = False) -> nn.Module:
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
        pattern: what the nested masks rank (:class:`~dynprune.nm.NMPattern`): ``"element"`` (default, the
            paper's per-output-channel N:M) or ``"vector<V>"`` / ``"vector<V>-shared"``, V in 8, 16, 32: blocks
            of V consecutive output channels keep the same input channels of every group of M (per tap, or
            for all taps), which the CPU kernel runs as a dense direct convolution over the kept inputs. One
            pattern per model: every branch's mask comes from the same ordering. MACs are the same as the
            element pattern's; layers whose Cout is not a multiple of V are in ``report.partial_blocks``.
        inplace: modify ``model`` itself.

    Returns:
        The converted model; its :class:`ConversionReport` is ``conversion_report(result)``.

    Raises:
        ValueError: invalid ratios (sparse ratios with different M are named), invalid ``mask_grad``,
            ``srste_decay``, ``norms`` or ``pattern`` (the valid ones named), a vector size V larger than every
            converted layer's output channels, or nothing in ``model`` can be converted (the reasons listed).
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() needs an nn.Module, got {type(model).__name__}")
    specs = _branch_specs(ratios)
    if isinstance(pattern, (list, tuple)):
        raise ValueError(f"pattern={pattern!r}: one pattern per model (every branch's nested mask comes from one "
                         "ordering), e.g. 'element' or 'vector16'")
    pat = NMPattern.parse(pattern)
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
    plans = [b for b in specs if isinstance(b, RatioPlan)]
    for plan in plans:
        if plan.model is not None and plan.model != type(model).__name__:
            raise ValueError(f"plan {plan.name!r} was made for {plan.model}, not {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    uniform_m = max((r.m for r in specs if isinstance(r, NMRatio) and not r.is_dense), default=1)
    layers, skipped, norm_layers, owners = [], [], [], set()
    for name, mod in list(model.named_modules()):
        excluded = next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None)
        why_excluded = (f"excluded by pattern {excluded!r}" if excluded
                        else "excluded by type" if isinstance(mod, exclude_types) else "")
        if isinstance(mod, (_ConvNd, nn.Linear)):
            owners.add(id(mod))
            rec = LayerRecord(name, type(mod).__name__, tuple(mod.weight.shape))
            m = _layer_m(name, specs, uniform_m)
            rec.reason = why_excluded or _skip_reason(mod, m)
            if not rec.reason and plans and all(r.is_dense for r in _layer_ratios(name, specs, m)):
                rec.reason = DENSE_EVERYWHERE
            (skipped if rec.reason else layers).append((rec, mod, m))
        elif _is_norm(mod, "all"):
            owners.add(id(mod))
            rec = LayerRecord(name, type(mod).__name__, tuple(getattr(mod, "weight", torch.empty(0)).shape))
            rec.reason = why_excluded or ("one ratio, one branch" if len(specs) == 1 else
                                          f"norms={norms!r}" if not _is_norm(mod, which) or which == "none" else "")
            norm_layers.append((rec, mod))
    _check_plan_layers(plans, model, layers, skipped)
    per_layer = {rec.name: _layer_ratios(rec.name, specs, m) for rec, _, m in layers}
    labels, order = _branch_order(specs, layers, per_layer)
    report = ConversionReport(ratios=tuple(str(lb) for lb in labels), pattern=pat)
    if pat.is_vector and layers and all(_out_channels(rec) < pat.v for rec, _, _ in layers):
        widest = max(_out_channels(rec) for rec, _, _ in layers)
        raise ValueError(f"pattern {pat}: V={pat.v} exceeds the output channels of every layer to convert (at most "
                         f"{widest}); use a V <= {widest} or the 'element' pattern")
    report.skipped = [rec for rec, _, _ in skipped]
    for rec, mod, m in layers:
        ratios_here = tuple(per_layer[rec.name][i] for i in order)
        _check_nested(rec.name, ratios_here, labels)
        axis, k = _reduction(mod)
        rec.coverage = covered(k, m) / k
        make_dynamic(mod, ratios_here, axis, mask_grad, srste_decay, labels=labels, pattern=pat)
        report.converted.append(rec)
    for rec, mod in norm_layers:
        if rec.reason:
            report.shared_norms.append(rec)
            continue
        report.norms.append(rec)
        make_variable_norm(mod, labels)
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
    branches = [specs[i] for i in order]
    model.dynprune_report = report
    model.dynprune_config = {"ratios": [b.to_dict() if isinstance(b, RatioPlan) else str(b) for b in branches],
                             "exclude": list(exclude), "mask_grad": mask_grad, "srste_decay": srste_decay,
                             "norms": norms, "pattern": str(pat)}
    return model


def _branch_specs(ratios) -> list:
    """Global ratios (NMRatio) and plans (RatioPlan) of ``ratios``; global ratios alone are validated and
    ordered by :func:`~dynprune.nm.parse_ratios`."""
    if isinstance(ratios, (str, NMRatio, RatioPlan)) or (isinstance(ratios, Mapping) and not isinstance(ratios, list)):
        ratios = [ratios]
    specs = [r if isinstance(r, RatioPlan) else NMRatio.parse(r) for r in coerce_branches(list(ratios))]
    uniform = [r for r in specs if isinstance(r, NMRatio)]
    if len(uniform) == len(specs):
        return list(parse_ratios(specs))
    if uniform:
        parse_ratios(uniform)  # one M, no duplicates among the global ratios
    names = [p.name for p in specs if isinstance(p, RatioPlan)]
    if len(set(names)) != len(names):
        raise ValueError(f"plans used as branches need distinct names, got {names}")
    return specs


def _layer_m(name: str, specs: list, uniform_m: int) -> int:
    """The M of layer ``name`` across the branches (global sparse ratios and the plans naming it).

    Raises:
        ValueError: the branches give the layer more than one M.
    """
    ms = {uniform_m} if uniform_m > 1 else set()
    ms |= {p.ratios[name].m for p in specs if isinstance(p, RatioPlan) and name in p.ratios
           and not p.ratios[name].is_dense}
    if len(ms) > 1:
        raise ValueError(f"layer {name!r}: the branches give it M={sorted(ms)}; one M per layer nests its masks")
    return ms.pop() if ms else 1


def _layer_ratios(name: str, specs: list, m: int) -> tuple[NMRatio, ...]:
    return tuple(b.ratio(name, m) if isinstance(b, RatioPlan) else b for b in specs)


def _check_plan_layers(plans: list, model: nn.Module, layers: list, skipped: list) -> None:
    """Every layer a plan names exists, can be converted, and has a reduction axis divisible by its M
    (a layer every branch keeps dense, e.g. a searched plan's "4:4", stays the original layer)."""
    ok = {rec.name: mod for rec, mod, _ in layers}
    why_not = {rec.name: rec.reason for rec, _, _ in skipped}
    modules = dict(model.named_modules())
    for plan in plans:
        for layer, r in plan.ratios.items():
            if r.is_dense and why_not.get(layer) == DENSE_EVERYWHERE:
                continue
            if layer in why_not:
                raise ValueError(f"plan {plan.name!r} names layer {layer!r}, which cannot be converted: {why_not[layer]}")
            if layer not in ok:
                what = f"a {type(modules[layer]).__name__}" if layer in modules else "no such layer"
                raise ValueError(f"plan {plan.name!r} names layer {layer!r}, which {type(model).__name__} does not have "
                                 f"as a Conv/Linear ({what})")
            _, k = _reduction(ok[layer])
            if not r.is_dense and k % r.m:
                raise ValueError(f"plan {plan.name!r} gives layer {layer!r} M={r.m}, which does not divide its "
                                 f"reduction axis of length {k}")


def _branch_order(specs: list, layers: list, per_layer: dict) -> tuple[tuple, list[int]]:
    """(branch labels, order): global ratios alone keep :func:`parse_ratios`' order; with plans, branches
    are ordered by their kept share of the converted weights (sparsest first)."""
    if all(isinstance(b, NMRatio) for b in specs):
        return tuple(specs), list(range(len(specs)))
    sizes = {rec.name: mod._parameters["weight"].numel() for rec, mod, _ in layers}
    total = sum(sizes.values()) or 1
    kept = [sum(sizes[n] * per_layer[n][i].density for n in sizes) / total for i in range(len(specs))]
    order = sorted(range(len(specs)), key=lambda i: kept[i])
    return tuple(specs[i] if isinstance(specs[i], NMRatio) else specs[i].name for i in order), order


def _check_nested(name: str, ratios: tuple[NMRatio, ...], labels: tuple) -> None:
    """Per layer, N never decreases from a sparser branch to a denser one.

    Raises:
        ValueError: naming the layer and the two branches.
    """
    for i in range(1, len(ratios)):
        if ratios[i].density < ratios[i - 1].density:
            raise ValueError(f"branches are not nested at layer {name!r}: {ratios[i - 1]} on branch {labels[i - 1]} "
                             f"but {ratios[i]} on the denser branch {labels[i]}")


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


def model_ratios(model: nn.Module) -> tuple:
    """The branch labels (sparsest first) of a converted model: an :class:`NMRatio` per global-ratio
    branch, the plan's name for a plan branch.

    Raises:
        ValueError: ``model`` holds no dynamic layer.
    """
    for m in model.modules():
        if isinstance(m, DynamicNMMixin):
            return m.nm_labels
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
    index = resolve_branch(branch_key(branch), ratios)
    static = copy.deepcopy(model)
    for mod in list(static.modules()):
        if isinstance(mod, (DynamicNMMixin, VariableNormMixin)):
            restore_base(mod, index)
    for m in static.modules():
        m.__dict__.pop("dynprune_report", None)
        m.__dict__.pop("dynprune_config", None)
    return static
