"""``deploy()``: turn a converted network or a trained ClassPruning model into an inference module whose
sparse branches run on the N:M CPU kernel (:mod:`dynprune.sparse_cpu`).

Every dynamic ``Conv2d`` becomes a :class:`SparseConv2d` holding, per branch, either the compressed kept
weights (values plus input-channel indices) for the kernel, or a dense folded weight for oneDNN.
BatchNorm (variable or plain) that directly follows a convolution in an ``nn.Sequential`` is folded into
each branch's weights and bias, and a following ``nn.ReLU`` is fused. Routing is unchanged: the layers
read the branch from :func:`dynprune.use_branch`, so ``ClassPruning.route`` groups the batch per branch
as before. Other dynamic layers (Linear, ConvTranspose) stay on the dynamic masked path; the
:class:`DeployReport` says which layers run sparse and why the others do not.

Outputs equal the dynamic model's on every branch to float tolerance (BatchNorm folding and a different
summation order: max abs difference about 1e-5 on [0, 1] images).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import sparse_cpu
from .branch import current_branch, resolve_branch
from .checkpoint import check_finite, load_file, save_atomic
from .classpruning import ClassPruning
from .convert import model_ratios
from .layers import DynamicNMMixin, VariableNormMixin, dynamic_layers
from .nm import NMRatio

__all__ = ["deploy", "SparseConv2d", "DeployReport", "LayerPlan", "save_deployed", "load_deployed", "BACKENDS",
           "DEPLOY_FORMAT"]

BACKENDS = ("cpu",)
DEPLOY_FORMAT = "dynprune.deployed/1"


@dataclass
class LayerPlan:
    """How one dynamic layer runs after :func:`deploy`: per branch ``"sparse"`` (the N:M kernel),
    ``"dense"`` (oneDNN on the masked, folded weight) or ``"dynamic"`` (the layer left as converted),
    with the reason for every branch that does not run sparse, and what was fused into it."""

    name: str
    type: str
    shape: tuple[int, ...]
    paths: list[str]
    reasons: list[str]
    folded_norm: str = ""
    relu: bool = False


@dataclass
class DeployReport:
    """What :func:`deploy` did, layer by layer (``layers``), and whether the kernel can run here."""

    backend: str
    ratios: tuple[str, ...]
    options: dict[str, Any]
    kernel: dict[str, Any]
    layers: list[LayerPlan] = field(default_factory=list)

    def sparse_layers(self, branch: int) -> list[str]:
        """Names of the layers that run on the kernel for branch index ``branch``."""
        return [lp.name for lp in self.layers if lp.paths[branch] == "sparse"]

    def __str__(self) -> str:
        k = self.kernel
        head = (f"deploy backend={self.backend}, kernel " + (f"{k['isa']}" if k["available"]
                                                             else f"unavailable ({k['reason']})"))
        lines = [head, "| layer | type | shape | " + " | ".join(self.ratios) + " | fused | why not sparse |",
                 "|---|---|---|" + "---|" * len(self.ratios) + "---|---|"]
        for lp in self.layers:
            fused = "+".join(x for x in (lp.folded_norm and f"BN {lp.folded_norm}", lp.relu and "ReLU") if x)
            why = "; ".join(sorted({r for r in lp.reasons if r}))
            lines.append(f"| {lp.name} | {lp.type} | {lp.shape} | " + " | ".join(lp.paths) + f" | {fused} | {why} |")
        return "\n".join(lines)


def _branch_norm(norm: nn.Module, branch: int, num: int) -> nn.Module:
    """The norm module that branch ``branch`` uses (a variable norm's copy, or the norm itself)."""
    if isinstance(norm, VariableNormMixin) and branch < num - 1:
        return norm.aux_norms[branch]
    return norm


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding convolution: (W * s, (b - mean) * s + beta),
    s = gamma / sqrt(var + eps) (Ioffe & Szegedy 2015, inference form)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    b = (b - bn.running_mean) * scale
    if bn.bias is not None:
        b = b + bn.bias
    return weight * scale.view(-1, 1, 1, 1), b


def _sparse_reason(conv: nn.Conv2d, ratio: NMRatio, max_density: float, min_out_channels: int) -> str:
    """Why branch ``ratio`` of ``conv`` cannot (or should not) run on the kernel; "" if it can."""
    if ratio.is_dense:
        return ""  # the dense branch always goes to oneDNN; not a limitation worth reporting
    if conv.stride != (1, 1):
        return f"stride {conv.stride} (kernel: stride 1)"
    if conv.groups != 1:
        return f"groups={conv.groups} (kernel: groups 1)"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r}/{conv.padding_mode} (kernel: explicit zero padding)"
    if conv.nm_span != conv.in_channels:
        return f"{conv.in_channels} input channels not divisible by M={ratio.m} (kernel: whole groups)"
    if ratio.m not in sparse_cpu.SUPPORTED_M:
        return f"M={ratio.m} (kernel: M in {sparse_cpu.SUPPORTED_M})"
    if conv.out_channels < min_out_channels:
        return f"{conv.out_channels} output channels < min_out_channels={min_out_channels} (oneDNN faster)"
    if ratio.density > max_density:
        return f"density {ratio} > max_density={max_density:g} (oneDNN faster on the measured CPU)"
    return ""


