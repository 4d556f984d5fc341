"""Sub-image (patch) pipeline: split an image into overlapping patches, classify each, run every class
as one batch, merge with overlap averaging (ClassSR's test-time decomposition, done batched and with
full coverage: unlike ClassSR's ``crop_cpu``, the right and bottom borders are kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .branch import route

__all__ = ["patch_starts", "split_patches", "merge_patches", "restore_by_patches", "PatchResult"]


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride`` pixels, plus a last patch flush with the border,
    so that every pixel is covered. ``size >= patch`` is required.

    Raises:
        ValueError: patch < 1, stride < 1, stride > patch (pixels would be skipped), or size < patch.
    """
    if patch < 1 or stride < 1:
        raise ValueError(f"patch ({patch}) and stride ({stride}) must be >= 1")
    if stride > patch:
        raise ValueError(f"stride {stride} is larger than the patch {patch}: pixels between patches would be skipped")
    if size < patch:
        raise ValueError(f"axis of {size} px is smaller than the patch {patch}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def split_patches(x: torch.Tensor, patch: int, stride: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(patches (N, C, patch, patch), [(top, left)] * N) of one image ``x`` (C, H, W), row-major."""
    ys, xs = patch_starts(x.shape[-2], patch, stride), patch_starts(x.shape[-1], patch, stride)
    boxes = [(y, xx) for y in ys for xx in xs]
    return torch.stack([x[:, y:y + patch, xx:xx + patch] for y, xx in boxes]), boxes


def merge_patches(outputs: torch.Tensor, boxes: list[tuple[int, int]], size: tuple[int, int], scale: int) -> torch.Tensor:
    """Average overlapping output patches (N, C, p*scale, p*scale) into one (C, H*scale, W*scale) image."""
    c, ps = outputs.shape[1], outputs.shape[-1]
    canvas = outputs.new_zeros(c, size[0] * scale, size[1] * scale)
    count = outputs.new_zeros(1, size[0] * scale, size[1] * scale)
    for out, (y, x) in zip(outputs, boxes):
        canvas[:, y * scale:y * scale + ps, x * scale:x * scale + ps] += out
        count[:, y * scale:y * scale + ps, x * scale:x * scale + ps] += 1
    return canvas / count


@dataclass
class PatchResult:
    """Output of :func:`restore_by_patches` for a batch of images."""

    output: torch.Tensor          # (B, C, H*scale, W*scale)
    branches: list[torch.Tensor]  # per image: int64 (N,) branch of each patch
    boxes: list[list[tuple[int, int]]]  # per image: (top, left) of each patch, input pixels
    padded: bool = False          # an image was smaller than one patch and was padded (reflect/replicate)


def restore_by_patches(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, patch: int = 32,
                       stride: int = 28, scale: int = 1,
                       classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       max_batch: int = 512) -> PatchResult:
    """Restore ``x`` (B, C, H, W) patch by patch: every class of patches runs as one batch (chunks of
    ``max_batch``) under its branch, and outputs are merged with overlap averaging. The output is exactly
    ``scale`` x the input size. An image smaller than one patch is padded (reflect where possible, else
    replicate) to the patch size and the output cropped back; ``PatchResult.padded`` says so.

    Args:
        model: maps (n, C, patch, patch) to (n, C', patch*scale, patch*scale); runs under ``use_branch``.
        classify: maps patches to int64 branch indices (n,); None runs every patch on the current branch.
    Raises:
        ValueError: stride > patch, stride/patch < 1, or a model output whose size is not patch*scale
            (the patch size is not compatible with the model's scale).
    """
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    patch_starts(max(patch, 1), patch, stride)  # validates patch/stride
    outs, all_branches, all_boxes, padded = [], [], [], False
    for img in x:
        h, w = img.shape[-2:]
        if h < patch or w < patch:
            padded = True
            ph, pw = max(0, patch - h), max(0, patch - w)
            mode = "reflect" if ph < h and pw < w else "replicate"
            img = F.pad(img.unsqueeze(0), (0, pw, 0, ph), mode=mode)[0]
        patches, boxes = split_patches(img, patch, stride)
        branches = (torch.cat([classify(patches[k:k + max_batch]) for k in range(0, len(patches), max_batch)])
                    if classify is not None else torch.zeros(len(patches), dtype=torch.long))
        results = []
        for k in range(0, len(patches), max_batch):
            chunk = patches[k:k + max_batch]
            res = route(model, chunk, branches[k:k + max_batch]) if classify is not None else model(chunk)
            if res.shape[-2:] != (patch * scale, patch * scale):
                raise ValueError(f"the model maps a {patch}x{patch} patch to {res.shape[-2]}x{res.shape[-1]}, "
                                 f"expected {patch * scale}x{patch * scale}: patch size {patch} is not compatible "
                                 f"with scale {scale}")
            results.append(res)
        merged = merge_patches(torch.cat(results), boxes, tuple(img.shape[-2:]), scale)
        outs.append(merged[:, : h * scale, : w * scale])
        all_branches.append(branches)
        all_boxes.append(boxes)
    return PatchResult(torch.stack(outs), all_branches, all_boxes, padded)
