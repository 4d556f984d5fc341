"""SRN-DeblurNet (Tao et al., CVPR 2018, "Scale-recurrent Network for Deep Image Deblurring") in the
layout of the PyTorch port the ClassPruning paper measured: 3 scales sharing weights, encoder/decoder
ResBlocks with 5x5 convs, a 5x5 ConvLSTM at 1/4 resolution, 5x5 transposed convs. 10,250,723 parameters.
The coarsest scale's second input half is zeros (that port), the LSTM state and the previous prediction
are upsampled bilinearly between scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.hookspecs import hookimpl

__all__ = ["SRN"]


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 5, padding=2), nn.Conv2d(c, c, 5, padding=2)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


def _res3(c: int) -> nn.Sequential:
    return nn.Sequential(*[_Res(c) for _ in range(3)])


class _ConvLSTM(nn.Module):
    def __init__(self, c: int, k: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, 4 * c, k, padding=k // 2)

    def forward(self, x, state):
        h, c = state
        i, f, o, g = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class SRN(nn.Module):
    """SRN-DeblurNet.

    Args:
        width: channels at full resolution (32; 64 and 128 at 1/2 and 1/4).
        scales: pyramid levels (3, ratio 0.5).
        residual: add each scale's blurred input to its prediction (False: the official SRN, which
            predicts the sharp image directly). Not in the paper; the CPU config uses it so that a short
            run starts from the identity instead of from a constant image.
    Forward: blurred (B, 3, H, W) in [0, 1] -> sharp (B, 3, H, W). Sizes that are not multiples of
    4 * 2**(scales - 1) (16 for 3 scales) are reflect-padded and the output cropped back.
    Raises:
        ValueError: not (B, 3, H, W).
    """

    def __init__(self, width: int = 32, scales: int = 3, in_channels: int = 3, residual: bool = False):
        super().__init__()
        w = width
        self.scales, self.in_channels, self.residual = scales, in_channels, residual
        self.arch = dict(width=width, scales=scales, in_channels=in_channels, residual=residual)
        self.inblock = nn.Sequential(nn.Conv2d(2 * in_channels, w, 5, padding=2), nn.ReLU(inplace=True), _res3(w))
        self.eblock1 = nn.Sequential(nn.Conv2d(w, 2 * w, 5, stride=2, padding=2), nn.ReLU(inplace=True), _res3(2 * w))
        self.eblock2 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 5, stride=2, padding=2), nn.ReLU(inplace=True), _res3(4 * w))
        self.lstm = _ConvLSTM(4 * w)
        self.dblock1 = nn.Sequential(_res3(4 * w), nn.ConvTranspose2d(4 * w, 2 * w, 5, 2, 2, output_padding=1),
                                     nn.ReLU(inplace=True))
        self.dblock2 = nn.Sequential(_res3(2 * w), nn.ConvTranspose2d(2 * w, w, 5, 2, 2, output_padding=1),
                                     nn.ReLU(inplace=True))
        self.outblock = nn.Sequential(_res3(w), nn.Conv2d(w, in_channels, 5, padding=2))

    def _step(self, x, state):
        e32 = self.inblock(x)
        e64 = self.eblock1(e32)
        h, state = self.lstm(self.eblock2(e64), state)
        d64 = self.dblock1(h) + e64
        d32 = self.dblock2(d64) + e32
        return self.outblock(d32), state

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Predictions from the coarsest to the finest scale (H and W multiples of 4 * 2**(scales-1))."""
        mult = 4 * 2 ** (self.scales - 1)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-2] % mult or x.shape[-1] % mult:
            raise ValueError(f"SRN.pyramid expects (B, {self.in_channels}, H, W) with H and W multiples of {mult}, "
                             f"got shape {tuple(x.shape)}")
        outs, pred, state = [], None, None
        for s in reversed(range(self.scales)):
            xs = x if s == 0 else F.interpolate(x, scale_factor=0.5 ** s, mode="bilinear", align_corners=False,
                                                antialias=True)
            if pred is None:
                pred = torch.zeros_like(xs)
                b, _, hh, ww = xs.shape
                z = xs.new_zeros(b, self.lstm.conv.out_channels // 4, hh // 4, ww // 4)
                state = (z, z)
            else:
                pred = F.interpolate(pred, size=xs.shape[-2:], mode="bilinear", align_corners=False)
                state = tuple(F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False) for t in state)
            out, state = self._step(torch.cat([xs, pred], 1), state)
            pred = xs + out if self.residual else out
            outs.append(pred)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SRN expects (B, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        mult = 4 * 2 ** (self.scales - 1)
        h, w = x.shape[-2:]
        ph, pw = -h % mult, -w % mult
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            return self.pyramid(F.pad(x, (0, pw, 0, ph), mode=mode))[-1][..., :h, :w]
        return self.pyramid(x)[-1]


@hookimpl
def dynprune_register_models(register):
    register("srn", SRN, "SRN-DeblurNet (3 scales, 5x5 ConvLSTM), 10,250,723 params at width 32",
             paper={"paper": "SRN / CP-SRN on GoPro: 30.21 / 30.18 dB at 60.7% FLOPs"})
