"""Tiled inference for images of any size, and a memory check before a run that cannot fit.

A fully convolutional restorer maps each output pixel from a window of input pixels (its receptive
field, radius r). Running it on overlapping tiles and keeping each tile's centre, the part at least
``overlap`` pixels from the tile's border, gives the untiled output when ``overlap >= r`` (DnCNN-20:
r = 20), up to float rounding of the convolution algorithm chosen per size. Peak memory is that of one
tile plus the output image.

That holds only for a network that is bounded (each output pixel sees a window of finite radius) and
shift-equivariant (shifting the input by one pixel shifts the output). :func:`probe_tiling` measures both
on the model itself: the radius from the input gradient of the centre output pixel, equivariance from a
one-pixel shift. A network with whole-image statistics (InstanceNorm, GroupNorm, global pooling, channel
attention, spatial attention) or a window wider than the probe is unbounded; one that downsamples (strided
layers, a multi-scale pyramid) is not shift-equivariant. Tiling either changes the output: ``restore``
refuses it unless asked (``--tile-approximate``), and then states the difference measured on the image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["tiled", "tile_grid", "estimate_bytes", "available_bytes", "check_fits", "TilingProbe", "probe_tiling",
           "whole_image_layers", "tile_difference", "tile_overlap"]

# layers whose output at a pixel depends on statistics of the whole image (or of a window as large as it)
WHOLE_IMAGE_TYPES = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.modules.pooling._AdaptiveAvgPoolNd,
                     nn.modules.pooling._AdaptiveMaxPoolNd, nn.MultiheadAttention)


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


def check_fits(model: nn.Module, shape: tuple[int, ...], what: str, tile: int = 0, scale: int = 1,
               how: str | None = None) -> None:
    """Raise before running ``model`` on ``shape`` when its estimated memory (:func:`estimate_bytes`, of
    one ``tile`` when tiling, plus the full output) exceeds what the machine has available. ``how``: the
    remedy to name when not tiling (default: ``tiling (--tile 1024)``).

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
        how = "a smaller --tile" if tile else (how or "tiling (--tile 1024)")
        raise ValueError(f"{what} ({h}x{w} px) needs about {need / gib:.1f} GiB"
                         f"{f' with {tile} px tiles' if tile else ''}, {avail / gib:.1f} GiB available: use {how}")


def whole_image_layers(model: nn.Module) -> list[str]:
    """Names (with type) of ``model``'s layers that pool statistics over the whole image: InstanceNorm,
    GroupNorm, adaptive (global) pooling, multi-head attention."""
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules() if isinstance(m, WHOLE_IMAGE_TYPES)]


@dataclass
class TilingProbe:
    """What tiling does to a model (:func:`probe_tiling`).

    Attributes:
        radius: receptive-field radius in input pixels (the smallest exact ``overlap``), or None when the
            output depends on more than the largest probe (``probe`` pixels) sees: unbounded.
        shift_equivariant: shifting the input by one pixel shifts the output (by ``scale`` pixels); False
            without a probe (a model with whole-image layers is not probed).
        reasons: why tiling is not exact ([] = exact with ``overlap >= radius``), naming the layers found.
        probe: side of the largest probe image used, in pixels.
    """

    radius: int | None
    shift_equivariant: bool
    reasons: list[str]
    probe: int

    @property
    def exact(self) -> bool:
        return not self.reasons

    def min_tile(self) -> int:
        """The smallest exact tile side (``2 * radius + 1``). Raises ValueError when tiling is not exact."""
        if not self.exact:
            raise ValueError("tiling this model is not exact: " + "; ".join(self.reasons))
        return 2 * self.radius + 1


