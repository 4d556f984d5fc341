"""The paper's other three backbones: exact parameter counts, the paper-convention FLOPs at
1x3x256x256 (audited at 64x64: every cost here scales exactly with the pixel count), and conversion."""

import pytest
import torch

import dynprune as dp


@pytest.mark.parametrize("name,kwargs,params", [("rescan", {}, 149_823), ("rescan", {"channels": 48}, 589_911),
                                                 ("srn", {}, 10_250_723), ("gcanet", {}, 702_818)])
def test_parameter_counts(name, kwargs, params):
    assert sum(p.numel() for p in dp.create_model(name, **kwargs).parameters()) == params


@pytest.mark.parametrize("name,gflops", [("rescan", 64.49), ("srn", 217.18), ("gcanet", 36.89)])
def test_classpruning_flops_at_256(name, gflops):
    net = dp.convert(dp.create_model(name))
    rep = dp.audit(net, torch.zeros(1, 3, 64, 64))
    dense = rep.branches[-1].flops("classpruning") * (256 * 256) / (64 * 64)
    assert dense / 1e9 == pytest.approx(gflops, abs=0.006)
    ours = {op for op in rep.unsupported_ops if not op.startswith("aten::")}
    assert not ours  # only element-wise aten ops are left uncounted (fvcore's choice)


@pytest.mark.parametrize("name", ["rescan", "srn", "gcanet"])
def test_dense_branch_equals_original(name):
    torch.manual_seed(0)
    net = dp.create_model(name).eval()
    conv = dp.convert(net).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(conv(x), net(x))
        with dp.use_branch(0):
            assert not torch.equal(conv(x), net(x))
    rep = dp.conversion_report(conv)
    kinds = {r.type for r in rep.converted}
    assert {"srn": {"Conv2d", "ConvTranspose2d"}, "rescan": {"Conv2d", "Linear"},
            "gcanet": {"Conv2d", "ConvTranspose2d"}}[name] <= kinds
    if name == "gcanet":
        assert len(rep.norms) == 19 and {r.type for r in rep.norms} == {"InstanceNorm2d"}


def test_input_errors():
    srn = dp.create_model("srn", width=8).eval()
    assert srn(torch.rand(1, 3, 30, 35)).shape == (1, 3, 30, 35)  # padded to multiples of 16, cropped back
    with pytest.raises(ValueError, match="multiples of 16"):
        srn.pyramid(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        dp.create_model("rescan")(torch.rand(1, 1, 8, 8))
    assert dp.create_model("gcanet")(torch.rand(1, 3, 9, 11)).shape == (1, 3, 9, 11)  # padded, cropped back


def test_srn_residual_starts_from_identity():
    """residual=True adds each scale's input: with a zero last conv the net is exactly the identity, and
    the option changes no parameter count."""
    srn = dp.create_model("srn", width=8, residual=True).eval()
    assert sum(p.numel() for p in srn.parameters()) == sum(
        p.numel() for p in dp.create_model("srn", width=8).parameters())
    last = srn.outblock[-1]
    torch.nn.init.zeros_(last.weight), torch.nn.init.zeros_(last.bias)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(srn(x), x)
        plain = dp.create_model("srn", width=8).eval()
        plain.load_state_dict(srn.state_dict())
        assert torch.equal(plain(x), torch.zeros_like(x))


def _release_layout(net) -> dict:
    """A GCANet state_dict under the authors' key names (``res3.pre_conv1.weight``, ...)."""
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith("res."):
            _, i, part, leaf = k.split(".")
            k = f"res{int(i) + 1}.{ {'pre1': 'pre_conv1', 'pre2': 'pre_conv2'}.get(part, part)}.{leaf}"
        out[k] = v
    return out


def test_gcanet_loads_the_authors_layout(tmp_path):
    torch.manual_seed(0)
    src = dp.create_model("gcanet", width=16, residual=False).eval()
    for p in src.parameters():   # move the delta-initialized smoothing kernels off their init
        p.data.add_(0.01 * torch.randn_like(p))
    torch.save(_release_layout(src), tmp_path / "release.pth")
    net = dp.create_model("gcanet", weights=str(tmp_path / "release.pth"), residual=False).eval()
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        assert torch.equal(net(x), src(x)) and (net(x) >= 0).all()   # ReLU'd image output
        as_residual = dp.create_model("gcanet", weights=str(tmp_path / "release.pth")).eval()
        raw = as_residual(x) - x                    # the same prediction, added to the input instead
        assert torch.allclose(net(x), raw.clamp_min(0), atol=1e-6) and (raw < 0).any()
    assert net.arch == {"width": 16, "residual": False}


def test_gcanet_weight_errors(tmp_path):
    torch.save(dp.create_model("dncnn", depth=4, width=8).state_dict(), tmp_path / "dncnn.pth")
    with pytest.raises(ValueError, match="not a GCANet state_dict: needs a 'conv1.weight'"):
        dp.create_model("gcanet", weights=str(tmp_path / "dncnn.pth"))
    sd = _release_layout(dp.create_model("gcanet", width=16))
    sd.pop("res4.pre_conv1.weight")
    sd["res4.pre_conv1.weight"] = torch.zeros(1, 1, 3, 3)          # the d=2 kernel size where d=4 needs 7x7
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"not the GCANet layout \(width 16\).*unexpected \['extra.weight'\].*"
                                         r"res.3.pre1.weight \(1, 1, 3, 3\) != \(1, 1, 7, 7\)"):
        dp.create_model("gcanet", weights=str(tmp_path / "other.pth"))
    torch.save(_release_layout(dp.create_model("gcanet", width=16)), tmp_path / "w16.pth")
    with pytest.raises(ValueError, match="width=64 but .* holds width 16"):
        dp.create_model("gcanet", weights=str(tmp_path / "w16.pth"), width=64)


@pytest.mark.parametrize("file,residual,degraded,clean,psnr_in,psnr_out", [
    ("dehaze.pth", True, "dehaze/SOTS_outdoor_sample/hazy/0001_0.8_0.2.jpg", "dehaze/SOTS_outdoor_sample/clear/0001.png",
     16.13, 18.52),
    ("dehaze.pth", True, "dehaze/SOTS_outdoor_sample/hazy/0002_0.8_0.08.jpg",
     "dehaze/SOTS_outdoor_sample/clear/0002.png", 20.37, 20.52),
    ("derain.pth", False, "derain/Rain100H/rainy/001.png", "derain/Rain100H/clean/001.png", 15.28, 19.58),
    ("derain.pth", False, "derain/Rain100H/rainy/002.png", "derain/Rain100H/clean/002.png", 13.53, 18.44)])
def test_gcanet_pretrained_reproduces_source_figures(data_dir, file, residual, degraded, clean, psnr_in, psnr_out):
    """The PSNR figures of weights/gcanet/SOURCE.txt (output clamped and rounded to 8 bits, RGB PSNR)."""
    from dynprune.imageio import read_image
    from dynprune.metrics import psnr

    net = dp.create_model("gcanet", weights=str(data_dir / "weights/gcanet" / file), residual=residual).eval()
    y, x = read_image(data_dir / degraded, 3), read_image(data_dir / clean, 3)
    with torch.no_grad():
        out = net(y[None])[0]
    assert psnr(y, x) == pytest.approx(psnr_in, abs=0.005)
    assert psnr(out, x, quantize=True) == pytest.approx(psnr_out, abs=0.025)
