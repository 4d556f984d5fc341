import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune.classsr import SeparateBranches, ClassSRClassifier, psnr_labels
from dynprune.metrics import psnr
from dynprune.plugins.sr import bicubic_downsample, load_sr_pairs, mod_crop

WIDTHS = {"fsrcnn": (16, 36, 56), "carn_m": (36, 52, 64), "msrresnet": (36, 52, 64), "rcan": (36, 50, 64)}
PARAMS = {"fsrcnn": (10_755, 17_635, 24_515), "carn_m": (94_851, 195_651, 294_939),
          "msrresnet": (481_683, 1_002_771, 1_517_571), "rcan": (4_940_707, 9_521_827, 15_592_379)}


@pytest.mark.parametrize("name", list(WIDTHS))
def test_parameter_counts_and_scale(name):
    for width, params in zip(WIDTHS[name], PARAMS[name]):
        assert sum(p.numel() for p in dp.create_model(name, width=width).parameters()) == params
    assert sum(p.numel() for p in dp.create_model(name).parameters()) == PARAMS[name][-1]  # default: widest
    if name != "rcan":
        with torch.no_grad():
            assert dp.create_model(name, width=WIDTHS[name][0])(torch.rand(1, 3, 9, 7)).shape == (1, 3, 36, 28)


def test_classsr_fsrcnn_flops_convention():
    """ClassSR charges 141 / 304 / 468 M FLOPs per 32x32 LR patch (2 x MACs, deconv on the HR grid)."""
    nets = SeparateBranches([dp.create_model("fsrcnn", width=w) for w in (16, 36, 56)])
    model = dp.ClassPruning(nets, ClassSRClassifier())
    assert sum(p.numel() for p in model.classifier.parameters()) == 60_035
    rep = dp.audit(model, torch.zeros(1, 3, 32, 32))
    flops = [round(b.flops("classsr") / 1e6) for b in rep.branches]
    assert flops == [141, 305, 468]  # ClassSR's table rounds 304.6 down
    # true MACs of the widest: 56 * 3 * 81 per HR pixel for the deconv (on the input grid) + the rest
    assert rep.branches[2].dense_macs == 24_920_064
    assert rep.relative_costs()[0].item() == pytest.approx(10_911_744 / 24_920_064)


def test_convert_sr_nets_dense_branch_equal():
    for name in ("fsrcnn", "carn_m", "msrresnet"):
        net = dp.create_model(name, width=WIDTHS[name][-1]).eval()
        conv = dp.convert(net)
        x = torch.rand(1, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(conv(x), net(x)), name


def test_psnr_labels_bins():
    hr = torch.rand(3, 3, 8, 8)
    offsets = torch.tensor([0.001, 0.02, 0.2]).view(3, 1, 1, 1)  # ~60 dB, ~34 dB, ~14 dB
    labels, scores = psnr_labels(lambda x: x + offsets[: x.shape[0]], hr, hr, [20.0, 40.0])
    assert labels.tolist() == [0, 1, 2] and scores[0] > 40 > scores[1] > 20 > scores[2]
    with pytest.raises(ValueError, match="increase"):
        psnr_labels(lambda x: x, hr, hr, [40.0, 20.0])


def test_bicubic_and_errors():
    with pytest.raises(ValueError, match="not divisible by scale 4"):
        bicubic_downsample(torch.rand(1, 3, 10, 12), 4)
    with pytest.raises(ValueError, match="accepted: 2, 3, 4"):
        bicubic_downsample(torch.rand(1, 3, 10, 10), 5)
    assert bicubic_downsample(mod_crop(torch.rand(1, 3, 10, 13), 3), 3).shape == (1, 3, 3, 4)
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(bicubic_downsample(flat, 4), torch.full((1, 3, 4, 4), 0.3))


def test_set5_pairs_and_matlab_bicubic(data_dir):
    pairs = load_sr_pairs(data_dir / "sr/Set5", 4)
    assert [n for n, _, _ in pairs] == ["baby", "bird", "butterfly", "head", "woman"]
    for name, lr, hr in pairs:
        assert hr.shape[-2:] == (lr.shape[-2] * 4, lr.shape[-1] * 4)
        # our antialiased bicubic reproduces the MATLAB-made LR files up to 8-bit rounding
        assert psnr(bicubic_downsample(hr.unsqueeze(0), 4)[0], lr) > 48, name


def test_mismatched_lr_hr(tmp_path):
    from dynprune.imageio import write_image

    write_image(torch.rand(3, 16, 16), tmp_path / "HR/a.png")
    write_image(torch.rand(3, 5, 4), tmp_path / "LR_bicubic/X4/ax4.png")
    with pytest.raises(ValueError, match=r"a.png: LR \(5, 4\) x4 does not match HR \(16, 16\)"):
        load_sr_pairs(tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="no LR file"):
        load_sr_pairs(tmp_path, 2)


@pytest.fixture(scope="module")
def carn_m_original(data_dir):
    return dp.create_model("carn_m", weights=str(data_dir / "weights/carn_m/carn_m.pth")).eval()


@pytest.mark.parametrize("dataset,scale,expected", [("Set5", 2, 37.68), ("Set5", 3, 34.06), ("Set5", 4, 31.88),
                                                    ("Set14", 4, 28.42)])
def test_original_carn_m_reproduces_source_figures(carn_m_original, data_dir, dataset, scale, expected):
    # SOURCE.txt: the authors' code, Y channel, border = scale, 8-bit output, HR mod-cropped
    pairs = load_sr_pairs(data_dir / "sr" / dataset, scale)
    with torch.no_grad():
        scores = [psnr(carn_m_original(lr.unsqueeze(0), scale=scale)[0].clamp(0, 1), hr, crop_border=scale,
                       y_channel=True, quantize=True) for _, lr, hr in pairs]
    assert sum(scores) / len(scores) == pytest.approx(expected, abs=0.005)


def test_original_carn_m_layout_scales_and_errors(tmp_path):
    from dynprune.adapters.sr import CARNMultiScale

    model = dp.create_model("carn_m", multi_scale=True, scale=3)
    assert isinstance(model, CARNMultiScale) and sum(p.numel() for p in model.parameters()) == 414_811
    x = torch.rand(1, 3, 8, 8)
    assert model(x).shape == (1, 3, 24, 24) and model(x, scale=4).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"scale 5 is not one of the upsamplers \[2, 3, 4\]"):
        model(x, scale=5)
    net = dp.convert(model)  # the converted model keeps forward(x, scale=s)
    with torch.no_grad(), dp.use_branch("1:4"):
        assert net(x, scale=2).shape == (1, 3, 16, 16)
    assert isinstance(dp.create_model("carn_m", width=36), nn.Module)  # ClassSR's variant as before
    state = model.state_dict()
    state.pop("exit.bias")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken.pth' does not fit CARNMultiScale: missing keys \['exit.bias'\]"):
        dp.create_model("carn_m", weights=str(tmp_path / "broken.pth"))
