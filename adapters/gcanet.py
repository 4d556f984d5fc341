"""GCANet (Chen et al., WACV 2019, "Gated Context Aggregation Network for Image Dehazing and
Deraining"), the official layout: RGB + edge input, smoothed dilated residual blocks, gated fusion,
instance norm (affine). 702,818 parameters. Dehazing mode: the network predicts a residual added to the
input (on the 0-255 scale internally; inputs and outputs here are [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.hookspecs import hookimpl

__all__ = ["GCANet", "edge_map"]


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
    """GCANet dehazer. Input (B, 3, H, W) in [0, 1]; odd sizes are reflect-padded to even and cropped back.
    Output: the dehazed image, input + predicted residual (not clipped)."""

    def __init__(self, width: int = 64):
        super().__init__()
        c = width
        self.in_channels, self.arch = 3, dict(width=width)
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
        xp = F.pad(x, (0, w % 2, 0, h % 2), mode="reflect") if (h % 2 or w % 2) else x
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
        out = (x255 + self.deconv1(y)) / 255.0
        return out[..., :h, :w]


@hookimpl
def dynprune_register_models(register):
    register("gcanet", GCANet, "GCANet dehazing (RGB + edge input, gated fusion), 702,818 params")
