import pytest
import torch
import torch.nn.functional as F

import dynprune as dp
from dynprune.classsr import average_loss, class_loss
from dynprune.patches import patch_starts, restore_by_patches


def test_patch_starts_cover_borders():
    assert patch_starts(100, 32, 28) == [0, 28, 56, 68]
    assert patch_starts(32, 32, 28) == [0]
    with pytest.raises(ValueError, match="stride 40 is larger than the patch 32"):
        patch_starts(100, 32, 40)
    with pytest.raises(ValueError, match="smaller than the patch"):
        patch_starts(20, 32, 28)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_merge_is_exact_for_a_local_model_and_full_size(scale):
    x = torch.rand(2, 3, 71, 50)
    up = lambda p: F.interpolate(p, scale_factor=scale, mode="nearest")  # noqa: E731
    res = restore_by_patches(up, x, 32, 28, scale)
    assert res.output.shape == (2, 3, 71 * scale, 50 * scale)
    assert torch.equal(res.output, up(x)) and not res.padded


def test_grouped_routing_one_call_per_class_per_chunk():
    calls = []

    def model(p):
        calls.append(p.shape[0])
        return p * (1 + dp.current_branch())

    x = torch.rand(1, 1, 64, 64)
    classify = lambda p: (p.mean(dim=(1, 2, 3)) > 0.5).long()  # noqa: E731
    res = restore_by_patches(model, x, 16, 16, 1, classify=classify)
    b = res.branches[0]
    assert len(b) == 16 and sorted(calls) == sorted(torch.bincount(b)[torch.bincount(b) > 0].tolist())
    for (y, xx), br in zip(res.boxes[0], b.tolist()):
        torch.testing.assert_close(res.output[0, :, y:y + 16, xx:xx + 16], x[0, :, y:y + 16, xx:xx + 16] * (1 + br))


def test_small_image_padded_and_bad_scale():
    res = restore_by_patches(lambda p: p, torch.rand(1, 3, 20, 40), 32, 28, 1)
    assert res.padded and res.output.shape == (1, 3, 20, 40)
    with pytest.raises(ValueError, match="patch size 32 is not compatible with scale 4"):
        restore_by_patches(lambda p: F.interpolate(p, scale_factor=2), torch.rand(1, 3, 40, 40), 32, 28, 4)
    with pytest.raises(ValueError, match="stride 33 is larger"):
        restore_by_patches(lambda p: p, torch.rand(1, 3, 40, 40), 32, 33, 1)


def test_classsr_losses_exact_form():
    one_hot = torch.eye(3)[[0, 1, 2]]
    assert class_loss(one_hot).item() == 0.0
    uniform = torch.full((4, 3), 1 / 3)
    assert class_loss(uniform).item() == pytest.approx(2.0)  # (M - 1) - 0
    assert average_loss(one_hot).item() == pytest.approx(0.0)  # one sample per class: balanced
    skew = torch.eye(3)[[0, 0, 0]]  # n = 3, all class 0: |3-1| + |0-1| + |0-1| over 4n/3 = 4
    assert average_loss(skew).item() == pytest.approx(4 / 4)
