"""Training datasets of clean patches: an image folder, and scikit-image's bundled photographs
(the embedded default that needs no download)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from dynprune.hookspecs import hookimpl
from dynprune.imageio import as_float, read_folder, to_channels

__all__ = ["PatchDataset", "PairedFolder", "crop_augment", "image_folder", "skimage_photos", "SKIMAGE_TRAIN", "SKIMAGE_TEST",
           "load_skimage"]

SKIMAGE_TRAIN = ("astronaut", "chelsea", "coffee", "rocket", "moon", "brick", "gravel", "grass",
                 "immunohistochemistry", "hubble_deep_field")
SKIMAGE_TEST = ("camera", "coins")


def split_indices(n: int, fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """(held-out, kept) sorted indices of ``n`` items: ``fraction`` of them (at least one) set aside by a
    permutation seeded with ``seed``.

    Raises:
        ValueError: nothing would be left to train on (the counts named).
    """
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(f"a validation fraction of {fraction:g} sets {k} of the {n} training {what} aside and "
                         "leaves none to train on: lower validation.fraction or give validation.dataset")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:k]), sorted(order[k:])


class PatchDataset(Dataset):
    """Random square patches with the 8 flip/rotation modes of DnCNN's augmentation.

    Item i of epoch e is a pure function of (seed, e, i), so runs are reproducible for any
    worker count. ``len = len(images) * patches_per_image``.

    Args:
        images: list of (C, H, W) float32 tensors in [0, 1], or uint8 ones (``dynprune.imageio.compact``:
            8-bit images at a quarter of the memory; each patch is converted to float32 as it is cut).
        patch_size: side in pixels.
    Raises:
        ValueError: no image, or an image smaller than ``patch_size`` (named by index).
    """

    def __init__(self, images: Sequence[torch.Tensor], patch_size: int = 40, patches_per_image: int = 64,
                 augment: bool = True, seed: int = 0, names: Sequence[str] | None = None):
        if not images:
            raise ValueError("PatchDataset needs at least one image")
        for k, im in enumerate(images):
            if min(im.shape[-2:]) < patch_size:
                name = names[k] if names else f"#{k}"
                raise ValueError(f"image {name} of size {tuple(im.shape[-2:])} is smaller than patch_size={patch_size}")
        self.images, self.patch, self.per_image = list(images), int(patch_size), int(patches_per_image)
        self.augment, self.seed, self.epoch = augment, int(seed), 0
        self.names = list(names) if names else [f"#{k}" for k in range(len(self.images))]

    def split(self, fraction: float, seed: int = 0) -> tuple["PatchDataset", list[tuple[str, torch.Tensor]]]:
        """Set ``fraction`` of the images aside (at least one; seeded choice): (a PatchDataset of the others,
        [(name, image (C, H, W) float32)] of the held-out ones, in name order).

        Raises:
            ValueError: no image would be left for training (the counts named).
        """
        held, kept = split_indices(len(self.images), fraction, seed, "images")
        train = PatchDataset([self.images[i] for i in kept], self.patch, self.per_image, self.augment, self.seed,
                             [self.names[i] for i in kept])
        return train, sorted(((self.names[i], as_float(self.images[i])) for i in held), key=lambda t: t[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images) * self.per_image

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        return as_float(crop_augment([self.images[i // self.per_image]], self.patch, g, self.augment)[0])


def crop_augment(images: Sequence[torch.Tensor], patch: int, g: torch.Generator, augment: bool,
                 scales: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Aligned random crops of (C, H_k, W_k) images whose sizes are ``scales[k]`` times the first's: a
    ``patch`` square of the first at (y, x) and the ``scales[k] * patch`` square at (s y, s x) of the others,
    then one of DnCNN's 8 flip/rotation modes for all (``augment``). Draws y, x, mode from ``g`` in that order."""
    scales = scales or [1] * len(images)
    h, w = images[0].shape[-2:]
    y = int(torch.randint(0, h - patch + 1, (1,), generator=g))
    x = int(torch.randint(0, w - patch + 1, (1,), generator=g))
    out = [im[:, s * y:s * (y + patch), s * x:s * (x + patch)] for im, s in zip(images, scales)]
    if augment:
        mode = int(torch.randint(0, 8, (1,), generator=g))
        out = [torch.rot90(p, mode % 4, dims=(1, 2)) for p in out]
        if mode >= 4:
            out = [p.flip(2) for p in out]
    return [p.contiguous() for p in out]


