"""Quantization-aware training (QAT) for int8 deployment: the network trains through the rounding that
``deploy(precision="int8")`` will apply, so its weights learn to absorb it.

What is simulated is taken from :func:`dynprune.deploy` itself (:func:`int8_plan`): which layers and branches
run on the int8 kernel, which BatchNorm each one folds, and their per-branch activation quantization (the same
MinMax calibration). On every one of those (layer, branch):

- the input is fake-quantized to uint8 at the branch's scale and zero point (``torch.fake_quantize_per_tensor_
  affine``: straight-through gradient inside the range, zero outside; Jacob et al., "Quantization and Training
  of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, section 3);
- the masked weight is quantized as deployment quantizes it, *after* folding the branch's BatchNorm
  (``w * s``, ``s = gamma / sqrt(var + eps)``, then int8 symmetric per output channel) and unfolded again
  (``/ s``), so that the frozen BatchNorm that follows computes exactly the folded int8 convolution (Jacob et
  al. section 3.2, with frozen statistics as in Krishnamoorthi, "Quantizing deep convolutional networks for
  efficient inference", 2018, section 3.2). The gradient passes straight through (the per-channel scale is the
  channel's maximum, so nothing clips).

Between consecutive int8 layers deployment writes uint8 at the next layer's input quantization: that is the
next layer's input fake quantization here. The activation ranges are calibrated once, on the weights the run
starts with (so a resumed run simulates the same ranges); deployment calibrates again on the trained weights
with the same images. QAT is a fine-tune of a trained model (``init_from``), with frozen BatchNorm statistics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from . import quant
from .branch import current_branch, resolve_branch
from .deploy.fold import bn_scale, branch_norm

__all__ = ["LayerQAT", "int8_plan", "plan_from_report", "attach", "fake_quant_weight", "sensitivity"]


@dataclass
class LayerQAT:
    """One deployed int8 layer's simulation: ``acts`` per branch (None where that branch is not int8), and
    ``norm``: the name of the BatchNorm that deployment folds into it (None: none)."""

    acts: list[quant.ActQuant | None]
    norm: str | None


def int8_plan(net: nn.Module, calibration: torch.Tensor) -> dict[str, LayerQAT]:
    """What ``deploy(net, precision="int8", calibration=calibration)`` runs in int8, per dynamic layer name.

    Args:
        net: a converted network (any device; deployed from a CPU copy). calibration: (N, C, H, W) float32
            degraded images in [0, 1] (:func:`dynprune.deploy.calibration.calibration_images`).
    Raises:
        ValueError: as :func:`dynprune.deploy.deploy` (calibration of the wrong shape, non-finite values).
    """
    import warnings

    from .deploy import deploy

    with warnings.catch_warnings():   # the kernel-fallback warning: QAT needs the plan, not the kernel
        warnings.simplefilter("ignore")
        dep = deploy(copy.deepcopy(net).cpu(), precision="int8", calibration=calibration)
    return plan_from_report(dep.deploy_report)


def plan_from_report(rep) -> dict[str, LayerQAT]:
    """:func:`int8_plan` read off the :class:`~dynprune.deploy.api.DeployReport` of an int8 deployment."""
    plan = {}
    for lp in rep.layers:
        if "int8_cpu" not in lp.paths:
            continue
        acts = [quant.act_qparams(*r) if p == "int8_cpu" else None for p, r in zip(lp.paths, rep.calibration[lp.name])]
        plan[lp.name] = LayerQAT(acts, lp.folded_norm or None)
    return plan


def fake_quant_weight(w: torch.Tensor, fold: torch.Tensor | None) -> torch.Tensor:
    """``w`` (Cout, ...) float as int8 deployment computes it: ``q(w * fold) / fold`` with ``q`` the symmetric
    per-output-channel int8 rounding of :func:`dynprune.quant.quantize_weight` and ``fold`` (Cout,) the folded
    BatchNorm's scale (None: 1; channels with a zero scale pass unchanged). Forward value only; the gradient
    is the identity (straight-through)."""
    with torch.no_grad():
        f = torch.ones(w.shape[0], device=w.device, dtype=w.dtype) if fold is None else fold.detach().to(w.dtype)
        f = torch.where(f == 0, torch.ones_like(f), f)
        shape = (-1,) + (1,) * (w.dim() - 1)
        wf = w.detach() * f.view(shape)
        amax = wf.abs().reshape(w.shape[0], -1).amax(1)
        scale = torch.where(amax > 0, amax / quant.QMAX_W, torch.ones_like(amax)).float()
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        q = torch.fake_quantize_per_channel_affine(wf.float(), scale, zero, 0, -quant.QMAX_W, quant.QMAX_W)
        delta = q.to(w.dtype) / f.view(shape) - w.detach()
    return w + delta


class _Handle:
    def __init__(self, layers, hooks):
        self.layers, self.hooks = layers, hooks

    def remove(self) -> None:
        """Stop simulating: the network computes in float32 again."""
        for layer in self.layers:
            layer.nm_weight_transform = None
        for h in self.hooks:
            h.remove()
        self.layers, self.hooks = [], []


def attach(net: nn.Module, plan: dict[str, LayerQAT]):
    """Simulate int8 deployment in ``net`` (in place) on the layers and branches of ``plan``
    (:func:`int8_plan`). Returns a handle whose ``remove()`` undoes it. The simulation is not saved with the
    network (nor copied by ``copy.deepcopy``).

    Raises:
        ValueError: a layer of ``plan`` that ``net`` lacks; (in the forward) a folded BatchNorm in training mode
            without frozen running statistics (``frozen_bn``), which folding assumes.
    """
    layers, hooks = [], []
    for name, lq in plan.items():
        try:
            conv = net.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"QAT plan names layer {name!r}, which this network lacks") from err
        norm = net.get_submodule(lq.norm) if lq.norm else None
        num = len(lq.acts)
        acts = lq.acts

        def weight(w, i, norm=norm, acts=acts, num=num, name=name, norm_name=lq.norm):
            if acts[i] is None:
                return w
            if norm is not None and norm.training and not getattr(norm, "nm_frozen_stats", False):
                raise ValueError(f"QAT folds {norm_name!r} into {name!r} with its running statistics, but it "
                                 "normalizes with batch statistics in training: set frozen_bn: true")
            return fake_quant_weight(w, None if norm is None else bn_scale(branch_norm(norm, i, num)))

        def inputs(module, args, acts=acts):
            a = acts[resolve_branch(current_branch(), module.nm_labels)]
            if a is None:
                return None
            return (torch.fake_quantize_per_tensor_affine(args[0], a.scale, a.zero, 0, 255),) + tuple(args[1:])

        conv.nm_weight_transform = weight
        layers.append(conv)
        hooks.append(conv.register_forward_pre_hook(inputs))
    return _Handle(layers, hooks)


def sensitivity(net: nn.Module, plan: dict[str, LayerQAT], images: torch.Tensor,
                batch: int = 4) -> dict[str, list[float | None]]:
    """Per layer of ``plan`` and branch: the SQNR (dB) of ``net``'s output with only that layer of that branch
    simulated in int8, against the float output, over ``images`` (N, C, H, W) float32:
    ``10 log10(sum y^2 / sum (y_int8 - y)^2)`` (higher: less sensitive; inf where nothing changes). None for the
    branches that do not run in int8. The per-layer sensitivity analysis of post-training quantization tools
    (e.g. NNCF's accuracy control, AIMET's layer-wise analysis), on the restored image."""
    from .branch import use_branch

    net = copy.deepcopy(net).eval()
    branches = len(next(iter(plan.values())).acts) if plan else 0

    def outputs(i):
        with torch.no_grad(), use_branch(i):
            return torch.cat([net(images[k:k + batch]) for k in range(0, images.shape[0], batch)])

    ref = [outputs(i) for i in range(branches)]
    out = {}
    for name, lq in plan.items():
        handle = attach(net, {name: lq})
        try:
            out[name] = [None if a is None else
                         float(10 * torch.log10(ref[i].pow(2).sum() / (outputs(i) - ref[i]).pow(2).sum()))
                         for i, a in enumerate(lq.acts)]
        finally:
            handle.remove()
    return out
