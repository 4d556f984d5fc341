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
