import math

import numpy as np
import pytest
import torch

from dynprune.metrics import psnr, ssim, to_y


def test_psnr_closed_form_and_identity():
    ref = torch.full((1, 8, 8), 0.5, dtype=torch.float64)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0)
    assert psnr(ref, ref) == math.inf
    assert psnr(torch.full((1, 8, 8), 1.7), torch.ones(1, 8, 8)) == math.inf  # clipped to [0, 1]


def test_crop_border_quantize_and_y():
    ref = torch.zeros(3, 10, 10, dtype=torch.float64)
    img = ref.clone()
    img[:, 0, :] = 1.0  # error only in the border row
    assert psnr(img, ref, crop_border=1) == math.inf
    assert psnr(torch.full((1, 4, 4), 0.5011), torch.full((1, 4, 4), 128 / 255), quantize=True) == math.inf
    y = to_y(np.ones((3, 2, 2)))
    assert y.shape == (1, 2, 2) and y[0, 0, 0] == pytest.approx((16 + 65.481 + 128.553 + 24.966) / 255)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="removes the whole"):
        psnr(ref, ref, crop_border=5)


def test_ssim():
    x = torch.rand(3, 32, 32)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x) < 0.9
