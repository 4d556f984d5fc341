"""The super-resolution backbones ClassSR uses (Kong et al., CVPR 2021), at its widths:
FSRCNN (d = 16/36/56), CARN-M (nf = 36/52/64), MSRResNet (nf = 36/52/64), RCAN (nf = 36/50/64).
Written from the layer descriptions in docs/reference/architectures.md section 5; parameter counts
match ClassSR's models exactly. Inputs and outputs are RGB in [0, 1] (rgb_range 1 for every net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.checkpoint import load_file, load_strict, strip_prefix
from dynprune.hookspecs import hookimpl

__all__ = ["FSRCNN", "CARNM", "CARNMultiScale", "create_carn_m", "MSRResNet", "RCAN", "MeanShift", "DIV2K_MEAN"]

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def _check_scale(scale: int, allowed=(2, 3, 4)) -> int:
    if scale not in allowed:
        raise ValueError(f"scale {scale!r} is not supported; accepted: {list(allowed)}")
    return scale


class MeanShift(nn.Conv2d):
    """1x1 conv that subtracts (sign=-1) or adds (sign=+1) the DIV2K RGB mean (EDSR/ClassSR style;
    its 12 values are parameters, as in ClassSR's counts)."""

    def __init__(self, sign: int, mean=DIV2K_MEAN):
        super().__init__(3, 3, 1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * torch.tensor(mean))


class FSRCNN(nn.Module):
    """FSRCNN as in ClassSR: head 5x5 (d), shrink 1x1 (s=12), m=4 mapping 3x3 convs with one PReLU after
    them, expand 1x1, 9x9 transposed conv (stride = scale). 344 d + 5,251 parameters at x4.

    Input (B, 3, h, w) in [0, 1] -> (B, 3, scale*h, scale*w).
    """

    _TAIL = {2: (4, 1), 3: (3, 0), 4: (3, 1)}  # scale -> (padding, output_padding) of the 9x9 deconv

    def __init__(self, d: int = 56, s: int = 12, m: int = 4, scale: int = 4, in_channels: int = 3):
        super().__init__()
        _check_scale(scale)
        self.scale, self.arch = scale, dict(d=d, s=s, m=m, scale=scale, in_channels=in_channels)
        self.head = nn.Sequential(nn.Conv2d(in_channels, d, 5, padding=2), nn.PReLU())
        self.shrink = nn.Sequential(nn.Conv2d(d, s, 1), nn.PReLU())
        self.map = nn.Sequential(*[nn.Conv2d(s, s, 3, padding=1) for _ in range(m)], nn.PReLU())
        self.expand = nn.Sequential(nn.Conv2d(s, d, 1), nn.PReLU())
        pad, out_pad = self._TAIL[scale]
        self.tail = nn.ConvTranspose2d(d, in_channels, 9, stride=scale, padding=pad, output_padding=out_pad)

    def forward(self, x):
        return self.tail(self.expand(self.map(self.shrink(self.head(x)))))


class _EResidual(nn.Module):
    def __init__(self, nf: int, groups: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
                                  nn.Conv2d(nf, nf, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
                                  nn.Conv2d(nf, nf, 1))

    def forward(self, x):
        return F.relu(self.body(x) + x)


def _fusion(cin: int, nf: int) -> nn.Sequential:
    # ClassSR's BasicBlock(in, out, 1, 1, 0) quirk: 1x1 conv without bias + BatchNorm + ReLU
    return nn.Sequential(nn.Conv2d(cin, nf, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU(inplace=True))


class _CascadeBlock(nn.Module):
    """One EResidualBlock applied three times (shared weights, CARN-M) with cascading 1x1 fusions."""

    def __init__(self, nf: int, groups: int = 4):
        super().__init__()
        self.b = _EResidual(nf, groups)
        self.c = nn.ModuleList(_fusion(nf * (k + 2), nf) for k in range(3))

    def forward(self, x):
        cat, o = x, x
        for c in self.c:
            cat = torch.cat([cat, self.b(o)], 1)
            o = c(cat)
        return o


class CARNM(nn.Module):
    """CARN-M as in ClassSR (group 4, the BatchNorm fusion quirk, MeanShift at both ends):
    70.5 nf^2 + 96 nf + 27 parameters at x4. Input (B, 3, h, w) -> (B, 3, scale*h, scale*w)."""

    def __init__(self, nf: int = 64, groups: int = 4, scale: int = 4):
        super().__init__()
        _check_scale(scale, (2, 4))
        self.scale, self.arch = scale, dict(nf=nf, groups=groups, scale=scale)
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(+1)
        self.entry = nn.Conv2d(3, nf, 3, padding=1)
        self.blocks = nn.ModuleList(_CascadeBlock(nf, groups) for _ in range(3))
        self.c = nn.ModuleList(_fusion(nf * (k + 2), nf) for k in range(3))
        ups = []
        for _ in range({2: 1, 4: 2}[scale]):
            ups += [nn.Conv2d(nf, 4 * nf, 3, padding=1, groups=groups), nn.ReLU(inplace=True), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*ups)
        self.exit = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        x = self.entry(self.sub_mean(x))
        cat, o = x, x
        for block, c in zip(self.blocks, self.c):
            cat = torch.cat([cat, block(o)], 1)
            o = c(cat)
        return self.add_mean(self.exit(self.upsample(o)))


class _Basic(nn.Module):
    """CARN's BasicBlock(in, out, 1, 1, 0): 1x1 conv with bias + ReLU (key ``body.0``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.body(x)


class _Shift(nn.Module):
    """CARN's MeanShift (key ``shifter``)."""

    def __init__(self, sign: int):
        super().__init__()
        self.shifter = MeanShift(sign)

    def forward(self, x):
        return self.shifter(x)


class _CARNBlock(nn.Module):
    """CARN-M's Block: EResidualBlock ``b1`` applied three times (shared) with cascading fusions c1..c3."""

    def __init__(self, nf: int, groups: int):
        super().__init__()
        self.b1 = _EResidual(nf, groups)
        self.c1, self.c2, self.c3 = (_Basic(nf * k, nf) for k in (2, 3, 4))

    def forward(self, x):
        cat, o = x, x
        for fuse in (self.c1, self.c2, self.c3):
            cat = torch.cat([cat, self.b1(o)], 1)
            o = fuse(cat)
        return o


class _CARNUp(nn.Module):
    """CARN's _UpsampleBlock: (grouped 3x3 conv to r^2 nf, ReLU, PixelShuffle(r)) once (x2, x3) or twice (x4)."""

    def __init__(self, nf: int, scale: int, groups: int):
        super().__init__()
        body = []
        for r in [3] if scale == 3 else [2] * {2: 1, 4: 2}[scale]:
            body += [nn.Conv2d(nf, r * r * nf, 3, padding=1, groups=groups), nn.ReLU(inplace=True), nn.PixelShuffle(r)]
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return self.body(x)


class CARNMultiScale(nn.Module):
    """The original CARN-M (Ahn, Kang, Sohn, ECCV 2018), multi-scale: one body shared by x2 / x3 / x4, one
    upsampler per scale, grouped convolutions (group 4), fusions 1x1 conv + bias + ReLU, MeanShift at both
    ends; 414,811 parameters at nf=64 with the three upsamplers. The layout of the authors' ``carn_m.pth``
    (key names included), which ``create_model("carn_m", weights=...)`` loads.

    Args:
        nf: channels. groups: groups of the 3x3 convs. scale: the default scale of ``forward(x)``.
        scales: the upsamplers built.
    Input (B, 3, h, w) RGB in [0, 1] -> (B, 3, s*h, s*w); ``forward(x, scale=s)`` picks another scale.
    Raises:
        ValueError: a scale outside ``scales`` (at construction or in forward).
    """

    def __init__(self, nf: int = 64, groups: int = 4, scale: int = 4, scales=(2, 3, 4)):
        super().__init__()
        scales = tuple(_check_scale(s) for s in scales)
        if scale not in scales:
            raise ValueError(f"scale {scale!r} is not one of the upsamplers {list(scales)}")
        self.scale, self.scales = scale, scales
        self.arch = dict(nf=nf, groups=groups, scale=scale, scales=list(scales), multi_scale=True)
        self.sub_mean, self.add_mean = _Shift(-1), _Shift(+1)
        self.entry = nn.Conv2d(3, nf, 3, padding=1)
        self.b1, self.b2, self.b3 = (_CARNBlock(nf, groups) for _ in range(3))
        self.c1, self.c2, self.c3 = (_Basic(nf * k, nf) for k in (2, 3, 4))
        self.upsample = nn.ModuleDict({f"up{s}": _CARNUp(nf, s, groups) for s in scales})
        self.exit = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x, scale: int | None = None):
        s = self.scale if scale is None else scale
        if s not in self.scales:
            raise ValueError(f"scale {s!r} is not one of the upsamplers {list(self.scales)}")
        x = self.entry(self.sub_mean(x))
        cat, o = x, x
        for block, fuse in ((self.b1, self.c1), (self.b2, self.c2), (self.b3, self.c3)):
            cat = torch.cat([cat, block(o)], 1)
            o = fuse(cat)
        return self.add_mean(self.exit(self.upsample[f"up{s}"](o)))


def create_carn_m(width: int | None = None, weights: str | None = None, multi_scale: bool | None = None,
                  scale: int = 4, **kwargs):
    """CARN-M. With ``weights`` the file decides the layout: the authors' multi-scale ``carn_m.pth`` (or a
    dynprune checkpoint of it) gives :class:`CARNMultiScale`, a ClassSR-variant state_dict :class:`CARNM`.
    Without weights, ``multi_scale=True`` builds the original layout, else ClassSR's single-scale variant.

    Raises:
        ValueError: a file that fits neither layout (the first mismatching keys are named).
    """
    if weights is not None:
        state = load_file(weights)
        arch = {}
        if isinstance(state, dict) and "arch" in state and "model" in state:
            arch, state = dict(state["arch"]), state["model"]
        state = strip_prefix(state)
        if multi_scale is None:
            multi_scale = bool(arch.pop("multi_scale", False)) or "b1.b1.body.0.weight" in state
        arch.pop("multi_scale", None)
        if multi_scale:
            kw = {**arch, "scale": scale, **kwargs, **({"nf": width} if width else {})}
            return load_strict(CARNMultiScale(**kw), state, f"{weights!r}")
        return _factory(CARNM, "nf", 64)(width, weights, scale=scale, **kwargs)
    if multi_scale:
        return CARNMultiScale(scale=scale, **kwargs, **({"nf": width} if width else {}))
    return _factory(CARNM, "nf", 64)(width, None, scale=scale, **kwargs)


class _ResBlock(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(nf, nf, 3, padding=1), nn.Conv2d(nf, nf, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    """MSRResNet (BasicSR/ClassSR "SRResNet"): 16 residual blocks without BN, pixel-shuffle upsampling,
    plus bilinear upsampling of the input: 369 nf^2 + 96 nf + 3 parameters at x4. Kaiming init x0.1."""

    def __init__(self, nf: int = 64, nb: int = 16, scale: int = 4):
        super().__init__()
        _check_scale(scale)
        self.scale, self.arch = scale, dict(nf=nf, nb=nb, scale=scale)
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(nf) for _ in range(nb)])
        if scale == 4:
            self.up = nn.ModuleList([nn.Conv2d(nf, 4 * nf, 3, padding=1), nn.Conv2d(nf, 4 * nf, 3, padding=1)])
            self.shuffles = (2, 2)
        else:
            self.up = nn.ModuleList([nn.Conv2d(nf, scale * scale * nf, 3, padding=1)])
            self.shuffles = (scale,)
        self.hr_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                m.weight.data.mul_(0.1)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        act = nn.functional.leaky_relu
        out = self.body(act(self.conv_first(x), 0.1))
        for conv, s in zip(self.up, self.shuffles):
            out = act(F.pixel_shuffle(conv(out), s), 0.1)
        out = self.conv_last(act(self.hr_conv(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class _RCAB(nn.Module):
    def __init__(self, nf: int, reduction: int = 16):
        super().__init__()
        hidden = nf // reduction
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(nf, nf, 3, padding=1))
        self.ca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(nf, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, nf, 1), nn.Sigmoid())

    def forward(self, x):
        r = self.body(x)
        return x + r * self.ca(r)


class _ResidualGroup(nn.Module):
    def __init__(self, nf: int, blocks: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(*[_RCAB(nf, reduction) for _ in range(blocks)], nn.Conv2d(nf, nf, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class RCAN(nn.Module):
    """RCAN (Zhang et al. 2018) as in ClassSR: 10 residual groups x 20 RCABs, channel attention with
    reduction 16, pixel-shuffle tail, MeanShift at both ends (rgb_range 1). 15,592,379 parameters at nf=64."""

    def __init__(self, nf: int = 64, groups: int = 10, blocks: int = 20, reduction: int = 16, scale: int = 4):
        super().__init__()
        _check_scale(scale)
        self.scale = scale
        self.arch = dict(nf=nf, groups=groups, blocks=blocks, reduction=reduction, scale=scale)
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(+1)
        self.head = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*[_ResidualGroup(nf, blocks, reduction) for _ in range(groups)],
                                  nn.Conv2d(nf, nf, 3, padding=1))
        ups = []
        for s in ((2, 2) if scale == 4 else (scale,)):
            ups += [nn.Conv2d(nf, s * s * nf, 3, padding=1), nn.PixelShuffle(s)]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.upsample(x + self.body(x))))


def _factory(cls, key: str, default: int):
    def create(width: int | None = None, weights: str | None = None, **kwargs):
        if width is not None:
            kwargs[key] = width
        state = None
        if weights is not None:
            state = load_file(weights)
            if isinstance(state, dict) and "arch" in state and "model" in state:
                kwargs = {**state["arch"], **kwargs}
                state = state["model"]
            state = strip_prefix(state)
        kwargs.setdefault(key, default)
        model = cls(**kwargs)
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"{weights!r} does not fit {cls.__name__}({kwargs}): {str(err).splitlines()[0]}") from err
        return model

    create.__doc__ = (f"{cls.__name__}; ``width`` sets ``{key}`` (default {default}, ClassSR's widest branch); "
                      "``weights`` loads a state_dict file (or a dict with 'model' and 'arch').")
    return create


@hookimpl
def dynprune_register_models(register):
    register("fsrcnn", _factory(FSRCNN, "d", 56), "FSRCNN (ClassSR variant), x4; width d in 16/36/56")
    register("carn_m", create_carn_m, "CARN-M: ClassSR's single-scale variant (width nf in 36/52/64), or the original "
             "multi-scale x2/x3/x4 (weights= the authors' carn_m.pth, or multi_scale=True)",
             paper={"paper": "CARN-M (Ahn et al. 2018) Set5 x2/x3/x4 37.53 / 33.99 / 31.92, Set14 33.26 / 30.08 / 28.42 dB"})
    register("msrresnet", _factory(MSRResNet, "nf", 64), "MSRResNet, 16 blocks, x4; width nf in 36/52/64")
    register("rcan", _factory(RCAN, "nf", 64), "RCAN 10x20, x4; width nf in 36/50/64")
