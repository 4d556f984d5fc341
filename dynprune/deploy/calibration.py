"""Int8 calibration of a deployed model: degraded images at every level, and per-branch activation ranges."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from .. import quant
from ..branch import use_branch
from .layer import SparseConv2d, chained

__all__ = ["calibration_images", "run_calibration_images", "calibrate_int8"]


def calibration_images(folder: str | Path, degradation, count: int = 8, size: int = 160, channels: int = 1,
                       seed: int = 0) -> torch.Tensor:
    """Calibration inputs: the first ``count`` images of ``folder`` (sorted), center-cropped to ``size`` x ``size``
    (or to the smallest side among them, if smaller), each degraded at every level of ``degradation`` (a
    degradation plugin instance, e.g. ``create("degradations", "gaussian_noise", sigmas=[15, 25, 50])``), seeded.

    Returns:
        (count * levels, channels, s, s) float32, s = min(size, the smallest side); clean pixels in [0, 1].
    Raises:
        FileNotFoundError: ``folder`` does not exist. ValueError: it holds no image.
    """
    from ..imageio import list_images, read_image

    images = [read_image(path, channels) for path in list_images(folder)[:count]]
    side = min([size] + [min(x.shape[-2:]) for x in images])
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in images:
        top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        x = x[:, top:top + side, left:left + side].unsqueeze(0)
        out += [degradation(x, generator=g, level=i)[0] for i in range(getattr(degradation, "levels", 1))]
    return torch.cat(out).float()


def run_calibration_images(cfg, folder: str | Path | None = None, count: int = 8, channels: int = 1) -> torch.Tensor:
    """:func:`calibration_images` for a training config ``cfg`` (:class:`~dynprune.config.TrainConfig`):
    ``folder`` (default: the run's dataset ``root``) degraded by the run's degradation at every level.

    Raises:
        ValueError: no folder given and the dataset names none that exists here.
    """
    from ..config import expand_data_root
    from ..registry import create

    folder = folder or expand_data_root(str(cfg.dataset.kwargs.get("root", "")))
    if not folder or not Path(folder).is_dir():
        raise ValueError(f"int8 calibration needs a folder of clean images (the run's dataset folder "
                         f"{folder or '(none: its dataset names no root)'} is not a folder here): give one")
    deg = create("degradations", cfg.degradation.name, **cfg.degradation.kwargs)
    return calibration_images(folder, deg, count=count, channels=channels)


def _input_ranges(net: nn.Module, images: torch.Tensor, names: set[str], branches: int, batch: int = 4,
                  percentile: float | None = None) -> dict[str, list[tuple[float, float]]]:
    """Per dynamic layer in ``names`` and per branch, the (min, max) of its input over ``images`` run through a
    float copy of ``net`` on that branch; with ``percentile`` (e.g. 99.999) the max is the largest over the
    batches of that percentile of a batch's values."""
    net = copy.deepcopy(net).eval()
    ranges = {name: [(math.inf, -math.inf)] * branches for name in names}
    branch = [0]

    def hook(name):
        def record(module, args):
            x = args[0].detach()
            lo, hi = ranges[name][branch[0]]
            top = x.max() if percentile is None else x.flatten().topk(
                max(1, round((1 - percentile / 100) * x.numel()))).values[-1]
            ranges[name][branch[0]] = (min(lo, float(x.min())), max(hi, float(top)))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in net.named_modules() if n in names]
    try:
        with torch.no_grad():
            for i in range(branches):
                branch[0] = i
                with use_branch(i):
                    for k in range(0, images.shape[0], batch):
                        net(images[k:k + batch].float())
    finally:
        for h in handles:
            h.remove()
    return ranges


def calibrate_int8(deployed: nn.Module, net: nn.Module, images: torch.Tensor,
                   percentile: float | None = None) -> dict[str, list[tuple[float, float]]]:
    """Set the activation quantization of every int8 branch of ``deployed`` (the deployed copy of the dynamic
    ``net``) from ``images`` (N, C, H, W) float32: per layer and branch, uint8 over the (min, max) of the layer's
    input on that branch (a MinMax observer, zero point 0 after a ReLU); a layer followed in its
    ``nn.Sequential`` by another int8 layer on the same branch writes uint8 at that layer's input quantization,
    other int8 layers write float32. ``percentile``: clip the range's top at that percentile instead (measured
    on DnCNN-B: no better than MinMax, docs/results.md). Returns the ranges {layer: [(min, max) per branch]}."""
    layers = {n: m for n, m in deployed.named_modules() if isinstance(m, SparseConv2d) and "int8_cpu" in m.paths}
    if not layers:
        return {}
    branches = len(next(iter(layers.values())).paths)
    ranges = _input_ranges(net, images, set(layers), branches, percentile=percentile)
    acts = {n: [quant.act_qparams(*r) for r in ranges[n]] for n in layers}
    for name, layer in layers.items():
        for i, path in enumerate(layer.paths):
            if path == "int8_cpu":
                getattr(layer, f"q8act_{i}").copy_(torch.tensor([acts[name][i].scale, acts[name][i].zero, 0.0, 0.0]))
    names = {id(m): n for n, m in deployed.named_modules()}
    for a, b, i in chained(deployed, "int8_cpu"):
        nxt = acts[names[id(b)]][i]
        getattr(a, f"q8act_{i}")[2:] = torch.tensor([nxt.scale, float(nxt.zero)])
    for layer in layers.values():
        layer._kernel_cache.clear()
    return ranges


