"""Super-resolution data: bicubic degradation (x2/x3/x4), paired HR/LR benchmark folders (Set5/Set14
layout), and ClassSR's PSNR-threshold difficulty labeler."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from dynprune.classsr import psnr_labels
from dynprune.hookspecs import hookimpl
from dynprune.imageio import list_images, read_image
from dynprune.registry import create

__all__ = ["bicubic_downsample", "mod_crop", "Bicubic", "load_sr_pairs", "PSNRThresholdLabeler"]


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop (..., H, W) so that H and W are multiples of ``scale`` (bottom/right removed)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic downscaling with antialiasing (a = -0.5 kernel stretched by ``scale``, like MATLAB's
    ``imresize``), then clipped to [0, 1]. hr: (B, C, H, W) with H, W divisible by ``scale``.

    Raises:
        ValueError: scale not in 2/3/4, or H/W not divisible by it (use :func:`mod_crop`).
    """
    if scale not in (2, 3, 4):
        raise ValueError(f"bicubic scale {scale!r} not supported; accepted: 2, 3, 4")
    if hr.shape[-2] % scale or hr.shape[-1] % scale:
        raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not divisible by scale {scale}; mod-crop it first")
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(0, 1)


class Bicubic:
    """Degradation plugin: HR patches (B, C, H, W) -> bicubic LR; one difficulty level (labels come from
    a labeler such as ``psnr_threshold``)."""

    levels = 1

    def __init__(self, scale: int = 4):
        self.scale = int(scale)
        bicubic_downsample(torch.zeros(1, 1, self.scale, self.scale), self.scale)  # validates the scale

    def describe_level(self, i: int) -> str:
        return f"bicubic x{self.scale}"

    def __call__(self, clean, generator=None, level=None):
        return bicubic_downsample(mod_crop(clean, self.scale), self.scale), torch.zeros(clean.shape[0], dtype=torch.long)


def load_sr_pairs(root: str | Path, scale: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, LR (3, h, w), HR mod-cropped (3, h*scale, w*scale)) for a benchmark folder laid out as
    ``HR/<name>.png`` and ``LR_bicubic/X<scale>/<name>x<scale>.png`` (Set5, Set14). Gray images are
    replicated to RGB.

    Raises:
        FileNotFoundError: missing folder or LR file (named). ValueError: LR and HR sizes that do not
        match at this scale (named).
    """
    root = Path(root)
    lr_dir = root / "LR_bicubic" / f"X{scale}"
    pairs = []
    for hr_path in list_images(root / "HR"):
        lr_path = lr_dir / f"{hr_path.stem}x{scale}{hr_path.suffix}"
        if not lr_path.is_file():
            raise FileNotFoundError(f"no LR file {str(lr_path)!r} for {hr_path.name}")
        hr, lr = mod_crop(read_image(hr_path, 3), scale), read_image(lr_path, 3)
        if tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
            raise ValueError(f"{hr_path.name}: LR {tuple(lr.shape[-2:])} x{scale} does not match HR "
                             f"{tuple(hr.shape[-2:])}")
        pairs.append((hr_path.stem, lr, hr))
    return pairs


class PSNRThresholdLabeler:
    """ClassSR labels: PSNR of a reference model on each (LR, HR) sample, binned by ``thresholds`` (dB,
    increasing; class 0 = easy = highest PSNR). The reference is a registered model built from
    ``reference`` and ``reference_kwargs`` (e.g. ``weights``); ``metric_kwargs`` go to the PSNR
    (e.g. ``{"y_channel": True}``).

    Raises:
        ValueError: len(thresholds) != num_classes - 1.
    """

    def __init__(self, num_classes: int, reference: str, thresholds: Sequence[float], reference_kwargs: dict | None = None,
                 metric_kwargs: dict | None = None):
        if len(thresholds) != num_classes - 1:
            raise ValueError(f"{num_classes} classes need {num_classes - 1} thresholds, got {list(thresholds)}")
        self.thresholds, self.metric_kwargs = list(thresholds), dict(metric_kwargs or {})
        self.model = create("models", reference, **(reference_kwargs or {})).eval()

    def __call__(self, clean, degraded, level=None):
        labels, _ = psnr_labels(self.model, degraded, mod_crop(clean, getattr(self.model, "scale", 1)), self.thresholds,
                                **self.metric_kwargs)
        return degraded, labels.to(degraded.device)


@hookimpl
def dynprune_register_degradations(register):
    register("bicubic", Bicubic, "bicubic downscaling x2/x3/x4 with antialiasing (MATLAB imresize-like)")


@hookimpl
def dynprune_register_labelers(register):
    register("psnr_threshold", PSNRThresholdLabeler, "ClassSR: bins of a reference model's PSNR per sample")
