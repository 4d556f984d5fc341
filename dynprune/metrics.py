"""PSNR and SSIM with the conventions of the restoration literature, on scikit-image.

Images are (C, H, W) tensors or arrays in [0, 1]; both are clipped to [0, 1] and compared in
float64. Options: ``crop_border`` pixels removed on every side (BasicSR: = scale for SR),
``y_channel`` (BT.601 luma of RGB, ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` on the 0-255
scale, as BasicSR/MATLAB ``rgb2ycbcr``), ``quantize`` (round to 8 bit first, as when PNGs are
saved). SSIM follows Wang et al. 2004: Gaussian window sigma 1.5, population covariance.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "to_y"]


def _prep(img, crop_border: int, y_channel: bool, quantize: bool) -> np.ndarray:
    a = img.detach().cpu().double().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {a.shape}")
    a = np.clip(a, 0.0, 1.0)
    if quantize:
        a = np.round(a * 255.0) / 255.0
    if y_channel:
        a = to_y(a)
    if crop_border:
        if 2 * crop_border >= min(a.shape[1:]):
            raise ValueError(f"crop_border={crop_border} removes the whole {a.shape[1]}x{a.shape[2]} image")
        a = a[:, crop_border:-crop_border, crop_border:-crop_border]
    return a


def to_y(a: np.ndarray) -> np.ndarray:
    """BT.601 luma (1, H, W) in [0, 1] of an RGB (3, H, W) image in [0, 1]; 1-channel input is returned as is.

    Raises:
        ValueError: neither 1 nor 3 channels.
    """
    if a.shape[0] == 1:
        return a
    if a.shape[0] != 3:
        raise ValueError(f"y_channel needs 1 or 3 channels, got {a.shape[0]}")
    y = (16.0 + 65.481 * a[0] + 128.553 * a[1] + 24.966 * a[2]) / 255.0
    return y[None]


def _check(img, ref):
    if tuple(img.shape) != tuple(ref.shape):
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs reference {tuple(ref.shape)}")


def psnr(img, ref, crop_border: int = 0, y_channel: bool = False, quantize: bool = False) -> float:
    """PSNR in dB of ``img`` against ``ref`` (both (C, H, W) in [0, 1]); inf when identical.

    Raises:
        ValueError: shapes differ or are not (C, H, W).
    """
    _check(img, ref)
    a, b = (_prep(x, crop_border, y_channel, quantize) for x in (img, ref))
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(b, a, data_range=1.0))


def ssim(img, ref, crop_border: int = 0, y_channel: bool = False, quantize: bool = False) -> float:
    """SSIM in [-1, 1] (Wang et al. 2004; Gaussian window sigma 1.5), mean over channels.

    Raises:
        ValueError: shapes differ or are not (C, H, W).
    """
    _check(img, ref)
    a, b = (_prep(x, crop_border, y_channel, quantize) for x in (img, ref))
    return float(structural_similarity(b, a, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))
