import pytest
import torch

from dynprune.registry import create


def test_gaussian_noise_seeded_and_sigma_exact():
    deg = create("degradations", "gaussian_noise", sigmas=[15, 25, 50])
    clean = torch.full((64, 1, 32, 32), 0.5)
    a, la = deg(clean, generator=torch.Generator().manual_seed(3))
    b, lb = deg(clean, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(la, lb) and set(la.tolist()) == {0, 1, 2}
    stds = (a - clean).flatten(1).std(1)
    for lvl, sigma in enumerate((15, 25, 50)):
        assert stds[la == lvl].mean().item() == pytest.approx(sigma / 255, rel=0.03)
    y, lvl = deg(clean[:2], generator=torch.Generator().manual_seed(0), level=2)
    assert lvl.tolist() == [2, 2] and deg.describe_level(2) == "sigma=50"
    assert (y - clean[:2]).abs().max() > 0.5  # not clipped


def test_blind_noise_levels_and_errors():
    deg = create("degradations", "gaussian_noise", sigmas=None, sigma_range=[0, 55], levels=5)
    _, lvl = deg(torch.zeros(500, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert set(lvl.tolist()) == set(range(5))
    with pytest.raises(ValueError, match="exactly one"):
        create("degradations", "gaussian_noise", sigmas=[15], sigma_range=[0, 5])
    with pytest.raises(ValueError, match=">= 0"):
        create("degradations", "gaussian_noise", sigmas=[-1])


def test_level_labeler():
    lab = create("labelers", "level", num_classes=3)
    y = torch.zeros(2, 1, 2, 2)
    assert lab(y, y, torch.tensor([0, 2]))[1].tolist() == [0, 2]
    with pytest.raises(ValueError, match="do not fit 3 classes"):
        lab(y, y, torch.tensor([3, 0]))


def test_residual_variance_labeler_eq_2_3():
    torch.manual_seed(0)
    lab = create("labelers", "residual_variance", num_classes=3)
    with pytest.raises(ValueError, match="not fitted"):
        lab(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    clean = torch.rand(90, 1, 16, 16)
    sig = torch.linspace(5, 60, 90).view(-1, 1, 1, 1) / 255
    degraded = clean + torch.randn_like(clean) * sig
    var = lab.variance(clean, degraded)
    lab.fit(var)
    relabeled, labels = lab(clean, degraded)
    assert torch.bincount(labels).tolist() == [30, 30, 30]
    new_var = lab.variance(clean, relabeled)
    torch.testing.assert_close(new_var, lab.medians[labels], rtol=1e-4, atol=0)  # eq. 2: Var(R_i) = median_i
    with pytest.raises(ValueError, match="edges must increase"):
        lab.set_bins([0.2, 0.1], [0.1, 0.15, 0.3])
