import threading

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

import dynprune as dp
from dynprune.layers import dynamic_layers

from .conftest import randomize_bn


def _net():
    return nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=2, dilation=2, groups=2), nn.BatchNorm2d(16), nn.ReLU(),
        Conv2dSame(16, 8, 3, stride=2),
        nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, groups=8, padding=1),  # depthwise: stays dense
        nn.Flatten(), nn.LazyLinear(12) if False else nn.Identity(),
    ).eval()


def test_dense_branch_equals_original_and_report():
    model = _net()
    randomize_bn(model)
    x = torch.randn(3, 4, 17, 17)
    conv = dp.convert(model)
    with torch.no_grad():
        assert torch.equal(conv(x), model(x))
        with dp.use_branch("4:4"):
            assert torch.equal(conv(x), model(x))
    rep = dp.conversion_report(conv)
    assert [r.name for r in rep.converted] == ["0", "3", "6", "7"]
    assert [(r.name, r.reason) for r in rep.skipped] == [("8", "input-channel axis has length 1 (depthwise)")]
    assert rep.params_added == 2 * 2 * (16 + 16)  # 2 BNs x 2 sparse-branch copies x (weight + bias)
    assert [(r.name, r.type) for r in rep.norms] == [("1", "BatchNorm2d"), ("4", "BatchNorm2d")]
    assert type(conv[6]).__name__ == "NMConv2dSame" and isinstance(conv[6], Conv2dSame)


