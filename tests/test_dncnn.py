import pytest
import torch

import dynprune as dp
from dynprune.imageio import read_folder
from dynprune.metrics import psnr
from dynprune.registry import create, create_model


@pytest.mark.parametrize("kwargs,params", [({}, 668_225), ({"bias": False}, 667_008),
                                           ({"depth": 17}, 557_057), ({"depth": 17, "bias": False}, 556_032),
                                           ({"in_channels": 3}, 670_531)])
def test_parameter_counts(kwargs, params):
    assert sum(p.numel() for p in create_model("dncnn", **kwargs).parameters()) == params


def test_bad_layout_and_channels():
    with pytest.raises(ValueError, match="depth >= 2"):
        create_model("dncnn", depth=1)
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\).*\(1, 3, 8, 8\)"):
        create_model("dncnn")(torch.zeros(1, 3, 8, 8))


def test_from_state_dict_with_module_prefix(tmp_path):
    src = create_model("dncnn", depth=5, width=8, bias=False)
    sd = {"module." + k: v for k, v in src.state_dict().items() if "num_batches" not in k}
    torch.save(sd, tmp_path / "net.pth")
    m = create_model("dncnn", weights=str(tmp_path / "net.pth"))
    assert len([x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]) == 5
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), src.eval()(x))


def test_pretrained_dncnn_b_psnr_check(data_dir):
    """DnCNN-B on all of BSD68 at sigma 25 reproduces PSNR_CHECK.txt (29.141 dB), through the
    converted model's densest branch, which equals the pretrained model exactly."""
    model = create_model("dncnn", weights=str(data_dir / "weights/dncnn/DnCNN-B/net.pth")).eval()
    conv = dp.convert(model)
    _, images = read_folder(data_dir / "denoise/BSD68", channels=1)
    g = torch.Generator().manual_seed(0)
    scores = []
    with torch.no_grad():
        for k, clean in enumerate(images):
            noisy = clean.unsqueeze(0) + torch.randn(clean.unsqueeze(0).shape, generator=g) * 25 / 255
            out = conv(noisy)
            if k < 2:
                assert torch.equal(out, model(noisy))
            scores.append(psnr(out[0], clean))
    assert len(scores) == 68
    assert sum(scores) / 68 == pytest.approx(29.141, abs=5e-4)


def test_the_released_channel_pruned_baseline_is_a_width_51_dncnn_with_its_measured_psnr(data_dir):
    """``docs/checkpoints/channel_pruned_dncnn_b_w51.pt`` (benchmarks/channel_prune.py --ratio 0.2 --steps 3468,
    the static baseline of docs/results/speed.png) loads as a plain DnCNN of width 51 and gives, on the first 4
    BSD68 images at sigma 25 (noise seeded like ``dynprune eval``), the PSNR measured when it was released:
    28.432 dB, 0.734 dB under DnCNN-B's 29.166."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs/checkpoints/channel_pruned_dncnn_b_w51.pt"
    pruned = create_model("dncnn", weights=str(path)).eval()
    dense = create_model("dncnn", weights=str(data_dir / "weights/dncnn/DnCNN-B/net.pth")).eval()
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [51] * 19 + [1]
    _, images = read_folder(data_dir / "denoise/BSD68", channels=1)
    noise = create("degradations", "gaussian_noise", sigmas=[25])
    g = torch.Generator().manual_seed(0)
    ours, ref = [], []
    with torch.no_grad():
        for clean in images[:4]:
            noisy = noise(clean.unsqueeze(0), generator=g, level=0)[0]
            ours.append(psnr(pruned(noisy)[0], clean))
            ref.append(psnr(dense(noisy)[0], clean))
    assert sum(ref) / 4 == pytest.approx(29.166, abs=2e-3)
    assert sum(ours) / 4 == pytest.approx(28.432, abs=2e-3)
