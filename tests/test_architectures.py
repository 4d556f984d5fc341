"""Breadth: third-party-style architectures built here (NAFNet, Restormer, SwinIR/ViT, SR with transposed
and grouped convolutions, an unrolled network reusing its weights), each converted and checked on the
dense branch, the N:M masks, export_branch, torch.compile (fullgraph), torch.export and the MACs audit."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynprune as dp
from dynprune.audit import count_macs
from dynprune.layers import dynamic_layers, variable_norms

from .conftest import requires_compile


class LayerNorm2d(nn.Module):
    """NAFNet's channel-wise LayerNorm over (B, C, H, W)."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / (var + 1e-6).sqrt() * self.weight[:, None, None] + self.bias[:, None, None]


class NAFBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.norm = LayerNorm2d(c)
        self.conv1, self.dw = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.dw(self.conv1(self.norm(x)))
        a, b = y.chunk(2, dim=1)  # SimpleGate
        y = a * b
        return x + self.conv2(y * self.sca(y))


class WithBias_LayerNorm(nn.Module):  # Restormer's name and layout: normalises the last axis
    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class MDTA(nn.Module):
    """Restormer's transposed (channel) attention, 30 channels: not divisible by M=4 (partly converted)."""

    def __init__(self, c=30, heads=2):
        super().__init__()
        self.heads, self.norm = heads, WithBias_LayerNorm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.qkv_dw = nn.Conv2d(3 * c, 3 * c, 3, padding=1, groups=3 * c)
        self.proj = nn.Conv2d(c, c, 1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        q, k, v = self.qkv_dw(self.qkv(y)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        return x + self.proj((attn.softmax(-1) @ v).reshape(b, c, h, w))


class SwinLike(nn.Module):
    """Patch embedding, one transformer block with nn.MultiheadAttention and LayerNorm, a conv tail."""

    def __init__(self, c=32):
        super().__init__()
        self.embed = nn.Conv2d(4, c, 2, stride=2)
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.pos = nn.Parameter(torch.zeros(1, 16, c))
        self.tail = nn.ConvTranspose2d(c, 4, 2, stride=2)

    def forward(self, x):
        t = self.embed(x)
        b, c, h, w = t.shape
        t = t.flatten(2).transpose(1, 2) + self.pos
        q = self.norm1(t)
        t = t + self.attn(q, q, q, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return self.tail(t.transpose(1, 2).reshape(b, c, h, w))


class SRNet(nn.Module):
    """Grouped convs, GroupNorm, PixelShuffle x2 and a ConvTranspose x2 (x4 in all)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(4, 32, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.GroupNorm(4, 32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.PixelShuffle(2),
                                nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1))

    def forward(self, x):
        return self.up(self.body(self.head(x)))


class Unrolled(nn.Module):
    """USRNet-style: one prior network applied at every iteration (weight reuse)."""

    def __init__(self):
        super().__init__()
        self.prior = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, padding=1))

    def forward(self, x):
        z = x
        for _ in range(3):
            z = z - 0.5 * self.prior(z)
        return z


ARCHS = {"nafnet": (NAFBlock, (2, 16, 12, 12)), "restormer": (MDTA, (2, 30, 8, 8)),
         "swinir": (SwinLike, (2, 4, 8, 8)), "sr": (SRNet, (2, 4, 8, 8)), "unrolled": (Unrolled, (2, 4, 10, 10))}


def _randomize_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    cls, shape = ARCHS[request.param]
    model = cls().eval()
    _randomize_norms(model)
    return request.param, model, torch.randn(shape)


def test_dense_branch_masks_and_export(arch):
    name, model, x = arch
    net = dp.convert(model)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))  # outside use_branch: the original network
        net.load_state_dict(model.state_dict(), strict=False)
        for _, layer in dynamic_layers(net):
            for b, n in enumerate((1, 2)):
                mask = layer.branch_mask(b).movedim(layer.nm_axis, -1)
                span = layer.nm_span
                groups = mask[..., :span].reshape(*mask.shape[:-1], span // 4, 4)
                assert (groups.sum(-1) == n).all() and mask[..., span:].all()
        for b in ("1:4", "2:4"):
            with dp.use_branch(b):
                y = net(x)
            assert not torch.equal(y, model(x))
            torch.testing.assert_close(dp.export_branch(net, b)(x), y, rtol=0, atol=0)


def test_norms_and_raw_weights_reported(arch):
    name, model, x = arch
    rep = dp.conversion_report(dp.convert(model))
    norms = {r.name for r in rep.norms}
    expected = {"nafnet": {"norm"}, "restormer": {"norm"}, "swinir": {"norm1", "norm2"},
                "sr": {"body.1", "body.4"}, "unrolled": set()}[name]
    assert norms == expected
    assert not rep.shared_norms
    dense = {r.name for r in rep.dense_params}
    assert dense == {"swinir": {"attn.in_proj_weight", "pos"}}.get(name, set())
    if name == "restormer":  # 30 input channels: N:M on 28, two channels dense
        assert {r.name: round(r.coverage, 4) for r in rep.partial} == {"qkv": 0.9333, "proj": 0.9333}
    shared = dp.conversion_report(dp.convert(model, norms=False))
    assert not shared.norms and {r.name for r in shared.shared_norms} == expected


@requires_compile
def test_compile_fullgraph_and_export_every_branch(arch):
    name, model, x = arch
    net = dp.convert(model)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for b in range(3):
            with dp.use_branch(b):
                ref = net(x)
                torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)
                exported = torch.export.export(net, (x,))
            torch.testing.assert_close(exported.module()(x), ref, rtol=1e-5, atol=1e-5)


def test_audit_counts_every_converted_layer(arch):
    name, model, x = arch
    net = dp.convert(model)
    rep = dp.audit(net, x)
    assert rep.dense_macs == count_macs(model, x)
    converted = {n for n, _ in dynamic_layers(net)}
    for b, branch in enumerate(rep.branches):
        costs = {m.name: m for m in branch.modules}
        assert converted <= set(costs)  # out_proj of MultiheadAttention included
        for n in converted:
            num, den = net.get_submodule(n).branch_density(b)
            assert costs[n].dense_macs > 0 and costs[n].effective_macs == costs[n].dense_macs * num // den
    assert rep.branches[0].effective_macs < rep.branches[1].effective_macs < rep.branches[2].effective_macs


def test_variable_norms_differ_per_branch():
    model = NAFBlock().eval()
    net = dp.convert(model)
    (_, norm), = variable_norms(net)
    with torch.no_grad():
        norm.aux_norms[0].weight.fill_(2.0)
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad(), dp.use_branch(0):
        changed = net(x)
        norm.aux_norms[0].weight.fill_(1.0)
        assert not torch.equal(net(x), changed)