def test_loads_original_state_dict_and_keeps_names():
    model = _net()
    randomize_bn(model)
    conv = dp.convert(_net())
    missing = conv.load_state_dict(model.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(conv(x), model(x))
    assert set(model.state_dict()) <= set(conv.state_dict())


def test_sparse_branches_zero_exactly_n_over_m():
    conv = dp.convert(_net())
    with torch.no_grad():
        for i, frac in enumerate((0.25, 0.5, 1.0)):
            with dp.use_branch(i):
                for _, layer in dynamic_layers(conv):
                    w = layer.weight
                    assert (w != 0).float().mean().item() == pytest.approx(frac, abs=1e-6)


@pytest.mark.parametrize("branch", [0, 1, 2, "2:4", -1])
def test_export_branch_equals_dynamic(branch):
    model = _net()
    randomize_bn(model)
    conv = dp.convert(model)
    for bn in (m for m in conv.modules() if hasattr(m, "aux_norms")):
        for aux in bn.aux_norms:  # make the branch norms differ from the dense one
            aux.running_mean.add_(0.1)
    x = torch.randn(2, 4, 16, 16)
    static = dp.export_branch(conv, branch)
    assert not any("NM" in type(m).__name__ or "Variable" in type(m).__name__ for m in static.modules())
    with torch.no_grad(), dp.use_branch(branch):
        torch.testing.assert_close(static(x), conv(x), rtol=0, atol=0)


def test_linear_conv1d_and_exclusions():
    model = nn.Sequential(nn.Conv1d(8, 8, 3), nn.Flatten(), nn.Linear(48, 8), nn.Linear(8, 3))
    conv = dp.convert(model, ["2:4", "4:4"], exclude=["3"], exclude_types=[nn.Conv1d])
    rep = dp.conversion_report(conv)
    assert [r.name for r in rep.converted] == ["2"]
    assert {r.name: r.reason for r in rep.skipped} == {"0": "excluded by type", "3": "excluded by pattern '3'"}
    assert model[2].__class__ is nn.Linear  # the input model is untouched


def test_nothing_convertible():
    with pytest.raises(ValueError, match="nothing to convert in Sequential.*length 3 is shorter than M=4"):
        dp.convert(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="no Conv or Linear"):
        dp.convert(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        dp.convert("resnet")


def test_invalid_ratio_and_branch():
    with pytest.raises(ValueError, match="'3:2'"):
        dp.convert(_net(), ["3:2"])
    conv = dp.convert(_net())
    with pytest.raises(ValueError, match="not one of the ratios"), dp.use_branch("1:8"):
        conv(torch.randn(1, 4, 8, 8))
    with pytest.raises(IndexError, match="out of range"), dp.use_branch(5):
        conv(torch.randn(1, 4, 8, 8))
    with pytest.raises(TypeError):
        with dp.use_branch(1.5):
            pass


def test_threads_use_their_own_branch():
    conv = dp.convert(_net())
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        expected = {}
        for i in range(3):
            with dp.use_branch(i):
                expected[i] = conv(x)
    errors = []

    def work(i):
        with torch.no_grad(), dp.use_branch(i):
            for _ in range(20):
                if not torch.equal(conv(x), expected[i]):
                    errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not torch.equal(expected[0], expected[2])


def test_timm_model_converts():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    conv = dp.convert(model, exclude=["fc"])
    rep = dp.conversion_report(conv)
    assert len(rep.converted) == 19 and {r.name for r in rep.skipped} == {"conv1", "fc"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(conv(x), model(x))


def test_convert_validates_its_options():
    with pytest.raises(ValueError, match=r"ratios \['1:4', '3:8', '8:8'\] mix M=4, 8"):
        dp.convert(_net(), ["1:4", "3:8", "8:8"])
    for bad in (float("nan"), float("inf"), -1e-4, "2e-4", True):
        with pytest.raises(ValueError, match="srste_decay=.*finite number >= 0"):
            dp.convert(_net(), srste_decay=bad)
    with pytest.raises(ValueError, match="norms='group'"):
        dp.convert(_net(), norms="group")


def test_without_a_dense_ratio_the_densest_branch_runs_outside_use_branch():
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    net = dp.convert(model, ["1:4", "2:4"])
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        with dp.use_branch("2:4"):
            densest = net(x)
        assert torch.equal(net(x), densest) and not torch.equal(net(x), model(x))
    assert "no dense ratio: outside use_branch the model runs its densest branch 2:4" in str(dp.conversion_report(net))


@pytest.mark.parametrize("pattern", ["vector16", "vector8-shared"])
def test_vector_pattern_branches_share_inputs_per_block_and_export(pattern):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(8, 40, 3, padding=1), nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 3, 3, padding=1))
    randomize_bn(base.eval())
    net = dp.convert(base, pattern=pattern).eval()
    v = int(pattern[6:].split("-")[0])
    layer = net[0]
    assert layer.nm_pattern == dp.nm.NMPattern.parse(pattern) and net.dynprune_config["pattern"] == pattern
    for b in range(2):
        keep = layer.branch_mask(b).reshape(40, 8, 9)
        for b0 in range(0, 40, v):
            assert torch.equal(keep[b0:b0 + v], keep[b0:b0 + 1].expand_as(keep[b0:b0 + v]))
        if pattern.endswith("shared"):
            assert torch.equal(keep, keep[:, :, :1].expand_as(keep))
    assert bool((layer.branch_mask(0) <= layer.branch_mask(1)).all())
    x = torch.randn(2, 8, 9, 11)
    for b in ("1:4", "2:4", "4:4"):
        with torch.no_grad(), dp.use_branch(b):
            assert torch.equal(dp.export_branch(net, b)(x), net(x))
    rep = dp.conversion_report(net)
    assert rep.pattern == dp.nm.NMPattern.parse(pattern)
    assert {r.name for r in rep.partial_blocks} == ({"0", "3"} if v == 16 else {"3"})    # 40 % 16, 3 < V
    assert f"pattern {pattern}" in str(rep) and "partial block 3 (Conv2d (3, 40, 3, 3)): 3 output channels" in str(rep)


def test_vector_pattern_errors():
    net = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 3))
    with pytest.raises(ValueError, match=r"V=16 exceeds the output channels of every layer to convert \(at most 8\)"):
        dp.convert(net, pattern="vector16")
    with pytest.raises(ValueError, match="one pattern per model"):
        dp.convert(net, pattern=["vector8", "element"])
    with pytest.raises(ValueError, match="unknown mask pattern 'vector-16'"):
        dp.convert(net, pattern="vector-16")
    from pydantic import ValidationError

    from dynprune.config import TrainConfig
    with pytest.raises(ValidationError, match="unknown mask pattern 'blocks'"):
        TrainConfig.model_validate({"convert": {"pattern": "blocks"}})
    assert TrainConfig.model_validate({"convert": {"pattern": "vector"}}).convert.pattern == "vector16"


def test_vector_pattern_srste_decay_and_pinned_order():
    from dynprune import srste
    from dynprune.layers import pin_order

    net = dp.convert(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)), pattern="vector16", mask_grad="sr-ste")
    layer = net[0]
    with dp.use_branch("1:4"):
        net(torch.randn(1, 8, 6, 6)).sum().backward()
    layer.dense_weight.grad.zero_()               # the branch stays recorded: the decay alone is left
    assert srste.apply_decay(net) == 1
    w, keep = layer.dense_weight.detach(), layer.branch_mask(0)
    assert torch.equal(layer.dense_weight.grad, layer.nm_decay * w * ~keep)
    rank = pin_order(layer)                       # PnG: the ordering of the blocks' norms, pinned
    assert rank.shape == (1, 2, 4, 9)             # (blocks, groups, M, taps)
    with torch.no_grad():
        layer.dense_weight.mul_(-3.0).add_(torch.randn_like(w))
    assert torch.equal(layer.branch_mask(0), keep)          # pinned: the weights changed, the mask did not
