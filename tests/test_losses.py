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


def test_entropy_and_cost():
    p = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert L.entropy_loss(p).item() == pytest.approx(math.log(3) / 2, rel=1e-6)
    c = torch.tensor([0.25, 0.5, 1.0])
    assert L.cost_loss(p, c).item() == pytest.approx(((0.25 + 0.5 + 1.0) / 3 + 0.25) / 2)
    total, parts = L.final_loss(p, [torch.zeros(2, 1, 1, 1)] * 3, torch.ones(2, 1, 1, 1), c, l1, (1.0, 0.5, 2.0))
    assert total.item() == pytest.approx(parts["L_W"] + 0.5 * parts["L_E"] + 2.0 * parts["L_C"], rel=1e-6)
    assert parts["L_W"] == pytest.approx(1.0)


def test_per_sample_losses():
    a, b = torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    torch.testing.assert_close(l1(a, b), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(mse(a, b), torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(Charbonnier(0.0)(a, b), torch.tensor([0.5, 1.0]))
    assert L.classifier_loss(torch.tensor([[10.0, 0.0]]), torch.tensor([0])).item() < 1e-4