class SparseConv2d(nn.Module):
    """A deployed dynamic ``Conv2d``: per branch, N:M-compressed or dense folded weights; inference only.

    Buffers per branch i: ``values_i`` float32 (Cout, kh*kw, Cin*N/M) and ``index_i`` int16 (same shape)
    for a sparse branch (see :func:`dynprune.sparse_cpu.compress`), or ``weight_i`` float32 (Cout, Cin,
    kh, kw) for a dense one; ``bias_i`` float32 (Cout,) always (BatchNorm folded in). The kernel layout
    is derived from them on first use, for this machine's SIMD width.

    Forward: (B, Cin, H, W) float32 -> (B, Cout, Ho, Wo) float32 on the active branch (channels_last
    memory from both paths, or NCHW with ``channels_last=False``: the kernel then copies in and out).
    Without a kernel (no compiler, no AVX2) sparse branches run their weights
    densely through ``F.conv2d`` after one warning, with the same result to float tolerance.
    """

    def __init__(self, conv: nn.Conv2d, plan: LayerPlan, norm: nn.Module | None = None, channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ratios: tuple[NMRatio, ...] = conv.nm_ratios
        self.ratios, self.paths, self.relu = ratios, list(plan.paths), plan.relu
        self.labels = conv.nm_labels  # what use_branch values resolve against (ratios, or plan names)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self._packed: dict[tuple[int, int], tuple] = {}
        self._dense: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            w0 = conv.dense_weight.detach()
            for i, ratio in enumerate(ratios):
                mask = conv.branch_mask(i)
                w, b = w0 * mask, (conv.bias.detach().clone() if conv.bias is not None else None)
                if norm is not None:
                    w, b = _fold(w, b, _branch_norm(norm, i, len(ratios)))
                if b is None:
                    b = torch.zeros(self.out_channels)
                self.register_buffer(f"bias_{i}", b.float().contiguous())
                if self.paths[i] == "sparse":
                    values, index = sparse_cpu.compress(w, mask, ratio.n, ratio.m)
                    self.register_buffer(f"values_{i}", values)
                    self.register_buffer(f"index_{i}", index)
                else:
                    self.register_buffer(f"weight_{i}", w.float().contiguous(memory_format=fmt))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"dilation={self.dilation}, paths=({', '.join(f'{r}:{p}' for r, p in zip(self.ratios, self.paths))})"
                + (", relu" if self.relu else ""))

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed.clear()
        self._dense.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _dense_weight(self, i: int) -> torch.Tensor:
        if self.paths[i] != "sparse":
            return getattr(self, f"weight_{i}")
        if i not in self._dense:  # fallback without a kernel: the same kept weights, run densely
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            self._dense[i] = sparse_cpu.decompress(getattr(self, f"values_{i}"), getattr(self, f"index_{i}"),
                                                   self.in_channels, self.kernel_size).contiguous(memory_format=fmt)
        return self._dense[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = resolve_branch(current_branch(), self.labels)
        bias = getattr(self, f"bias_{i}")
        if self.paths[i] == "sparse" and sparse_cpu.kernel() is not None:
            lanes = sparse_cpu.lanes()
            packed = self._packed.get((i, lanes))
            if packed is None:
                r = self.ratios[i]
                packed = sparse_cpu.pack_for_kernel(getattr(self, f"values_{i}"), getattr(self, f"index_{i}"), bias,
                                                    self.in_channels, r.n, r.m, lanes)
                self._packed[(i, lanes)] = packed
            y = sparse_cpu.nm_conv2d(x, packed, self.out_channels, self.kernel_size, self.padding,
                                     self.dilation, self.relu)
            return y if self.channels_last else y.contiguous()
        y = F.conv2d(x, self._dense_weight(i), bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu(y, inplace=True) if self.relu else y


def _is_conv2d(layer: nn.Module) -> bool:
    """A dynamic ``nn.Conv2d`` whose class keeps Conv2d's own forward (timm's Conv2dSame pads in its own)."""
    base = getattr(layer, "_dynprune_base", None)
    return (isinstance(layer, DynamicNMMixin) and issubclass(base, nn.Conv2d)
            and base.forward is nn.Conv2d.forward and base._conv_forward is nn.Conv2d._conv_forward)


def _foldable(norm: nn.Module) -> bool:
    return (isinstance(norm, _BatchNorm) and norm.track_running_stats and norm.running_mean is not None
            and isinstance(norm, nn.BatchNorm2d))


def _plan(name: str, conv: nn.Module, opts: dict[str, Any]) -> LayerPlan:
    shape = tuple(conv.dense_weight.shape)
    if not _is_conv2d(conv):
        base = conv._dynprune_base
        why = (f"{base.__name__} has its own forward (kernel: plain Conv2d)" if issubclass(base, nn.Conv2d)
               else f"{base.__name__} (kernel: Conv2d)")
        return LayerPlan(name, conv._dynprune_base.__name__, shape, ["dynamic"] * len(conv.nm_ratios),
                         [why] * len(conv.nm_ratios))
    reasons = [_sparse_reason(conv, r, opts["max_density"], opts["min_out_channels"]) for r in conv.nm_ratios]
    paths = ["dense" if (r.is_dense or why) else "sparse" for r, why in zip(conv.nm_ratios, reasons)]
    return LayerPlan(name, "Conv2d", shape, paths, reasons)


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _deploy_net(net: nn.Module, opts: dict[str, Any], report: DeployReport) -> None:
    """Replace, in place, every dynamic Conv2d of ``net`` by a :class:`SparseConv2d` (folding and fusing
    within ``nn.Sequential`` containers when ``opts['fuse']``)."""
    names = {id(m): n for n, m in net.named_modules()}
    done: set[int] = set()
    if opts["fuse"]:
        for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
            kids = list(seq.named_children())
            for k, (key, conv) in enumerate(kids):
                if id(conv) in done or not _is_conv2d(conv):
                    continue
                plan = _plan(names[id(conv)], conv, opts)
                norm, nxt = None, k + 1
                if nxt < len(kids) and _foldable(kids[nxt][1]):
                    norm, plan.folded_norm = kids[nxt][1], names[id(kids[nxt][1])]
                    nxt += 1
                if nxt < len(kids) and type(kids[nxt][1]) is nn.ReLU:
                    plan.relu = True
                    setattr(seq, kids[nxt][0], nn.Identity())
                if norm is not None:
                    setattr(seq, kids[k + 1][0], nn.Identity())
                setattr(seq, key, SparseConv2d(conv, plan, norm, opts["channels_last"]))
                done.add(id(conv))
                report.layers.append(plan)
    for name, layer in list(dynamic_layers(net)):
        if id(layer) in done:
            continue
        plan = _plan(name, layer, opts)
        if _is_conv2d(layer):
            _set_child(net, name, SparseConv2d(layer, plan, channels_last=opts["channels_last"]))
        report.layers.append(plan)
    order = {n: k for k, (n, _) in enumerate(net.named_modules())}
    report.layers.sort(key=lambda lp: order.get(lp.name, len(order)))


def _in_channels(model: nn.Module) -> int:
    if isinstance(model, ClassPruning):
        return model.in_channels
    c = getattr(model, "in_channels", None)
    if isinstance(c, int):
        return c
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return conv.in_channels


def _input_hook(in_channels: int, channels_last: bool):
    def check(module: nn.Module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"deployed {type(module).__name__} expects a (B, {in_channels}, H, W) float32 tensor, "
                             f"got {type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
        if x.dtype != torch.float32:
            raise TypeError(f"deployed {type(module).__name__} expects float32 input, got {x.dtype} "
                            f"(convert with x.float(); pixels in [0, 1])")
        if x.shape[1] != in_channels:
            raise ValueError(f"deployed {type(module).__name__} expects {in_channels} input channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *args[1:])
    return check


def deploy(model: nn.Module, backend: str = "cpu", *, max_density: float = 0.25, min_out_channels: int = 16,
           fuse: bool = True, channels_last: bool = True) -> nn.Module:
    """An inference copy of ``model`` whose eligible sparse branches run on the N:M CPU kernel.

    Args:
        model: a network made by :func:`dynprune.convert`, or a :class:`~dynprune.ClassPruning` model
            (its restorer is deployed, its classifier kept).
        backend: ``"cpu"`` (the only one).
        max_density: branches denser than this (N/M) run on oneDNN; default 0.25 because on the measured
            Intel Xeon the kernel beats oneDNN at 1:4 but not at 2:4 (docs/results.md, "Sparse CPU kernel").
        min_out_channels: layers with fewer output channels run on oneDNN (a 16-lane tile would be mostly
            empty).
        fuse: fold BatchNorm and fuse ReLU that follow a convolution inside an ``nn.Sequential``.
        channels_last: run the whole model on channels_last activations (the kernel's layout; no copy
            between layers). ``False`` keeps NCHW for models whose other layers are slow in channels_last
            (e.g. InstanceNorm: GCANet); the kernel layers then copy their input and output once each.
    Returns:
        A deep copy in eval mode, of the same class as ``model``, with ``deploy_report`` (a
        :class:`DeployReport`) and ``deploy_options``. Inputs must be (B, C, H, W) float32; with
        ``channels_last`` they are put in channels_last memory once at the entry.
    Raises:
        ValueError: an unknown backend (the valid ones are named), options out of range, or a model that
            holds no dynamic N:M layer (never converted).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown deploy backend {backend!r}: valid backends are {list(BACKENDS)}")
    if not 0 <= max_density <= 1 or min_out_channels < 1:
        raise ValueError(f"deploy options out of range: max_density={max_density} (need 0..1), "
                         f"min_out_channels={min_out_channels} (need >= 1)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy() needs an nn.Module, got {type(model).__name__}")
    net = model.restorer if isinstance(model, ClassPruning) else model
    ratios = model_ratios(net)   # ValueError for a model that was never converted
    opts = {"backend": backend, "max_density": float(max_density), "min_out_channels": int(min_out_channels),
            "fuse": bool(fuse), "channels_last": bool(channels_last)}
    out = copy.deepcopy(model).eval()
    out_net = out.restorer if isinstance(out, ClassPruning) else out
    report = DeployReport(backend, tuple(str(r) for r in ratios), opts, sparse_cpu.kernel_status())
    _deploy_net(out_net, opts, report)
    if report.kernel["available"] is False and any("sparse" in lp.paths for lp in report.layers):
        sparse_cpu.kernel()  # the one warning naming the reason
    if channels_last:
        out.to(memory_format=torch.channels_last)
    hook = _input_hook(_in_channels(model), channels_last)
    out.register_forward_pre_hook(hook)
    if out_net is not out:
        out_net.register_forward_pre_hook(hook)
    out.deploy_report, out.deploy_options = report, opts
    return out


def save_deployed(model: nn.Module, path: str | Path, config: dict, arch: dict) -> Path:
    """Write a deployed ClassPruning model as ``{"format", "config", "arch", "deploy", "model"}``: its
    state_dict (packed branches included) plus what rebuilds it; loads with ``weights_only=True``.

    Raises:
        ValueError: ``model`` was not made by :func:`deploy`.
    """
    opts = getattr(model, "deploy_options", None)
    if opts is None:
        raise ValueError(f"{type(model).__name__} was not made by dynprune.deploy()")
    return save_atomic({"format": DEPLOY_FORMAT, "config": config, "arch": arch, "deploy": opts,
                        "model": model.state_dict()}, path)


def is_deployed_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == DEPLOY_FORMAT


def load_deployed(path: str | Path, obj: dict | None = None) -> nn.Module:
    """Rebuild a model written by :func:`save_deployed` (in eval mode, ready to run).

    On a machine where the kernel cannot run, it still loads and runs its sparse branches densely (one
    warning names the reason).

    ``obj``: the file's content when the caller has read it already (it is not read again).

    Raises:
        FileNotFoundError: missing file. ValueError: not a deployed artifact, non-finite weights, or weights
        that do not fit.
    """
    from .config import TrainConfig
    from .trainer import build_model

    obj = load_file(path) if obj is None else obj
    if not is_deployed_file(obj):
        raise ValueError(f"{str(path)!r} is not a deployed dynprune model (no format {DEPLOY_FORMAT!r}); "
                         f"make one with `dynprune deploy CKPT OUT`")
    cfg = TrainConfig.model_validate(obj["config"])
    check_finite(obj["model"], f"deployed model {str(path)!r}")
    opts = {k: v for k, v in obj["deploy"].items() if k != "backend"}
    model = deploy(build_model(cfg, arch=obj.get("arch", {})), obj["deploy"].get("backend", "cpu"), **opts)
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as err:
        raise ValueError(f"deployed model {str(path)!r} does not fit the architecture its config describes: "
                         f"{str(err).splitlines()[0]}") from err
    return model.eval()
