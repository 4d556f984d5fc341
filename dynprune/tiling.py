"""Tiled inference for images of any size, and a memory check before a run that cannot fit.

A fully convolutional restorer maps each output pixel from a window of input pixels (its receptive
field, radius r). Running it on overlapping tiles and keeping each tile's centre, the part at least
``overlap`` pixels from the tile's border, gives the untiled output when ``overlap >= r`` (DnCNN-20:
r = 20; other nets: a deeper net needs a larger overlap), up to float rounding of the convolution
algorithm chosen per size. Peak memory is that of one tile plus the output image.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

__all__ = ["tiled", "tile_grid", "estimate_bytes", "available_bytes", "check_fits"]


def tile_grid(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``size`` pixels: ``(start, stop, keep_start, keep_stop)`` in input pixels.

    Tiles are ``tile`` long (the last one aligned to the border), step ``tile - 2 * overlap``; each keeps
    [keep_start, keep_stop), the pixels at least ``overlap`` from an inner tile border; kept ranges
    partition [0, size).
    """
    if size <= tile:
        return [(0, size, 0, size)]
    step = tile - 2 * overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    out = []
    for i, s in enumerate(starts):
        keep0 = 0 if i == 0 else out[-1][3]
        keep1 = size if i == len(starts) - 1 else s + tile - overlap
        out.append((s, s + tile, keep0, keep1))
    return out


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int = 32) -> torch.Tensor:
    """``fn(x)`` computed on overlapping ``tile`` x ``tile`` tiles (module doc).

    Args:
        fn: a translation-equivariant image-to-image map (B, C, h, w) -> (B, C', s*h, s*w), s an integer
            scale (1 for denoising, the SR factor for super-resolution), the same for every tile.
        x: (B, C, H, W) float input. tile: tile side in input pixels. overlap: pixels each tile shares with
            its neighbour on each side (>= the receptive-field radius for an exact result).
    Returns:
        (B, C', s*H, s*W), dtype and device of ``fn``'s output.
    Raises:
        ValueError: ``tile`` < 1, ``overlap`` < 0, ``2 * overlap >= tile``, or ``fn`` whose output is not
        an integer multiple of the tile size (a non-uniform scale).
    """
    if int(tile) != tile or tile < 1 or int(overlap) != overlap or overlap < 0:
        raise ValueError(f"tile {tile!r} must be an integer >= 1 and overlap {overlap!r} an integer >= 0")
    if 2 * overlap >= tile:
        raise ValueError(f"overlap {overlap} is too large for tile {tile}: need 2 * overlap < tile")
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return fn(x)
    out, scale = None, None
    for r0, r1, kr0, kr1 in tile_grid(H, tile, overlap):
        for c0, c1, kc0, kc1 in tile_grid(W, tile, overlap):
            y = fn(x[..., r0:r1, c0:c1])
            if out is None:
                scale = y.shape[-1] // (c1 - c0)
                out = y.new_empty(*y.shape[:-2], scale * H, scale * W)
            if y.shape[-2:] != (scale * (r1 - r0), scale * (c1 - c0)):
                raise ValueError(f"tiled(): a {r1 - r0}x{c1 - c0} tile gave a {tuple(y.shape[-2:])} output, "
                                 f"not {scale}x its size: fn must scale every tile alike")
            out[..., scale * kr0:scale * kr1, scale * kc0:scale * kc1] = \
                y[..., scale * (kr0 - r0):scale * (kr1 - r0), scale * (kc0 - c0):scale * (kc1 - c0)]
    return out


def estimate_bytes(model: nn.Module, shape: tuple[int, ...], scale: int = 1) -> int:
    """A rough peak of activation memory for ``model`` on an input of ``shape`` (B, C, H, W), in bytes:
    three float32 maps of its widest layer at the input resolution plus input and ``scale``-times output."""
    b, c, h, w = shape
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)] or [c]
    return 4 * b * h * w * (3 * max(widths) + c + c * scale * scale)


def available_bytes() -> int | None:
    """Memory this process can still allocate (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(model: nn.Module, shape: tuple[int, ...], what: str, tile: int = 0, scale: int = 1) -> None:
    """Raise before running ``model`` on ``shape`` when its estimated memory (:func:`estimate_bytes`, of
    one ``tile`` when tiling, plus the full output) exceeds what the machine has available.

    Raises:
        ValueError: too large; the estimate, the available memory and the tile size that would fit are named.
    """
    avail = available_bytes()
    if avail is None:
        return
    b, c, h, w = shape
    th, tw = (min(h, tile), min(w, tile)) if tile else (h, w)
    need = estimate_bytes(model, (b, c, th, tw), scale) + 4 * b * c * scale * scale * h * w
    if need > avail:
        gib = 2 ** 30
        how = "a smaller --tile" if tile else "tiling (--tile 1024)"
        raise ValueError(f"{what} ({h}x{w} px) needs about {need / gib:.1f} GiB"
                         f"{f' with {tile} px tiles' if tile else ''}, {avail / gib:.1f} GiB available: use {how}")
