"""PSNR on the real test sets, shared by the benchmark scripts (issue 10's SLS, issue 11's PnG).

``fn`` maps a degraded (1, C, h, w) batch in [0, 1] to its restoration. SR: Set5 / Set14, Y channel, border
= scale, 8-bit output (the CARN-M SOURCE.txt protocol). Denoising: BSD68 gray, noise drawn in file order
from ``torch.Generator().manual_seed(0)``, input not clipped (the DnCNN SOURCE.txt protocol, as `dynprune eval`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dynprune.metrics import psnr


def sr_scores(fn, data: Path, scale: int) -> dict[str, float]:
    """Mean PSNR (dB) on Set5 and Set14 at ``scale``: {"Set5": ..., "Set14": ...}."""
    from dynprune.plugins.sr import load_sr_pairs

    out = {}
    for name in ("Set5", "Set14"):
        pairs = load_sr_pairs(data / "sr" / name, scale)
        with torch.no_grad():
            vals = [psnr(fn(lr.unsqueeze(0))[0].clamp(0, 1), hr, crop_border=scale, y_channel=True, quantize=True)
                    for _, lr, hr in pairs]
        out[name] = sum(vals) / len(vals)
    return out


def denoise_scores(fn, data: Path, sigma: float) -> dict[str, float]:
    """Mean PSNR (dB) on BSD68 at noise ``sigma`` (0-255 scale): {"BSD68 sigma S": ...}."""
    from dynprune.imageio import read_folder

    _, images = read_folder(data / "denoise/BSD68", channels=1)
    g = torch.Generator().manual_seed(0)
    vals = []
    with torch.no_grad():
        for im in images:
            y = im + sigma / 255.0 * torch.randn(im.shape, generator=g)
            vals.append(psnr(fn(y.unsqueeze(0))[0].clamp(0, 1), im))
    return {f"BSD68 sigma {sigma:g}": sum(vals) / len(vals)}
