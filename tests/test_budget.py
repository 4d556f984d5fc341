import math

import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune.budget import calibrate_budget, mean_cost, solve_penalty
from dynprune.classpruning import ClassPruning

COSTS = torch.tensor([0.25, 0.5, 1.0])


def test_solve_penalty_closed_form():
    # A prefers 4:4 (0.7) over 2:4 (0.2); B prefers 2:4 strongly. Argmax cost (1.0 + 0.5) / 2 = 0.75.
    # Budget 0.6: the cheapest move is A 4:4 -> 2:4, at lam = ln(0.7 / 0.2) / (1.0 - 0.5) = 2 ln 3.5.
    logp = torch.tensor([[0.1, 0.2, 0.7], [0.05, 0.9, 0.05]], dtype=torch.float64).log()
    lam = solve_penalty(logp, COSTS, 0.6)
    assert lam == pytest.approx(2 * math.log(3.5), abs=1e-9)
    assert mean_cost(logp, COSTS, lam) == 0.5
    assert mean_cost(logp, COSTS, lam - 1e-6) == 0.75
    assert solve_penalty(logp, COSTS, 0.75) == 0.0          # argmax already meets it
    # pixel weights: B is 3x larger, argmax cost (1.0 + 3 * 0.5) / 4 = 0.625 <= 0.7
    assert solve_penalty(logp, COSTS, 0.7, weights=torch.tensor([1.0, 3.0])) == 0.0
    assert solve_penalty(logp, COSTS, 0.6, weights=torch.tensor([1.0, 3.0])) == pytest.approx(2 * math.log(3.5), abs=1e-9)


def test_fill_spends_an_underused_budget_closed_form():
    # Argmax cost 0.75 (A on 4:4, B on 2:4). Filling 0.9: the cheapest move up is B 2:4 -> 4:4, worth
    # ln(0.9 / 0.05) for 0.5 of cost, so lam = -2 ln 18; the mean cost then reaches 1.0 > 0.9, so the
    # feasible side is lam just above it: the argmax routing. Filling 1.0 takes it.
    logp = torch.tensor([[0.1, 0.2, 0.7], [0.05, 0.9, 0.05]], dtype=torch.float64).log()
    lam = solve_penalty(logp, COSTS, 1.0, fill=True)
    assert lam <= -2 * math.log(18) + 1e-9 and mean_cost(logp, COSTS, lam) == 1.0
    lam = solve_penalty(logp, COSTS, 0.9, fill=True)
    assert lam == pytest.approx(-2 * math.log(18), abs=1e-9) and mean_cost(logp, COSTS, lam) == 0.75
    assert solve_penalty(logp, COSTS, 0.9) == 0.0                       # without fill: at most, not up to
    # over budget, fill changes nothing: the same positive lam
    assert solve_penalty(logp, COSTS, 0.6, fill=True) == solve_penalty(logp, COSTS, 0.6)


def test_solve_penalty_errors():
    logp = torch.tensor([[0.1, 0.2, 0.7]]).log()
    with pytest.raises(ValueError, match=r"budget 0\.2000 is below the cheapest branch's cost 0\.2500"):
        solve_penalty(logp, COSTS, 0.2)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_penalty(logp, torch.tensor([0.5, 0.25, 1.0]), 0.6)
    with pytest.raises(ValueError, match="one per branch"):
        solve_penalty(logp, COSTS[:2], 0.6)


def _model():
    """Branch by brightness: logits (5 - 10 m, 0, 10 m - 5) for the image mean m."""
    torch.manual_seed(3)
    net = dp.convert(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                   nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1)))
    classifier = nn.Sequential(nn.Conv2d(1, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        classifier[0].weight.copy_(torch.tensor([-10.0, 0.0, 10.0]).view(3, 1, 1, 1))
        classifier[0].bias.copy_(torch.tensor([5.0, 0.0, -5.0]))
    return ClassPruning(net, classifier).eval()


def test_default_routing_is_argmax_and_old_state_dicts_load():
    model = _model()
    assert torch.equal(model.route_penalty, torch.zeros(3, dtype=torch.float64))
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.classify(x), model.classifier(x).argmax(1))
    sd = model.state_dict()
    del sd["route_penalty"]                      # a checkpoint written before budgets existed
    other = _model()
    other.route_penalty.fill_(1.0)
    other.load_state_dict(sd)
    assert torch.equal(other.route_penalty, torch.zeros(3, dtype=torch.float64))


def test_calibrate_budget_meets_the_budget_with_the_smallest_penalty():
    model = _model()
    images = [torch.rand(1, 1, 16 + 4 * (k % 3), 16) * 0.08 * k for k in range(24)]   # means 0 .. 0.92
    with torch.no_grad():
        argmax = torch.cat([model.classify(x) for x in images])
    free = calibrate_budget(model, images, 1.0)
    assert free["penalty"] == 0.0 and free["calibrated_routing"] == torch.bincount(argmax, minlength=3).tolist()
    cheapest = free["branch_costs"][0] + free["classifier_cost"]
    assert cheapest < free["argmax_cost"], "the fixture must route some images above the cheapest branch"
    budget = (cheapest + free["argmax_cost"]) / 2
    info = calibrate_budget(model, images, budget)
    assert info["calibrated_cost"] <= budget < info["argmax_cost"]
    # the model now routes as reported, and its pixel-weighted cost is the reported one
    with torch.no_grad():
        chosen = torch.cat([model.classify(x) for x in images])
    assert torch.bincount(chosen, minlength=3).tolist() == info["calibrated_routing"]
    px = torch.tensor([x.shape[-1] * x.shape[-2] for x in images], dtype=torch.float64)
    cost = (torch.tensor(info["branch_costs"], dtype=torch.float64)[chosen] * px).sum() / px.sum()
    assert cost.item() + info["classifier_cost"] == pytest.approx(info["calibrated_cost"], rel=1e-12)
    # smallest: a slightly lower penalty exceeds the budget
    logp = torch.cat([model.classifier(x).double().log_softmax(1) for x in images]).detach()
    costs = torch.tensor(info["branch_costs"])
    assert mean_cost(logp, costs, info["penalty"] * (1 - 1e-6), px) + info["classifier_cost"] > budget
    # the penalty travels in the state_dict (checkpoints, deployed artifacts)
    fresh = _model()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(torch.cat([fresh.classify(x) for x in images]), chosen)


def test_calibrate_budget_needs_images():
    with pytest.raises(ValueError, match="at least one calibration image"):
        calibrate_budget(_model(), [], 0.6)


def test_calibrate_budget_refuses_an_infeasible_budget():
    with pytest.raises(ValueError, match=r"budget 0\.1000 is below the cheapest routing's cost 0\.29[0-9]+ \(branch 1:4"):
        calibrate_budget(_model(), [torch.rand(1, 1, 16, 16)], 0.1)
