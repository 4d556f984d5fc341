import math

import pytest
import torch

from dynprune import losses as L
from dynprune.plugins.losses import Charbonnier, l1, mse


def test_weighted_reconstruction_closed_form():
    target = torch.zeros(2, 1, 2, 2)
    outputs = [torch.full((2, 1, 2, 2), v) for v in (0.1, 0.2, 0.4)]
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    expected = (0.1 + (0.2 * 0.1 + 0.3 * 0.2 + 0.5 * 0.4)) / 2
    assert L.weighted_reconstruction(probs, outputs, target, l1).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="2 branch outputs for 3"):
        L.weighted_reconstruction(probs, outputs[:2], target, l1)


def test_lw_floor_closed_form():
    target = torch.zeros(2, 1, 2, 2)
    outputs = [torch.full((2, 1, 2, 2), v) for v in (0.1, 0.2, 0.4)]
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    w = L.branch_weights(probs, 0.2)     # 0.2 + 0.4 p
    assert w.flatten().tolist() == pytest.approx([0.6, 0.2, 0.2, 0.28, 0.32, 0.4]) and w.sum(1).tolist() == pytest.approx([1, 1])
    expected = ((0.6 * 0.1 + 0.2 * 0.2 + 0.2 * 0.4) + (0.28 * 0.1 + 0.32 * 0.2 + 0.4 * 0.4)) / 2
    assert L.weighted_reconstruction(probs, outputs, target, l1, floor=0.2).item() == pytest.approx(expected)
    assert L.branch_weights(probs, 1 / 3).flatten().tolist() == pytest.approx([1 / 3] * 6)   # all branches equal
    with pytest.raises(ValueError, match=r"L_W floor 0.4 is outside \[0, 1/3\]"):
        L.branch_weights(probs, 0.4)


def test_lw_floor_to_denser_branches_closed_form():
    # c = cumulative p (sparsest first); w = 0.2 c + (1 - 0.2 sum c) p
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    w = L.branch_weights(probs, 0.2, "denser")
    assert w.tolist() == [pytest.approx(r) for r in ([0.6, 0.2, 0.2], [0.0, 0.8, 0.2], [0.0, 0.0, 1.0],
                                                      [0.172, 0.298, 0.53])]
    assert w.sum(1).tolist() == pytest.approx([1.0] * 4)
    assert torch.equal(L.branch_weights(probs, 0.0, "denser"), probs)       # no floor: the paper's p
    target = torch.zeros(4, 1, 2, 2)
    outputs = [torch.full((4, 1, 2, 2), v) for v in (0.1, 0.2, 0.4)]
    expected = (w * torch.tensor([0.1, 0.2, 0.4])).sum(1).mean().item()
    assert L.weighted_reconstruction(probs, outputs, target, l1, 0.2, "denser").item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"floor_to 'sparser' is not one of \['all', 'denser'\]"):
        L.branch_weights(probs, 0.2, "sparser")


def test_distilled_blends_target_and_teacher():
    pred, target, teacher = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.4), torch.full((2, 1, 2, 2), 0.1)
    assert L.distilled(l1, teacher, 0.25)(pred, target).tolist() == pytest.approx([0.75 * 0.4 + 0.25 * 0.1] * 2)
    assert L.distilled(l1, teacher, 0.0) is l1
    with pytest.raises(ValueError, match=r"distillation weight 1.5 is outside \[0, 1\]"):
        L.distilled(l1, teacher, 1.5)


def test_entropy_and_cost():
    p = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert L.entropy_loss(p).item() == pytest.approx(math.log(3) / 2, rel=1e-6)
    c = torch.tensor([0.25, 0.5, 1.0])
    assert L.cost_loss(p, c).item() == pytest.approx(((0.25 + 0.5 + 1.0) / 3 + 0.25) / 2)
    total, parts = L.final_loss(p, [torch.zeros(2, 1, 1, 1)] * 3, torch.ones(2, 1, 1, 1), c, l1, (1.0, 0.5, 2.0))
    parts = {k: v.item() for k, v in parts.items()}  # detached 0-dim tensors: no host sync until logged
    assert total.item() == pytest.approx(parts["L_W"] + 0.5 * parts["L_E"] + 2.0 * parts["L_C"], rel=1e-6)
    assert parts["L_W"] == pytest.approx(1.0)


def test_per_sample_losses():
    a, b = torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    torch.testing.assert_close(l1(a, b), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(mse(a, b), torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(Charbonnier(0.0)(a, b), torch.tensor([0.5, 1.0]))
    assert L.classifier_loss(torch.tensor([[10.0, 0.0]]), torch.tensor([0])).item() < 1e-4
