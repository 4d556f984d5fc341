"""Reading and writing images as float32 tensors in [0, 1]."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTS", "list_images", "read_image", "read_folder", "compact", "as_float", "write_image", "to_channels", "read_pairs"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
log = logging.getLogger(__name__)


def list_images(root: str | Path) -> list[Path]:
    """Image files directly in ``root``, sorted by name.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: it holds no image file (the accepted extensions are listed).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no image ({', '.join(IMAGE_EXTS)})")
    return files


def to_channels(img: torch.Tensor, channels: int, name: str = "image") -> torch.Tensor:
    """Convert (C, H, W) to ``channels`` (1 <-> 3 via BT.601 luma / replication).

    Raises:
        ValueError: a conversion that is not 1 <-> 3 (e.g. 2 or 4 channels to 1).
    """
    c = img.shape[0]
    if c == channels:
        return img
    if c == 4:
        img, c = img[:3], 3
        if channels == 3:
            return img
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)
        return (img * w).sum(0, keepdim=True)
    if c == 1 and channels == 3:
        return img.expand(3, -1, -1).clone()
    raise ValueError(f"{name} has {c} channels; cannot convert to {channels} (accepted: 1 or 3)")


# Pillow modes read through an RGB conversion: palette (its colours, not its indices), CMYK, YCbCr, LAB, HSV
_VIA_RGB = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _pixels(im: Image.Image, path: Path) -> np.ndarray:
    """The image's pixels as float32 (H, W[, C]) in [0, 1], by its storage type's documented range:
    1-bit {0, 1}; 8-bit / 255; 16-bit / 65535; 32-bit integer (Pillow's mode "I") / (2**31 - 1), negative
    values rejected; float (mode "F") as stored, which must lie in [0, 1]. Alpha channels are dropped."""
    if im.mode in _VIA_RGB:
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "LA":
        im = im.getchannel("L")
    arr = np.asarray(im)
    name = str(path)
    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        out = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif arr.dtype.kind in "iu":
        if arr.min() < 0:
            raise ValueError(f"image {name!r} (32-bit integer) has negative pixels (min {arr.min()}): "
                             "accepted are values in [0, 2**31 - 1]")
        out = (arr.astype(np.float64) / float(2 ** 31 - 1)).astype(np.float32)
    elif arr.dtype.kind == "f":
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"image {name!r} holds {int((~np.isfinite(out)).sum())} non-finite pixels (NaN/Inf)")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"image {name!r} is floating point with values in [{lo:g}, {hi:g}]: accepted are "
                             "float images in [0, 1] (scale it, or save it as 8/16-bit)")
    else:
        raise ValueError(f"image {name!r} has an unsupported pixel type {arr.dtype} (mode {im.mode!r})")
    if out.ndim == 3 and out.shape[2] in (2, 4):  # drop alpha
        out = out[..., : out.shape[2] - 1]
    return out


