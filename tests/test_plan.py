"""Ratio plans: per-layer N:M assignments, saved and loaded, used as branches of convert()."""

import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune.layers import dynamic_layers
from dynprune.nm import NMRatio, nm_mask
from dynprune.plan import RatioPlan


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 16, 3, padding=1)   # 3 input channels: not convertible
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.tail = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.tail(self.dw(torch.relu(self.b(torch.relu(self.a(self.head(x)))))))


SPARSE = RatioPlan({"a": "1:8", "b": "2:8", "tail": "1:8"}, name="sls-25")
HALF = RatioPlan({"a": "4:8", "b": "2:8"}, name="sls-50")  # tail dense


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_plan_round_trip(tmp_path, suffix):
    plan = RatioPlan({"a": "1:8", "b": (2, 8)}, name="p", macs_fraction=0.31, budget=0.3, model="Net")
    path = plan.save(tmp_path / f"p{suffix}")
    back = RatioPlan.load(path)
    assert back.ratios == {"a": NMRatio(1, 8), "b": NMRatio(2, 8)} and back.name == "p"
    assert (back.macs_fraction, back.budget, back.model) == (0.31, 0.3, "Net")
    assert "| a | 1:8 | 0.125 |" in back.table()
    assert RatioPlan.coerce({"a": "1:8"}).ratios == {"a": NMRatio(1, 8)}


def test_plans_as_branches_nested_and_ordered():
    model = Net().eval()
    net = dp.convert(model, ["8:8", HALF, {"a": "1:8", "b": "2:8", "tail": "1:8"}])
    assert dp.model_ratios(net) == ("plan", "sls-50", NMRatio(8, 8))  # sparsest first; the dict is "plan"
    assert [str(r) for r in net.a.nm_ratios] == ["1:8", "4:8", "8:8"]
    assert [str(r) for r in net.tail.nm_ratios] == ["1:8", "8:8", "8:8"]  # unnamed in HALF: dense there
    assert {n for n, _ in dynamic_layers(net)} == {"a", "b", "tail"}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
        with dp.use_branch("sls-50"):
            half = net(x)
            assert torch.equal(net.a.weight, model.a.weight * nm_mask(model.a.weight, "4:8"))
            assert torch.equal(net.tail.weight, model.tail.weight)
        with dp.use_branch(1):
            assert torch.equal(net(x), half)
        torch.testing.assert_close(dp.export_branch(net, "sls-50")(x), half, rtol=0, atol=0)
    rep = dp.audit(net, x)
    costs = {m.name: m for m in rep.branches[1].modules}
    assert costs["a"].effective_macs * 2 == costs["a"].dense_macs and costs["tail"].ratio == "8:8"
    assert rep.branches[0].ratio == "plan" and rep.branches[1].ratio == "sls-50"


def test_a_plan_may_name_a_layer_dense():
    """A searched plan gives some layers "M:M" (SLS at M=4 keeps a few layers whole): that layer stays the
    original module, the others are pruned as named; one branch alone is enough."""
    model = Net().eval()
    plan = RatioPlan({"a": "8:8", "b": "2:8", "tail": "1:8"}, name="p")
    net = dp.convert(model, [plan])
    assert type(net.a) is nn.Conv2d and {n for n, _ in dynamic_layers(net)} == {"b", "tail"}
    assert "a" in {r.name for r in dp.conversion_report(net).skipped}
    with torch.no_grad(), dp.use_branch("p"):
        x = torch.randn(1, 16, 8, 8)
        assert torch.equal(net.a(x), model.a(x))
        assert torch.equal(net.b.weight, model.b.weight * nm_mask(model.b.weight, "2:8"))
    with pytest.raises(ValueError, match="names layer 'dw', which cannot be converted: .*depthwise"):
        dp.convert(Net(), [RatioPlan({"dw": "32:32", "b": "2:8"}, name="p")])  # dense there too: still refused


def test_plan_errors():
    with pytest.raises(ValueError, match="plan 'p' names layer 'nope', which Net does not have"):
        dp.convert(Net(), [RatioPlan({"nope": "1:8"}, name="p"), "8:8"])
    with pytest.raises(ValueError, match="names layer 'dw', which cannot be converted: .*depthwise"):
        dp.convert(Net(), [RatioPlan({"dw": "1:8"}, name="p"), "8:8"])
    with pytest.raises(ValueError, match="gives layer 'tail' M=24, which does not divide its reduction axis of length 32"):
        dp.convert(Net(), [RatioPlan({"tail": "1:24"}, name="p"), "8:8"])
    with pytest.raises(ValueError, match="names layer 'a', which cannot be converted: .*16 is shorter than M=32"):
        dp.convert(Net(), [RatioPlan({"a": "1:32"}, name="p"), "8:8"])
    with pytest.raises(ValueError, match="not nested at layer 'b': 2:8 on branch sls-25 but 1:8 on the denser branch w"):
        dp.convert(Net(), [SPARSE, RatioPlan({"a": "8:8", "b": "1:8", "tail": "8:8"}, name="w"), "8:8"])
    with pytest.raises(ValueError, match="made for CARNMultiScale, not Net"):
        dp.convert(Net(), [RatioPlan({"a": "1:8"}, name="p", model="CARNMultiScale")])
    with pytest.raises(ValueError, match="distinct names"):
        dp.convert(Net(), [SPARSE, RatioPlan({"a": "1:8"}, name="sls-25")])
    with pytest.raises(ValueError, match="reads as a ratio"):
        RatioPlan({"a": "1:8"}, name="2:4")
    with pytest.raises(ValueError, match="plan 'p', layer 'a': invalid N:M ratio '9:8'"):
        RatioPlan({"a": "9:8"}, name="p")
    with pytest.raises(ValueError, match="branches give it M=\\[4, 8\\]"):
        dp.convert(Net(), [RatioPlan({"a": "1:8"}, name="p"), "2:4", "4:4"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        dp.convert(Net(), ["missing.yaml", "8:8"])


def test_unnamed_plans_get_distinct_names_in_convert_and_config():
    from dynprune.config import TrainConfig

    net = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
    plans = [{"0": "1:4", "1": "1:4"}, {"0": "2:4", "1": "2:4"}, "4:4"]
    assert dp.model_ratios(dp.convert(net, plans)) == ("plan1", "plan2", dp.NMRatio(4, 4))
    cfg = TrainConfig.model_validate({"convert": {"ratios": plans}})
    assert [r["name"] if isinstance(r, dict) else r for r in cfg.convert.ratios] == ["plan1", "plan2", "4:4"]
