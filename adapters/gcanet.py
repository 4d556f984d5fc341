"""GCANet (Chen et al., WACV 2019, "Gated Context Aggregation Network for Image Dehazing and
Deraining"), the official layout: RGB + edge input, smoothed dilated residual blocks, gated fusion,
instance norm (affine). 702,818 parameters. Dehazing mode: the network predicts a residual added to the
input (on the 0-255 scale internally; inputs and outputs here are [0, 1]); ``residual=False`` predicts the
image itself through a final ReLU, as the authors' released deraining weights do.

``create_model("gcanet", weights=PATH)`` loads the authors' released files (``conv1 ... res1.pre_conv1 ...
deconv1`` keys, cddlyf/GCANet) or a dynprune GCANet state_dict.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.checkpoint import load_weights, strip_prefix
from dynprune.hookspecs import hookimpl

__all__ = ["GCANet", "edge_map", "gcanet_from_state_dict", "create_gcanet"]


def edge_map(x255: torch.Tensor) -> torch.Tensor:
    """GCANet's edge channel of an RGB batch on the 0-255 scale: absolute neighbour differences added to
    both pixels of each pair, horizontally and vertically, summed over channels, / 3 / 4. (B, 1, H, W)."""
    e = torch.zeros_like(x255)
    gx = (x255[..., :, 1:] - x255[..., :, :-1]).abs()
    gy = (x255[..., 1:, :] - x255[..., :-1, :]).abs()
    e[..., :, :-1] += gx
    e[..., :, 1:] += gx
    e[..., :-1, :] += gy
    e[..., 1:, :] += gy
    return e.sum(1, keepdim=True) / 3 / 4


class _SharedSmooth(nn.Module):
    """Depthwise (2d-1)x(2d-1) smoothing with one kernel shared by all channels, initialized to identity."""

    def __init__(self, k: int):
        super().__init__()
        w = torch.zeros(1, 1, k, k)
        w[0, 0, k // 2, k // 2] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, x):
        c = x.shape[1]
        return F.conv2d(x, self.weight.expand(c, 1, -1, -1), padding=self.weight.shape[-1] // 2, groups=c)


class _Block(nn.Module):
    def __init__(self, c: int, d: int, smooth: bool):
        super().__init__()
        self.pre1 = _SharedSmooth(2 * d - 1) if smooth else nn.Identity()
        self.conv1 = nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False)
        self.norm1 = nn.InstanceNorm2d(c, affine=True)
        self.pre2 = _SharedSmooth(2 * d - 1) if smooth else nn.Identity()
        self.conv2 = nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False)
        self.norm2 = nn.InstanceNorm2d(c, affine=True)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(self.pre1(x))))
        y = self.norm2(self.conv2(self.pre2(y)))
        return F.relu(x + y)


class GCANet(nn.Module):
    """GCANet dehazer / derainer.

    Args:
        width: feature channels (64 in the paper and the released weights).
        residual: True: output = input + predicted residual (the dehazing release); False: output =
            ReLU(prediction), the image itself (the deraining release, "only_residual=False").
    Input (B, 3, H, W) float in [0, 1]; sizes that are not multiples of 4 are reflect-padded to one (as the
    authors' test script makes them) and cropped back. Output (B, 3, H, W) in [0, 1] scale, not clipped.
    Raises:
        ValueError: input that is not (B, 3, H, W).
    """

    def __init__(self, width: int = 64, residual: bool = True):
        super().__init__()
        c = width
        self.residual = bool(residual)
        self.in_channels, self.arch = 3, dict(width=width, residual=self.residual)
        self.conv1, self.norm1 = nn.Conv2d(4, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True)
        self.conv2, self.norm2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True)
        self.conv3, self.norm3 = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True)
        self.res = nn.ModuleList([_Block(c, 2, True) for _ in range(3)] + [_Block(c, 4, True) for _ in range(3)]
                                 + [_Block(c, 1, False)])
        self.gate = nn.Conv2d(3 * c, 3, 3, padding=1)
        self.deconv3, self.norm4 = nn.ConvTranspose2d(c, c, 4, 2, 1), nn.InstanceNorm2d(c, affine=True)
        self.deconv2, self.norm5 = nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c, affine=True)
        self.deconv1 = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"GCANet expects (B, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect") if (h % 4 or w % 4) else x
        x255 = xp * 255.0
        y = torch.cat([x255, edge_map(x255)], 1) - 128.0
        y = F.relu(self.norm1(self.conv1(y)))
        y = F.relu(self.norm2(self.conv2(y)))
        y1 = F.relu(self.norm3(self.conv3(y)))
        y = y1
        for k in range(3):
            y = self.res[k](y)
        y2 = self.res[3](y)
        y3 = self.res[6](self.res[5](self.res[4](y2)))
        g = self.gate(torch.cat([y1, y2, y3], 1))
        y = y1 * g[:, 0:1] + y2 * g[:, 1:2] + y3 * g[:, 2:3]
        y = F.relu(self.norm4(self.deconv3(y)))
        y = F.relu(self.norm5(self.deconv2(y)))
        y = self.deconv1(y)
        out = (x255 + y if self.residual else F.relu(y)) / 255.0
        return out[..., :h, :w]


_RELEASE_KEY = re.compile(r"res(\d)\.(pre_conv1|pre_conv2|conv1|norm1|conv2|norm2)\.(weight|bias)")


def _from_release_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' key names (``res3.pre_conv1.weight``) mapped to this module's (``res.2.pre1.weight``)."""
    out = {}
    for k, v in sd.items():
        m = _RELEASE_KEY.fullmatch(k)
        if m:
            part = {"pre_conv1": "pre1", "pre_conv2": "pre2"}.get(m.group(2), m.group(2))
            k = f"res.{int(m.group(1)) - 1}.{part}.{m.group(3)}"
        out[k] = v
    return out


def gcanet_from_state_dict(state_dict: dict[str, torch.Tensor], residual: bool = True) -> GCANet:
    """Build a GCANet of the width a state_dict describes and load it (authors' or dynprune key layout).

    Args:
        residual: see :class:`GCANet`; False for the authors' ``derain.pth`` (it predicts the image).
    Raises:
        ValueError: not a GCANet state_dict (no ``conv1.weight`` of a 4-channel input), or keys / shapes of
            another layout (the first missing, unexpected or mismatched keys are named).
    """
    sd = _from_release_keys(strip_prefix(state_dict))
    first = sd.get("conv1.weight")
    if not isinstance(first, torch.Tensor) or first.dim() != 4 or first.shape[1] != 4:
        raise ValueError("not a GCANet state_dict: needs a 'conv1.weight' of shape (width, 4, 3, 3) for the "
                         f"RGB + edge input (first keys: {list(state_dict)[:4]})")
    model = GCANet(width=first.shape[0], residual=residual)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(f"state_dict is not the GCANet layout (width {first.shape[0]}): missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, shape mismatches {shapes[:3]}")
    model.load_state_dict(sd)
    return model


def create_gcanet(weights: str | None = None, width: int | None = None, residual: bool = True) -> GCANet:
    """Factory of the ``gcanet`` model: ``weights`` (a file: the authors' ``dehaze.pth`` / ``derain.pth`` or a
    dynprune GCANet state_dict) decides the width; else ``GCANet(width or 64, residual)``.

    Raises:
        FileNotFoundError: no such weights file. ValueError: see :func:`gcanet_from_state_dict`, or a
            ``width`` that differs from the file's.
    """
    if weights is None:
        return GCANet(width=64 if width is None else width, residual=residual)
    sd = load_weights(weights)
    if not isinstance(sd, dict):
        raise ValueError(f"{weights!r} holds a {type(sd).__name__}, not a GCANet state_dict")
    try:
        model = gcanet_from_state_dict(sd, residual=residual)
    except ValueError as err:
        raise ValueError(f"cannot load GCANet weights {weights!r}: {err}") from err
    if width is not None and width != model.arch["width"]:
        raise ValueError(f"gcanet: width={width} but {weights!r} holds width {model.arch['width']}")
    return model


@hookimpl
def dynprune_register_models(register):
    register("gcanet", create_gcanet, "GCANet dehazing/deraining (RGB + edge input, gated fusion), 702,818 params; "
             "weights= loads the authors' dehaze.pth / derain.pth (the latter with residual=False)",
             paper={"paper": "GCANet / CP-GCANet on SOTS indoor (Table 3): CP 30.17 dB at 60.4% FLOPs"})