def max_pixels() -> int:
    """The most pixels an image may have to be read: ``DYNPRUNE_MAX_PIXELS``, else 178,956,970 (PIL's
    decompression-bomb guard, 2^28 / 1.5: e.g. 16384 x 10922).

    Raises:
        ValueError: ``DYNPRUNE_MAX_PIXELS`` is not a positive integer.
    """
    raw = os.environ.get("DYNPRUNE_MAX_PIXELS", "").strip()
    if not raw:
        return 178_956_970
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"DYNPRUNE_MAX_PIXELS={raw!r} must be a positive integer (a pixel count)")
    return int(raw)


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an image as float32 (C, H, W) in [0, 1] (8/16/32-bit integer, 1-bit, float, palette; see
    :func:`_pixels` for each type's range; palette images give their colours).

    Args:
        channels: None keeps the file's channels; 1 or 3 converts.
    Raises:
        FileNotFoundError: missing file. ValueError: unreadable/corrupt image, non-finite or out-of-range
        float pixels, negative integer pixels, an unsupported pixel type, more pixels than ``max_pixels()``
        (each names the file).
    """
    path = Path(path)
    limit, guard = max_pixels(), Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own guard, replaced by the check below (before decoding)
    try:
        with Image.open(path) as im:
            if im.width * im.height > limit:
                raise ValueError(f"image {str(path)!r} has {im.width * im.height} pixels ({im.width}x{im.height}), more "
                                 f"than the limit of {limit} (a guard against decompression bombs): set "
                                 f"DYNPRUNE_MAX_PIXELS to a larger count to read it")
            im.load()
            arr = _pixels(im, path)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = guard
    t = torch.from_numpy(arr)
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    return to_channels(t.contiguous(), channels, str(path)) if channels else t


def compact(img: torch.Tensor) -> torch.Tensor:
    """``img`` (float32 in [0, 1]) as uint8 when that is exact (an 8-bit image: ``img == u8.float() / 255``
    bit for bit), a quarter of the memory; else ``img`` itself. :func:`as_float` undoes it exactly."""
    u8 = img.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return u8 if torch.equal(as_float(u8), img) else img


def as_float(img: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1] of an image stored by :func:`compact` (uint8 / 255, the division 8-bit files are
    read with), or the float image itself."""
    return img.float().div_(255) if img.dtype == torch.uint8 else img


def read_folder(root: str | Path, channels: int | None = None, compact_8bit: bool = False
                ) -> tuple[list[Path], list[torch.Tensor]]:
    """Read every image of a folder (sorted). Corrupt files are skipped with a warning naming each
    and the count; the call fails only when nothing readable remains. ``compact_8bit`` keeps each image
    that is exactly 8-bit as uint8 (:func:`compact`: a quarter of the memory, converted as it is read,
    so the folder never sits in memory as float32).

    Raises:
        FileNotFoundError / ValueError: as :func:`list_images`; ValueError if every file is corrupt.
    """
    files, images, bad = [], [], []
    for p in list_images(root):
        try:
            img = read_image(p, channels)
            images.append(compact(img) if compact_8bit else img)
            files.append(p)
        except ValueError as err:
            bad.append(f"{p.name} ({err})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {str(root)!r}: {'; '.join(bad)}", stacklevel=2)
    if not images:
        raise ValueError(f"image folder {str(root)!r} holds no readable image: {'; '.join(bad)}")
    return files, images


def read_pairs(degraded: str | Path, clean: str | Path, channels: int | None = None, scale: int = 1
               ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Degraded/clean image pairs from two folders, matched by file stem; a degraded stem like SOTS's
    ``0001_0.8_0.2`` also matches clean ``0001`` (the part before the first ``_``).

    Returns:
        ``(name, degraded (C, H, W), clean (C, scale H, scale W))`` float32 in [0, 1], in the degraded
        folder's order.
    Raises:
        FileNotFoundError / ValueError: missing or empty folders; ValueError naming the unmatched files
        (the first 10 of each side and their counts) and every pair whose sizes do not fit.
    """
    deg, cln = list_images(degraded), list_images(clean)
    by_stem = {p.stem: p for p in cln}
    pairs, unmatched = [], []
    for p in deg:
        match = by_stem.get(p.stem) or by_stem.get(p.stem.split("_")[0])
        (pairs.append((p, match)) if match else unmatched.append(p.name))
    used = {m for _, m in pairs}
    orphans = [p.name for p in cln if p not in used]
    if unmatched or orphans:
        def few(names):
            return f"{names[:10]}{f' and {len(names) - 10} more' if len(names) > 10 else ''} ({len(names)})"

        raise ValueError(f"unmatched files between {str(degraded)!r} and {str(clean)!r} (pairs are matched by file "
                         f"name): degraded without clean {few(unmatched)}, clean without degraded {few(orphans)}")
    items, bad = [], []
    for d, c in pairs:
        a, b = read_image(d, channels), read_image(c, channels)
        if b.shape != (a.shape[0], a.shape[1] * scale, a.shape[2] * scale):
            bad.append(f"{d.name} {tuple(a.shape)} vs {c.name} {tuple(b.shape)}")
        items.append((d.stem, a, b))
    if bad:
        what = "differ in size" if scale == 1 else f"do not differ by the scale {scale}"
        raise ValueError(f"paired images {what}: {'; '.join(bad)}")
    return items


def write_image(img: torch.Tensor, path: str | Path, replace: bool = True, root: str | Path | None = None) -> None:
    """Write (C, H, W) float in [0, 1] (clipped) as an 8-bit image (format from the suffix), by
    :func:`dynprune.outputs.write_output` (never through a link; ``replace=False``: created exclusively;
    ``root``: the output folder it must stay in).

    Raises:
        ValueError: a suffix PIL cannot write, or :func:`~dynprune.outputs.write_output`'s refusals.
    """
    from .outputs import write_output

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write image {str(path)!r}: unknown suffix (use .png)")
    arr = (img.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    write_output(path, lambda f: Image.fromarray(arr).save(f, format=fmt), replace, root)