def _gradient_extent(model: nn.Module, channels: int, side: int, scale: int) -> tuple[int, bool]:
    """(radius, touches the border) of the input gradient of the centre output pixel on a random
    (2, channels, side, side) input."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, side, side, generator=g).requires_grad_(True)
    y = model(x)
    cy, cx = y.shape[-2] // 2, y.shape[-1] // 2
    y[..., cy, cx].sum().backward()
    hit = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
    if len(rows) == 0:
        return 0, False
    oy, ox = cy // scale, cx // scale
    radius = int(max(oy - rows.min(), rows.max() - oy, ox - cols.min(), cols.max() - ox))
    edge = bool(rows.min() == 0 or cols.min() == 0 or rows.max() == side - 1 or cols.max() == side - 1)
    return radius, edge


def probe_tiling(model: nn.Module, channels: int, scale: int = 1, max_probe: int = 256) -> TilingProbe:
    """Measure whether tiling ``model`` is exact (module doc): the receptive-field radius by the input
    gradient of the centre output pixel on random probes of 64, 128, ... ``max_probe`` pixels (until the
    gradient stops short of the border), and shift-equivariance by comparing the outputs of a probe and of
    the probe shifted by one pixel, away from the borders. ``model`` must be differentiable (the dynamic
    model, not a deployed one); its mode and gradients are left as they were.

    Args:
        model: an image-to-image module, (B, channels, h, w) -> (B, C', scale*h, scale*w) float32.
        channels: input channels. scale: the output's scale (SR factor; 1 for restoration).
    Returns:
        A :class:`TilingProbe`.
    """
    layers = whole_image_layers(model)
    if layers:  # unbounded by construction: no probe needed
        return TilingProbe(None, False, [_whole_image_reason(layers, 0)], 0)
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        side, radius, edge = 64, 0, True
        while edge and side <= max_probe:
            with torch.inference_mode(False), torch.enable_grad():  # callable from inference code
                radius, edge = _gradient_extent(model, channels, side, scale)
            side *= 2
        side //= 2
        with torch.no_grad():  # compare where neither output sees a border (a margin of the radius)
            margin = side // 4 if edge else radius + 2
            n = side if edge else max(64, 2 * margin + 16)
            x = torch.rand(1, channels, n + 1, n + 1, generator=torch.Generator().manual_seed(1))
            a, b = model(x[..., :-1, :-1]), model(x[..., 1:, 1:])
            m = scale * margin
            inner_a, inner_b = a[..., m + scale:-m, m + scale:-m], b[..., m:-m - scale, m:-m - scale]
            tol = 1e-4 * max(1.0, float(a.abs().max()))
            equivariant = bool(inner_a.numel() and (inner_a - inner_b).abs().max() <= tol)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    reasons = []
    if edge:
        reasons.append(_whole_image_reason([], side))
    if not equivariant:
        strided = [n for n, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd))
                   and max(_pair(m.stride)) > 1]
        reasons.append("a one-pixel shift of the input does not shift its output (it downsamples"
                       + (f": strided {', '.join(strided[:3])})" if strided else ", e.g. an image pyramid)"))
    return TilingProbe(None if edge else radius, equivariant, reasons, side)


def _whole_image_reason(layers: list[str], side: int) -> str:
    return "its output depends on the whole image" + (
        f" (whole-image statistics in {', '.join(layers[:3])}{f' and {len(layers) - 3} more' if len(layers) > 3 else ''})"
        if layers else f" (each output pixel sees more than the {side}-pixel probe)")


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def tile_difference(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int) -> dict:
    """How much tiling changes ``fn`` on ``x`` (B, C, H, W) in [0, 1]: ``fn`` run whole and in ``tile`` x
    ``tile`` tiles on a centre crop of ``x`` of ``tile + 2 * overlap + 64`` pixels a side (or ``x``, if
    smaller), so at least one seam falls inside.

    Returns:
        {"crop": (h, w), "max_abs": largest difference (in [0, 1] units), "psnr": dB of the tiled output
        against the whole one (inf when identical)}.
    """
    from .metrics import psnr

    side = tile + 2 * overlap + 64
    h, w = min(side, x.shape[-2]), min(side, x.shape[-1])
    r0, c0 = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    crop = x[..., r0:r0 + h, c0:c0 + w]
    whole, tiles = fn(crop).clamp(0, 1), tiled(fn, crop, tile, overlap).clamp(0, 1)
    return {"crop": (h, w), "max_abs": float((whole - tiles).abs().max()), "psnr": float(psnr(tiles[0], whole[0]))}


def tile_overlap(probe: TilingProbe, tile: int, overlap: int | None = None, approximate: bool = False) -> int:
    """The overlap to tile with, checked against what :func:`probe_tiling` measured.

    Args:
        probe: the model's :class:`TilingProbe`. tile: tile side (px). overlap: requested overlap (px); None:
            the receptive-field radius (exact), or min(32, tile / 4) for a model that cannot be tiled exactly.
        approximate: accept a model whose output tiling changes (``--tile-approximate``).
    Returns:
        The overlap in pixels.
    Raises:
        ValueError: the model cannot be tiled exactly and ``approximate`` is false (the reasons named); an
            overlap below the receptive-field radius (the smallest exact one named); a tile too small for
            the overlap (the smallest exact tile named).
    """
    if not probe.exact:
        if not approximate:
            raise ValueError("tiling this model would change its output: " + "; ".join(probe.reasons)
                             + ". Run whole images, or pass --tile-approximate to tile anyway")
        overlap = min(32, tile // 4) if overlap is None else overlap
        if 2 * overlap >= tile:
            raise ValueError(f"--tile {tile} is too small for --tile-overlap {overlap}: need 2 * overlap < tile")
        return overlap
    r = probe.radius
    overlap = r if overlap is None else overlap
    if overlap < r:
        raise ValueError(f"--tile-overlap {overlap} is below this model's receptive-field radius of {r} px: the "
                         f"output would change at tile seams; the smallest exact overlap is {r}")
    if 2 * overlap >= tile:
        raise ValueError(f"--tile {tile} is too small for an overlap of {overlap} px (this model's receptive-field "
                         f"radius is {r} px): the smallest exact tile is {2 * overlap + 1}")
    return overlap
