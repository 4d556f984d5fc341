"""Step-keyed batches: the same for any worker count and any resume point."""

import torch

from dynprune.registry import create
from dynprune.train import StepBatches, batch_loader


def _batches():
    data = create("datasets", "skimage_photos", names=["camera", "coins"], patch_size=16, patches_per_image=8)
    noise = create("degradations", "gaussian_noise", sigmas=[15, 25, 50])
    labeler = create("labelers", "level", num_classes=3)
    return StepBatches(data, noise, seed=3, stream=2, batch_size=4, steps_per_epoch=4, labeler=labeler)


def test_batches_are_pure_functions_of_the_step_for_any_worker_count():
    batches = _batches()
    direct = [batches[s] for s in range(2, 9)]
    for workers in (0, 2):
        loaded = list(batch_loader(batches, 2, 9, workers=workers))
        assert len(loaded) == 7
        for a, b in zip(direct, loaded):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    clean, degraded, labels, level = direct[0]
    assert clean.shape == (4, 1, 16, 16) and labels.dtype == torch.int64 and torch.equal(labels, level)
    assert not torch.equal(direct[0][0], direct[4][0])  # the next epoch draws other patches
