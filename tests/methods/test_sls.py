"""SLS search: the gates, one search giving nested plans for several budgets, exact resume, errors."""

import pytest
import torch

import dynprune as dp
from dynprune.config import TrainConfig
from dynprune.nm import nm_mask
from dynprune.plan import RatioPlan
from dynprune.methods.sls import LayerGates, run_search


def test_gates_keep_the_top_n_and_train_straight_through():
    g = LayerGates(axis=1, m=8)
    w = torch.randn(4, 16, 3, 3, requires_grad=True)
    assert g.n() == 8 and torch.equal(g(w), w)  # scores 1: dense
    with torch.no_grad():
        g.scores[3] = 0.4  # p = 1, 1, 1, 0.4, ... -> gates 1..3 on, N = 4
    assert g.n() == 4
    assert torch.equal(g(w).detach(), w.detach() * nm_mask(w, "4:8"))
    g(w).sum().backward()
    assert g.scores.grad is not None and g.scores.grad.abs().sum() > 0
    g.bound.fill_(2)  # a recorded plan's N caps the layer
    assert g.n() == 2


def _cfg(tmp_path, steps, degradation=None, **search):
    return TrainConfig.model_validate({
        "model": {"name": "dncnn", "kwargs": {"in_channels": 1, "depth": 4, "width": 16}},
        "dataset": {"name": "skimage_photos", "kwargs": {"channels": 1, "patch_size": 24, "patches_per_image": 8}},
        "degradation": degradation or {"name": "gaussian_noise", "kwargs": {"sigmas": [25]}},
        "search": {"budgets": [0.75, 0.5], "m": 8, "steps": steps, "batch_size": 4, "score_lr": 0.05,
                   "reg_weight": 0.5, "anneal_every": 5, "checkpoint_every": 10, **search},
        "out_dir": str(tmp_path), "seed": 0})


def test_one_search_gives_nested_plans_within_budget(tmp_path):
    plans = run_search(_cfg(tmp_path, 300))
    assert [p.name for p in plans] == ["sls-75", "sls-50"]
    torch.manual_seed(0)
    model = dp.create_model("dncnn", in_channels=1, depth=4, width=16)
    for plan in plans:
        assert plan.macs_fraction <= plan.budget
        adapted = dp.create_model("dncnn", weights=str(tmp_path / f"{plan.name}.weights.pt"))  # loads as a model
        assert not torch.equal(adapted.dncnn[0].weight, model.dncnn[0].weight)
        assert RatioPlan.load(tmp_path / f"{plan.name}.yaml").ratios == plan.ratios
        net = dp.convert(model, [plan])  # the audit agrees with the search's own count
        rep = dp.audit(net, torch.zeros(1, 1, 24, 24))
        assert rep.branches[0].effective_macs / rep.dense_macs == pytest.approx(plan.macs_fraction, abs=1e-9)
    small, large = plans[1], plans[0]
    assert all(small.ratios[k].n <= large.ratios[k].n for k in large.ratios)
    net = dp.convert(model, [large, small, "8:8"])  # nested plans serve as branches
    assert dp.model_ratios(net)[:2] == ("sls-50", "sls-75")


def test_search_resumes_exactly(tmp_path):
    slow = dict(score_lr=0.01)  # budgets reached after some tens of steps
    whole = run_search(_cfg(tmp_path / "a", 300, **slow))
    cut = _cfg(tmp_path / "b", 8, **slow)
    assert run_search(cut) == []  # stopped before the first budget
    with pytest.raises(ValueError, match="its config differs from this one in search.score_lr"):
        run_search(_cfg(tmp_path / "b", 300, score_lr=0.02), resume=True)
    resumed = run_search(_cfg(tmp_path / "b", 300, **slow), resume=True)  # more steps: allowed
    assert [p.to_dict() for p in resumed] == [p.to_dict() for p in whole] and len(whole) == 2


def test_search_errors(tmp_path):
    with pytest.raises(ValueError, match=r"budgets \[0.0\]: each must be a MACs fraction in \(0, 1\]"):
        _cfg(tmp_path, 10, budgets=[0.0])
    with pytest.raises(ValueError, match="nothing to search in dncnn"):
        run_search(_cfg(tmp_path, 10, exclude=["*"]))


@pytest.mark.parametrize("nan_at, note", [
    (3, "no checkpoint was written yet"),  # call 1 draws the probe, call 3 is step 1 (0-based)
    (14, r"last checkpoint kept at .*search\.pt"),  # step 12, after the checkpoint of the first 10 steps
])
def test_non_finite_loss_names_the_step_and_what_is_kept(tmp_path, nan_noise, nan_at, note):
    cfg = _cfg(tmp_path, 50, degradation={"name": "nan_noise", "kwargs": {"nan_at": nan_at}}, score_lr=0.01)
    with pytest.raises(FloatingPointError, match=f"non-finite values in the training batch at SLS search, step {nan_at - 2}; {note}"):
        run_search(cfg)


def test_search_on_real_pairs(tmp_path):
    from ..conftest import noisy_pairs

    deg, cln = noisy_pairs(tmp_path / "pairs", 25, n=4)
    cfg = _cfg(tmp_path / "run", 200).model_dump()
    cfg["dataset"] = {"name": "paired_folder", "kwargs": {"degraded": deg, "clean": cln, "patch_size": 24,
                                                          "patches_per_image": 8}}
    plans = run_search(TrainConfig.model_validate(cfg))
    assert [p.name for p in plans] == ["sls-75", "sls-50"] and all(p.macs_fraction <= p.budget for p in plans)
