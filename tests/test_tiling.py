"""Honest tiling: the receptive field and shift-equivariance are measured per model; tiles are exact or refused."""

import argparse

import pytest
import torch
from torch import nn

import dynprune
from dynprune.registry import create
from dynprune.tiling import probe_tiling, tile_overlap, tiled


class MeanShift(nn.Module):
    """A net with no whole-image layer type whose output still depends on the whole image (x - mean(x))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x - x.mean(dim=(-2, -1), keepdim=True))


class ChannelAttention(nn.Module):
    """RCAN's channel attention: x * sigmoid(conv(global average pool(x)))."""

    def __init__(self):
        super().__init__()
        self.pool, self.conv = nn.AdaptiveAvgPool2d(1), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(self.pool(x)))


def _down_up():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1),
                         nn.Upsample(scale_factor=4))


def test_the_receptive_field_of_plain_convolutions_is_measured_exactly():
    for depth in (4, 6, 20):  # DnCNN: depth 3x3 convolutions, radius = depth
        probe = probe_tiling(create("models", "dncnn", depth=depth, width=8), 1)
        assert (probe.radius, probe.exact, probe.min_tile()) == (depth, True, 2 * depth + 1)
    dilated = nn.Sequential(nn.Conv2d(1, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 1, 5, padding=2))
    assert probe_tiling(dilated, 1).radius == 2 + 2
    sr = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.PixelShuffle(2))
    assert probe_tiling(sr, 1, scale=2).radius == 2


@pytest.mark.parametrize("make, phrase", [
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.Conv2d(4, 1, 3, padding=1)),
     "whole-image statistics in 1 (InstanceNorm2d)"),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4)), "1 (GroupNorm)"),
    (ChannelAttention, "pool (AdaptiveAvgPool2d)"),
    (MeanShift, "each output pixel sees more than the 256-pixel probe"),
    (_down_up, "a one-pixel shift of the input does not shift its output (it downsamples: strided 0)"),
], ids=["instancenorm", "groupnorm", "attention", "meanshift", "down-up"])
def test_a_model_that_tiles_inexactly_is_detected_and_refused(make, phrase):
    # built here, under the per-test seed: weights drawn at collection depend on every module imported before
    # (a 4-channel ReLU net can come out dead, its output constant and so trivially tileable)
    net = make()
    probe = probe_tiling(net, 1)
    assert not probe.exact and phrase in "; ".join(probe.reasons)
    with pytest.raises(ValueError, match="tiling this model would change its output.*--tile-approximate"):
        tile_overlap(probe, 64)
    assert tile_overlap(probe, 64, approximate=True) == 16
    x = torch.linspace(0, 1, 200).view(1, 1, 1, 200) * torch.rand(1, 1, 200, 200)  # tiles of different means
    with torch.no_grad():  # and the refusal is right: tiles do change its output (tile starts 0, 46, 92, 136)
        assert (tiled(net, x, 64, 9) - net(x)).abs().max() > 1e-4


def test_overlap_and_tile_below_the_receptive_field_are_refused_with_the_smallest_exact_values():
    probe = probe_tiling(create("models", "dncnn", depth=6, width=8), 1)
    assert tile_overlap(probe, 64) == 6 and tile_overlap(probe, 64, 10) == 10
    with pytest.raises(ValueError, match="--tile-overlap 5 is below this model's receptive-field radius of 6 px.*"
                                         "smallest exact overlap is 6"):
        tile_overlap(probe, 64, 5)
    with pytest.raises(ValueError, match="--tile 12 is too small.*smallest exact tile is 13"):
        tile_overlap(probe, 12)


def test_route_tiles_with_the_measured_radius_and_refuses_less(trained):
    model = dynprune.load(trained / "run/last.pt")  # tiny DnCNN, depth 4: radius 4
    x = torch.rand(1, 1, 90, 130)
    with torch.no_grad():
        full, b0 = model.route(x)
        tiles, b1 = model.route(x, tile=24)  # overlap = 4: kept centres of 16 px
        assert torch.equal(b0, b1) and (tiles - full).abs().max() < 1e-5
        with pytest.raises(ValueError, match="smallest exact overlap is 4"):
            model.route(x, tile=24, overlap=3)


def _restore_args(tile, overlap=None, approximate=False):
    return argparse.Namespace(tile=tile, tile_overlap=overlap, tile_approximate=approximate)


class _Routed(nn.Module):
    def __init__(self, restorer):
        super().__init__()
        self.restorer = restorer


def test_restore_runs_an_inexact_model_whole_unless_asked_and_then_states_the_difference(capsys, caplog):
    from dynprune.cli import _plan_tiles

    net = _Routed(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.Conv2d(4, 1, 3, padding=1)))
    images = [("big.png", torch.rand(1, 120, 90)), ("small.png", torch.rand(1, 30, 30))]
    tile, overlap, probe = _plan_tiles(_restore_args(64), net, images)
    assert tile == 0 and "1 image(s) larger than --tile 64 run whole" in capsys.readouterr().out
    with caplog.at_level("WARNING"):
        tile, overlap, probe = _plan_tiles(_restore_args(64, approximate=True), net, images)
    assert (tile, overlap) == (64, 16)
    assert "measured on a 120x90 crop of big.png: largest difference" in caplog.text
    exact = _Routed(create("models", "dncnn", depth=4, width=8))
    assert _plan_tiles(_restore_args(64), exact, images)[:2] == (64, 4)
    assert _plan_tiles(_restore_args(200), exact, images)[:2] == (200, None)  # nothing to tile: no probe


def test_the_released_dncnn_b_tiles_exactly_with_its_radius_of_20():
    from pathlib import Path

    model = dynprune.load(Path(__file__).parents[1] / "docs/checkpoints/cp_dncnn_b.pt")  # trained BatchNorm, 3 branches
    for ratio in model.ratios:
        with dynprune.use_branch(str(ratio)):
            probe = probe_tiling(model.restorer, 1)
        assert (probe.radius, probe.exact) == (20, True), (ratio, probe)
