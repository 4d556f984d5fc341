"""DnCNN (Zhang et al., TIP 2017, "Beyond a Gaussian Denoiser") as a dynprune backbone.

Layout: one ``nn.Sequential`` named ``dncnn``: Conv+ReLU, (depth-2) x [Conv, BN, ReLU], Conv. The
network predicts the residual (the noise); :class:`DnCNN` returns ``input - residual``, the restored
image. With ``bias=True`` this is the KAIR layout the ClassPruning paper used (20 layers, 64 channels,
668,225 parameters for gray); with ``bias=False`` the key layout equals SaoYan's DnCNN-PyTorch
checkpoints (``dncnn.{i}``), so those files load directly.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from dynprune.checkpoint import load_weights, strip_prefix
from dynprune.hookspecs import hookimpl

__all__ = ["DnCNN", "dncnn_from_state_dict"]


class DnCNN(nn.Module):
    """DnCNN denoiser.

    Args:
        in_channels: 1 (gray) or 3 (colour).
        depth: number of conv layers D (17 for DnCNN-S, 20 for DnCNN-B and ClassPruning).
        width: feature channels F (64).
        bias: bias on every conv (KAIR / ClassPruning) or none (SaoYan checkpoints).
        bn: BatchNorm in layers 2..D-1.
    Input/Output: (B, in_channels, H, W) float32, noisy in [0, 1] -> restored (not clipped).
    Raises:
        ValueError: depth < 2, width < 1 or in_channels < 1.
    """

    def __init__(self, in_channels: int = 1, depth: int = 20, width: int = 64, bias: bool = True, bn: bool = True):
        super().__init__()
        if depth < 2 or width < 1 or in_channels < 1:
            raise ValueError(f"DnCNN needs depth >= 2, width >= 1, in_channels >= 1; got depth={depth}, "
                             f"width={width}, in_channels={in_channels}")
        self.in_channels = in_channels
        self.arch = dict(in_channels=in_channels, depth=depth, width=width, bias=bias, bn=bn)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=bias))
            if bn:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1, bias=bias))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DnCNN expects (B, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        return x - self.dncnn(x)


def dncnn_from_state_dict(state_dict: dict[str, torch.Tensor]) -> DnCNN:
    """Build the DnCNN layout a state_dict describes (depth, width, channels, bias, BN) and load it.

    Handles the ``module.`` prefix of ``nn.DataParallel`` files and missing ``num_batches_tracked``.

    Raises:
        ValueError: the state_dict is not a DnCNN (``dncnn.{i}`` keys) or does not load.
    """
    sd = strip_prefix(state_dict)
    convs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"dncnn\.(\d+)\.weight", k)) and sd[k].dim() == 4)
    if not convs:
        raise ValueError(f"not a DnCNN state_dict: no 'dncnn.<i>.weight' conv keys (first keys: {list(sd)[:4]})")
    first = sd[f"dncnn.{convs[0]}.weight"]
    bias = f"dncnn.{convs[0]}.bias" in sd
    bn = any(k.endswith("running_mean") for k in sd)
    model = DnCNN(in_channels=first.shape[1], depth=len(convs), width=first.shape[0], bias=bias, bn=bn)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise ValueError(f"state_dict does not fit the DnCNN layout it seems to describe (depth {len(convs)}, "
                         f"width {first.shape[0]}): {str(err).splitlines()[0]}") from err
    return model


def create_dncnn(weights: str | None = None, **kwargs) -> DnCNN:
    """Factory of the ``dncnn`` model: ``weights`` (a file) decides the layout; else ``DnCNN(**kwargs)``."""
    if weights is None:
        return DnCNN(**kwargs)
    if kwargs:
        raise ValueError(f"dncnn: with weights= the layout comes from the file; drop {sorted(kwargs)}")
    return dncnn_from_state_dict(load_weights(weights))


@hookimpl
def dynprune_register_models(register):
    register("dncnn", create_dncnn, "DnCNN denoiser (Zhang et al. 2017); weights= loads SaoYan/KAIR-layout files",
             paper={f"sigma={s}": f"paper DnCNN {d:.2f} / CP-DnCNN {c:.2f} dB (CP at 58.3% FLOPs)"
                    for s, d, c in ((15, 31.63, 31.59), (25, 29.18, 29.17), (50, 26.24, 26.26))})