def image_folder(root: str, channels: int = 1, patch_size: int = 40, patches_per_image: int = 64,
                 augment: bool = True, seed: int = 0, exclude: Sequence[str] = ()) -> PatchDataset:
    """Patches from every image in ``root`` (corrupt files skipped and counted, see ``read_folder``),
    except file names matching an fnmatch pattern in ``exclude`` (held-out test images). 8-bit images are
    held as uint8: the memory bound per process is H x W x C bytes per image (about 8.3 MB for a DIV2K image
    of 2040 x 1356 x 3, 6.6 GB for its 800), shared by DataLoader workers (forked, never written).

    Raises:
        ValueError: nothing left after ``exclude``.
    """
    import fnmatch

    files, images = read_folder(root, channels, compact_8bit=True)
    keep = [k for k, f in enumerate(files) if not any(fnmatch.fnmatchcase(f.name, p) for p in exclude)]
    if not keep:
        raise ValueError(f"exclude={list(exclude)} removes every image of {root!r}")
    files, images = [files[k] for k in keep], [images[k] for k in keep]
    return PatchDataset(images, patch_size, patches_per_image, augment, seed, [f.name for f in files])


def load_skimage(names: Sequence[str], channels: int = 1) -> list[torch.Tensor]:
    """scikit-image's bundled sample photographs as (C, H, W) float32 in [0, 1].

    Raises:
        ValueError: a name that is not a bundled sample (the accepted names are listed).
    """
    import skimage.data as skd
    from skimage.util import img_as_float32

    out = []
    for name in names:
        if name not in SKIMAGE_TRAIN + SKIMAGE_TEST:
            raise ValueError(f"unknown scikit-image sample {name!r}; accepted: {', '.join(SKIMAGE_TRAIN + SKIMAGE_TEST)}")
        arr = torch.from_numpy(img_as_float32(getattr(skd, name)()))
        t = arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1)
        out.append(to_channels(t.contiguous(), channels, name))
    return out


def skimage_photos(names: Sequence[str] = SKIMAGE_TRAIN, channels: int = 1, patch_size: int = 40,
                   patches_per_image: int = 64, augment: bool = True, seed: int = 0) -> PatchDataset:
    """Patches from scikit-image's bundled photographs (no download; the embedded default)."""
    return PatchDataset(load_skimage(names, channels), patch_size, patches_per_image, augment, seed, list(names))


class PairedFolder(Dataset):
    """Degraded/clean image pairs from two folders matched by file name (:func:`dynprune.imageio.read_pairs`).

    Without ``patch_size`` (evaluation, validation): item i is ``(name, degraded (C, h, w), clean (C, s h,
    s w))`` float32 in [0, 1], the whole pair. With ``patch_size`` (training): ``len = pairs *
    patches_per_image`` items ``(degraded patch (C, p, p), clean patch (C, s p, s p))``, aligned random crops
    with the 8 flip/rotation modes (:func:`crop_augment`), item i of epoch e a pure function of (seed, e, i).

    Args:
        degraded, clean: the two folders. channels: convert both to 1 or 3 channels (None: as stored).
        scale: clean size / degraded size (an SR pair's factor; 1 for restoration).
    Raises:
        ValueError (from read_pairs): unmatched names (the first ones listed) or sizes that do not fit (each
        pair and its sizes named); a pair smaller than ``patch_size``.
    """

    def __init__(self, degraded: str, clean: str, channels: int | None = None, patch_size: int = 0,
                 patches_per_image: int = 64, augment: bool = True, seed: int = 0, scale: int = 1,
                 items: Sequence | None = None):
        from dynprune.imageio import read_pairs

        self.folders = (degraded, clean)
        self.items = list(items) if items is not None else read_pairs(degraded, clean, channels, scale)
        self.patch, self.per_image, self.augment = int(patch_size), int(patches_per_image), augment
        self.seed, self.scale, self.epoch, self.channels = int(seed), int(scale), 0, channels
        small = [f"{n} {tuple(d.shape[-2:])}" for n, d, _ in self.items if self.patch and min(d.shape[-2:]) < self.patch]
        if small:
            raise ValueError(f"degraded images smaller than patch_size={self.patch}: {', '.join(small[:5])}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items) * (self.per_image if self.patch else 1)

    def __getitem__(self, i: int):
        if not self.patch:
            return self.items[i]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        _, degraded, clean = self.items[i // self.per_image]
        d, c = crop_augment([degraded, clean], self.patch, g, self.augment, [1, self.scale])
        return d, c

    def split(self, fraction: float, seed: int = 0) -> tuple["PairedFolder", list]:
        """Set ``fraction`` of the pairs aside (at least one, seeded): (the others as a PairedFolder of the same
        settings, the held-out ``(name, degraded, clean)`` items in name order).

        Raises:
            ValueError: no pair would be left for training (the counts named).
        """
        held, kept = split_indices(len(self.items), fraction, seed, "pairs")
        rest = PairedFolder(*self.folders, self.channels, self.patch, self.per_image, self.augment, self.seed,
                            self.scale, items=[self.items[i] for i in kept])
        return rest, sorted((self.items[i] for i in held), key=lambda t: t[0])


@hookimpl
def dynprune_register_datasets(register):
    register("image_folder", image_folder, "random patches from a folder of images")
    register("skimage_photos", skimage_photos, "scikit-image's bundled photographs (embedded default)")
    register("paired_folder", PairedFolder, "degraded/clean pairs matched by name: real pairs to train "
             "(patch_size) or evaluate on")
