"""``deploy()``: a converted network or a trained ClassPruning model as an inference module whose sparse
branches run on the CPU kernels of the backend registry (:mod:`dynprune.deploy.backends`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .. import sparse_cpu
from ..classpruning import ClassPruning
from ..convert import model_ratios
from ..layers import DynamicNMMixin, dynamic_layers
from .backends import backend_names, choose, get_backend
from .calibration import calibrate_int8
from .classifier import LowPrecisionClassifier
from .fold import foldable
from .layer import LayerPlan, SparseConv2d, chained

__all__ = ["deploy", "DeployReport", "PRECISIONS"]


@dataclass
class DeployReport:
    """What :func:`deploy` did, layer by layer (``layers``), and whether the kernels can run here."""

    backend: str
    ratios: tuple[str, ...]
    options: dict[str, Any]
    kernel: dict[str, Any]
    layers: list[LayerPlan] = field(default_factory=list)
    calibration: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # int8 with a minimum SQNR: {layer: [dB per branch]} measured, and the (layer, branch index) kept in fp32
    sensitivity: dict[str, list[float | None]] = field(default_factory=dict)
    kept_fp32: list[tuple[str, int]] = field(default_factory=list)
    int8_min_sqnr: float | None = None

    def sparse_layers(self, branch: int) -> list[str]:
        """Names of the layers that run on a sparse kernel (any sparse backend) for branch index ``branch``."""
        return [lp.name for lp in self.layers if lp.paths[branch] != "dynamic" and get_backend(lp.paths[branch]).sparse]

    def __str__(self) -> str:
        k = self.kernel
        head = (f"deploy backend={self.backend}, pattern {self.options.get('pattern', 'element')}, kernel "
                + (f"{k['isa']}" if k["available"] else f"unavailable ({k['reason']})"))
        lines = [head, "| layer | type | shape | " + " | ".join(self.ratios) + " | fused | why not sparse |",
                 "|---|---|---|" + "---|" * len(self.ratios) + "---|---|"]
        for lp in self.layers:
            fused = "+".join(x for x in (lp.folded_norm and f"BN {lp.folded_norm}", lp.relu and "ReLU") if x)
            why = "; ".join(sorted({r for r in lp.reasons if r}))
            lines.append(f"| {lp.name} | {lp.type} | {lp.shape} | " + " | ".join(lp.paths) + f" | {fused} | {why} |")
        if self.sensitivity:
            lines += ["int8 sensitivity: output SQNR (dB) with only this layer in int8, per branch; below "
                      f"{self.int8_min_sqnr} dB the branch stays fp32",
                      "| layer | " + " | ".join(self.ratios) + " |", "|---|" + "---:|" * len(self.ratios)]
            for name, dbs in self.sensitivity.items():
                lines.append(f"| {name} | " + " | ".join("-" if d is None else f"{d:.1f}" + (
                    " (fp32)" if (name, i) in self.kept_fp32 else "") for i, d in enumerate(dbs)) + " |")
        return "\n".join(lines)


def _is_conv2d(layer: nn.Module) -> bool:
    """A dynamic ``nn.Conv2d`` whose class keeps Conv2d's own forward (timm's Conv2dSame pads in its own)."""
    base = getattr(layer, "_dynprune_base", None)
    return (isinstance(layer, DynamicNMMixin) and issubclass(base, nn.Conv2d)
            and base.forward is nn.Conv2d.forward and base._conv_forward is nn.Conv2d._conv_forward)


def _plan(name: str, conv: nn.Module, opts: dict[str, Any], forced: dict[str, list[str]]) -> LayerPlan:
    shape = tuple(conv.dense_weight.shape)
    num = len(conv.nm_ratios)
    if not _is_conv2d(conv):
        base = conv._dynprune_base
        why = (f"{base.__name__} has its own forward (kernel: plain Conv2d)" if issubclass(base, nn.Conv2d)
               else f"{base.__name__} (kernel: Conv2d)")
        return LayerPlan(name, base.__name__, shape, ["dynamic"] * num, [why] * num)
    if name in forced:
        paths = list(forced[name])
        if len(paths) != num:
            raise ValueError(f"deploy paths for layer {name!r} name {len(paths)} branches, the layer has {num}")
        for p in paths:
            get_backend(p)
        return LayerPlan(name, "Conv2d", shape, paths, [""] * num)
    picks = [choose(conv, r, conv.nm_pattern, opts["backends"], opts) for r in conv.nm_ratios]
    return LayerPlan(name, "Conv2d", shape, [p for p, _ in picks], [why for _, why in picks])


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _deploy_net(net: nn.Module, opts: dict[str, Any], report: DeployReport, forced: dict[str, list[str]]) -> None:
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
                plan = _plan(names[id(conv)], conv, opts, forced)
                norm, nxt = None, k + 1
                if nxt < len(kids) and foldable(kids[nxt][1]):
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
        plan = _plan(name, layer, opts, forced)
        if _is_conv2d(layer):
            _set_child(net, name, SparseConv2d(layer, plan, channels_last=opts["channels_last"]))
        report.layers.append(plan)
    order = {n: k for k, (n, _) in enumerate(net.named_modules())}
    report.layers.sort(key=lambda lp: order.get(lp.name, len(order)))


def _drop_relu_before_int8(net: nn.Module) -> None:
    """Replace by ``nn.Identity`` every ``nn.ReLU`` that directly precedes, in an ``nn.Sequential``, a layer running
    int8 on every branch (e.g. after DnCNN's unconverted fp32 first convolution): that layer's input range,
    calibrated on the ReLU's output, starts at 0, so its uint8 quantization (zero point 0) clamps negatives to 0
    already; the output is bit-identical and one pass over the activations is saved."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq.named_children())
        for (key, relu), (_, nxt) in zip(kids, kids[1:]):
            if type(relu) is nn.ReLU and isinstance(nxt, SparseConv2d) and all(p == "int8_cpu" for p in nxt.paths):
                setattr(seq, key, nn.Identity())


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


def _allowed(backend: str | Sequence[str]) -> tuple[str, ...]:
    """The backends ``deploy(backend=...)`` may use: every registered one for "cpu", else the named ones."""
    if isinstance(backend, str):
        if backend == "cpu":
            return backend_names()
        backend = [backend]
    names = tuple(backend)
    for name in names:
        if name not in backend_names():
            raise ValueError(f"unknown deploy backend {name!r}: use 'cpu' (every registered backend) or one of "
                             f"{list(backend_names())}")
    return names


PRECISIONS = ("fp32", "bf16", "int8")
SENSITIVITY_IMAGES = 4   # int8_min_sqnr measures on the first calibration images (calibration_images: one
                         # image at each level first)


def deploy(model: nn.Module, backend: str | Sequence[str] = "cpu", *, precision: str = "fp32",
           calibration: torch.Tensor | None = None, max_density: float = 0.25,
           max_density_vector: float = 0.75, min_out_channels: int | None = None, fuse: bool = True,
           channels_last: bool = True, paths: dict[str, list[str]] | None = None,
           int8_min_sqnr: float | None = None) -> nn.Module:
    """An inference copy of ``model`` whose sparse branches run on the CPU kernels.

    Per layer and branch the first registered backend (:mod:`dynprune.deploy.backends`, preference order
    ``vector_cpu``, ``nm_cpu``, ``onednn``) that supports it runs it; the rule, measured on Intel, AMD
    Zen 4 and AVX2 paths (docs/results.md, "Sparse N:M CPU kernel"): a vector-pattern branch runs on the vector
    kernel up to ``max_density_vector``, an element-pattern branch on the element kernel up to
    ``max_density``, and the dense branch, other densities and the layers the kernels cannot run (stride,
    groups, padding modes, partial groups, few output channels) on oneDNN. ``deploy_report`` says which ran
    where and why not sparse.

    Args:
        model: a network made by :func:`dynprune.convert`, or a :class:`~dynprune.ClassPruning` model
            (its restorer is deployed; its classifier kept, at bf16/int8 with BatchNorm folded and in bf16:
            :class:`~dynprune.deploy.classifier.LowPrecisionClassifier`).
        backend: ``"cpu"`` (every registered backend, chosen per layer), a registered backend's name, or a
            list of them (``"onednn"`` is always a last resort).
        max_density: element-pattern branches denser than this (N/M) run on oneDNN; default 0.25 (the
            element kernel beats oneDNN at 1:4 on every measured CPU, at 2:4 only on some).
        max_density_vector: the same for vector-pattern branches; default 0.75.
        min_out_channels: layers with fewer output channels run on oneDNN in fp32. Default: 16 at fp32 (a SIMD tile
            would be mostly empty and oneDNN is faster), 1 at bf16/int8 (DnCNN-B's 64->1 last layer: 5.5 ms on
            the int8 kernel, 29 ms on oneDNN fp32, 1 thread, Zen 4; docs/results.md).
        fuse: fold BatchNorm and fuse ReLU that follow a convolution inside an ``nn.Sequential``.
        channels_last: run the whole model on channels_last activations (the kernels' layout; no copy
            between layers). ``False`` keeps NCHW for models whose other layers are slow in channels_last
            (e.g. InstanceNorm: GCANet); the kernel layers then copy their input and output once each.
        paths: {layer name: backend per branch} overriding the rule (a saved artifact's choice).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``. At bf16 every layer the bf16 kernel takes (``bf16_cpu``,
            the same layers as int8) runs every branch with bf16 weights and activations and fp32 accumulation,
            consecutive bf16 layers passing bf16; no calibration. At int8 every layer the int8 kernel takes
            (``int8_cpu``: stride 1, 16 to 256 input channels; the others, e.g. a network's 1- or 3-channel first
            layer, stay fp32) runs every branch in int8: weights per output channel, activations per tensor *and
            per branch* (like variable BatchNorm's statistics), calibrated on ``calibration``; consecutive int8
            layers pass uint8 directly.
        calibration: for int8, (N, C, H, W) float32 degraded images in [0, 1] at every level the model routes
            (each branch is calibrated on all of them: :func:`~dynprune.deploy.calibration.calibrate_int8`).
        int8_min_sqnr: for int8, measure each int8 layer's sensitivity per branch
            (:func:`dynprune.qat.sensitivity`: the output's SQNR in dB with only that layer in int8, on the first
            4 images of ``calibration``: :func:`~dynprune.deploy.calibration.calibration_images` puts one image
            at every level first) and keep the (layer, branch) pairs below this many dB in fp32 (on the backend
            fp32 deployment picks). The report lists the measurements (``sensitivity``, ``kept_fp32``). None:
            every layer the int8 kernel takes.
    Returns:
        A deep copy in eval mode, of the same class as ``model``, with ``deploy_report`` (a
        :class:`DeployReport`) and ``deploy_options``. Inputs must be (B, C, H, W) float32; with
        ``channels_last`` they are put in channels_last memory once at the entry.
    Raises:
        ValueError: a backend that is not registered (the registered ones are named), a precision other than
            ``PRECISIONS``, int8 without calibration images or with images of the wrong shape or non-finite
            values, ``int8_min_sqnr`` at another precision, options out of range,
            a model with tensors off the CPU (the CPU kernels' packing; what to do is named), or a model that
            holds no dynamic N:M layer (never converted).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown deploy precision {precision!r}: use one of {list(PRECISIONS)}")
    if precision == "int8":
        _check_calibration(calibration, _in_channels(model))
    elif int8_min_sqnr is not None:
        raise ValueError(f"int8_min_sqnr applies to precision='int8', not {precision!r}")
    opts = dict(max_density=max_density, max_density_vector=max_density_vector, fuse=fuse, channels_last=channels_last)
    out = _deploy(model, backend, precision=precision, calibration=calibration, min_out_channels=min_out_channels,
                  paths=paths, **opts)
    if precision == "int8" and int8_min_sqnr is not None:
        out = _keep_sensitive_fp32(out, model, backend, calibration, float(int8_min_sqnr), min_out_channels, opts)
    return out


def _keep_sensitive_fp32(dep: nn.Module, model: nn.Module, backend, calibration: torch.Tensor, min_sqnr: float,
                         min_out_channels: int | None, opts: dict[str, Any]) -> nn.Module:
    """``deploy(int8_min_sqnr=...)``: the (layer, branch) pairs of int8 deployment ``dep`` whose SQNR is below
    ``min_sqnr`` moved to their fp32 backend (deployed again with those paths)."""
    from .. import qat

    rep = dep.deploy_report
    net = model.restorer if isinstance(model, ClassPruning) else model
    sens = qat.sensitivity(net, qat.plan_from_report(rep), calibration[:SENSITIVITY_IMAGES])
    low = sorted((name, i) for name, dbs in sens.items() for i, d in enumerate(dbs) if d is not None and d < min_sqnr)
    if low:
        fp32 = {lp.name: lp.paths for lp in _deploy(model, backend, precision="fp32", **opts).deploy_report.layers}
        forced = {lp.name: list(lp.paths) for lp in rep.layers if "dynamic" not in lp.paths}
        for name, i in low:
            forced[name][i] = fp32[name][i]
        dep = _deploy(model, backend, precision="int8", calibration=calibration, min_out_channels=min_out_channels,
                      paths=forced, **opts)
        rep = dep.deploy_report
    rep.sensitivity, rep.kept_fp32, rep.int8_min_sqnr = sens, low, min_sqnr
    return dep


def _check_calibration(images, in_channels: int) -> None:
    if images is None:
        raise ValueError("deploy(precision='int8') needs calibration images: calibration=a (N, C, H, W) float32 "
                         "tensor of degraded inputs in [0, 1] at every level the model routes (8-32 images)")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"calibration must be a (N, {in_channels}, H, W) float tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.shape[1] != in_channels:
        raise ValueError(f"calibration images have {images.shape[1]} channels, the model takes {in_channels} "
                         f"(shape {tuple(images.shape)})")
    if not images.is_floating_point() or not bool(torch.isfinite(images).all()):
        raise ValueError("calibration images must be finite floating-point values (pixels in [0, 1]); "
                         f"got dtype {images.dtype} with non-finite or non-float values")


def _deploy(model: nn.Module, backend: str | Sequence[str] = "cpu", *, precision: str = "fp32",
            calibration: torch.Tensor | None = None, max_density: float = 0.25, max_density_vector: float = 0.75,
            min_out_channels: int | None = None, fuse: bool = True, channels_last: bool = True,
            paths: dict[str, list[str]] | None = None) -> nn.Module:
    """:func:`deploy` without the calibration check: an artifact's int8 layers get their scales from its file
    (:func:`~dynprune.deploy.load_deployed`)."""
    allowed = _allowed(backend)
    if min_out_channels is None:
        min_out_channels = 16 if precision == "fp32" else 1
    if not 0 <= max_density <= 1 or not 0 <= max_density_vector <= 1 or min_out_channels < 1:
        raise ValueError(f"deploy options out of range: max_density={max_density}, max_density_vector="
                         f"{max_density_vector} (need 0..1), min_out_channels={min_out_channels} (need >= 1)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy() needs an nn.Module, got {type(model).__name__}")
    where = next((t.device for t in [*model.parameters(), *model.buffers()] if t.device.type != "cpu"), None)
    if where is not None:
        raise ValueError(f"deploy() packs for the CPU kernels, and this model is on {where}: deploy model.cpu() "
                         f"(a copy; keep the dynamic model on {where.type} for GPU inference, where "
                         f"dynprune.export_branch gives a plain model per branch)")
    net = model.restorer if isinstance(model, ClassPruning) else model
    ratios = model_ratios(net)   # ValueError for a model that was never converted
    pattern = next(layer for _, layer in dynamic_layers(net)).nm_pattern
    opts = {"backend": backend if isinstance(backend, str) else list(backend), "backends": allowed,
            "max_density": float(max_density), "max_density_vector": float(max_density_vector),
            "min_out_channels": int(min_out_channels), "fuse": bool(fuse), "channels_last": bool(channels_last),
            "pattern": str(pattern), "precision": precision}
    out = copy.deepcopy(model).eval()
    out_net = out.restorer if isinstance(out, ClassPruning) else out
    if isinstance(out, ClassPruning) and precision != "fp32":
        out.classifier = LowPrecisionClassifier(out.classifier)
    report = DeployReport(opts["backend"] if isinstance(opts["backend"], str) else ",".join(allowed),
                          tuple(str(r) for r in ratios), opts, sparse_cpu.kernel_status())
    _deploy_net(out_net, opts, report, dict(paths or {}))
    if precision == "int8":
        _drop_relu_before_int8(out_net)
    if report.kernel["available"] is False and any(report.sparse_layers(i) for i in range(len(ratios))):
        sparse_cpu.kernel()  # the one warning naming the reason
    if precision != "fp32" and any(get_backend(p).precision == precision for lp in report.layers for p in lp.paths):
        sparse_cpu.warn_lowp_fallback(precision)   # one warning where the kernel lacks its instructions
    if precision == "int8":
        report.calibration = calibrate_int8(out_net, net, calibration) if calibration is not None else {}
    if precision == "bf16":
        for a, _, i in chained(out_net, "bf16_cpu"):
            getattr(a, f"b16out_{i}").fill_(1.0)
    if channels_last:
        out.to(memory_format=torch.channels_last)
    hook = _input_hook(_in_channels(model), channels_last)
    out.register_forward_pre_hook(hook)
    if out_net is not out:
        out_net.register_forward_pre_hook(hook)
    opts["paths"] = {lp.name: list(lp.paths) for lp in report.layers if "dynamic" not in lp.paths}
    out.deploy_report, out.deploy_options = report, opts
    return out
