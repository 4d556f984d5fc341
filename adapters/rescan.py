"""RESCAN (Li et al., ECCV 2018, "Recurrent Squeeze-and-Excitation Context Aggregation Net") for
deraining, in the official default configuration: ConvGRU units, 24 channels, depth 7 (5 recurrent
units with dilations 1/1/2/4/8 plus a 2-conv decoder), 4 stages sharing weights, "Full" prediction.
149,823 parameters; ``channels=48`` gives the 589,911 that match the ClassPruning paper's count.

Two quirks of the reference code are reproduced on purpose (docs/reference/architectures.md 2.2):
- the SE block's hidden width is the reduction argument itself (6), not C/6;
- at stage 1 a GRU unit has no state: h = z * n (the reset gate and hidden convs are unused), and the
  stored state is the unit's output after SE and LeakyReLU(0.2), not the raw GRU state.
"""

from __future__ import annotations

import torch
from torch import nn

from dynprune.hookspecs import hookimpl

__all__ = ["RESCAN"]


class _SE(nn.Module):
    def __init__(self, channels: int, hidden: int = 6):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3))).unsqueeze(-1).unsqueeze(-1)


class _GRUUnit(nn.Module):
    """ConvGRU: input convs (dilated) for z, r, n; hidden convs 3x3; then SE and LeakyReLU(0.2)."""

    def __init__(self, cin: int, c: int, dilation: int):
        super().__init__()
        self.x_z, self.x_r, self.x_n = (nn.Conv2d(cin, c, 3, padding=dilation, dilation=dilation) for _ in range(3))
        self.h_z, self.h_r, self.h_n = (nn.Conv2d(c, c, 3, padding=1) for _ in range(3))
        self.se = _SE(c)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x, h):
        if h is None:
            h = torch.sigmoid(self.x_z(x)) * torch.tanh(self.x_n(x))
        else:
            z = torch.sigmoid(self.x_z(x) + self.h_z(h))
            r = torch.sigmoid(self.x_r(x) + self.h_r(h))
            n = torch.tanh(self.x_n(x) + self.h_n(r * h))
            h = (1 - z) * h + z * n
        out = self.act(self.se(h))
        return out, out


class RESCAN(nn.Module):
    """RESCAN deraining network.

    Args:
        channels: C (24 official; 48 matches the paper's 0.589M parameters).
        stages: recurrent stages (4). in_channels: 3.
    Forward: rainy (B, 3, H, W) in [0, 1] -> derained O - R_S; :meth:`stage_outputs` gives [R_1 .. R_S].
    """

    def __init__(self, channels: int = 24, stages: int = 4, in_channels: int = 3):
        super().__init__()
        self.in_channels, self.stages = in_channels, stages
        self.arch = dict(channels=channels, stages=stages, in_channels=in_channels)
        dil = (1, 1, 2, 4, 8)
        self.units = nn.ModuleList(_GRUUnit(in_channels if k == 0 else channels, channels, d) for k, d in enumerate(dil))
        self.dec = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), _SE(channels), nn.LeakyReLU(0.2),
                                 nn.Conv2d(channels, in_channels, 1))

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The rain layer estimate R_s of every stage ("Full": stage s+1 sees O - R_s)."""
        states = [None] * len(self.units)
        rains, inp = [], x
        for _ in range(self.stages):
            feat = inp
            for k, unit in enumerate(self.units):
                feat, states[k] = unit(feat, states[k])
            rain = self.dec(feat)
            rains.append(rain)
            inp = x - rain
        return rains

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"RESCAN expects (B, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        return x - self.stage_outputs(x)[-1]


@hookimpl
def dynprune_register_models(register):
    register("rescan", RESCAN, "RESCAN deraining (ConvGRU, 24 ch, 4 stages); channels=48 for 589,911 params",
             paper={"paper": "RESCAN / CP-RESCAN on Test100: 24.46 / 24.38 dB at 56.1% FLOPs"})
