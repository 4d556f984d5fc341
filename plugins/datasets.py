"""Training datasets of clean patches: an image folder, and scikit-image's bundled photographs
(the embedded default that needs no download)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from dynprune.hookspecs import hookimpl
from dynprune.imageio import read_folder, to_channels

__all__ = ["PatchDataset", "PairedFolder", "image_folder", "skimage_photos", "SKIMAGE_TRAIN", "SKIMAGE_TEST",
           "load_skimage"]

SKIMAGE_TRAIN = ("astronaut", "chelsea", "coffee", "rocket", "moon", "brick", "gravel", "grass",
                 "immunohistochemistry", "hubble_deep_field")
SKIMAGE_TEST = ("camera", "coins")


class PatchDataset(Dataset):
    """Random square patches with the 8 flip/rotation modes of DnCNN's augmentation.

    Item i of epoch e is a pure function of (seed, e, i), so runs are reproducible for any
    worker count. ``len = len(images) * patches_per_image``.

    Args:
        images: list of (C, H, W) float32 tensors in [0, 1].
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images) * self.per_image

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        im = self.images[i // self.per_image]
        h, w = im.shape[-2:]
        y = int(torch.randint(0, h - self.patch + 1, (1,), generator=g))
        x = int(torch.randint(0, w - self.patch + 1, (1,), generator=g))
        p = im[:, y:y + self.patch, x:x + self.patch]
        if self.augment:
            mode = int(torch.randint(0, 8, (1,), generator=g))
            p = torch.rot90(p, mode % 4, dims=(1, 2))
            if mode >= 4:
                p = p.flip(2)
        return p.contiguous()


def image_folder(root: str, channels: int = 1, patch_size: int = 40, patches_per_image: int = 64,
                 augment: bool = True, seed: int = 0, exclude: Sequence[str] = ()) -> PatchDataset:
    """Patches from every image in ``root`` (corrupt files skipped and counted, see ``read_folder``),
    except file names matching an fnmatch pattern in ``exclude`` (held-out test images).

    Raises:
        ValueError: nothing left after ``exclude``.
    """
    import fnmatch

    files, images = read_folder(root, channels)
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
    """Degraded/clean image pairs from two folders (:func:`dynprune.imageio.read_pairs`) as a Dataset of
    ``(name, degraded (C, H, W), clean (C, H, W))`` float32 in [0, 1]."""

    def __init__(self, degraded: str, clean: str, channels: int | None = None):
        from dynprune.imageio import read_pairs

        self.items = read_pairs(degraded, clean, channels)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


@hookimpl
def dynprune_register_datasets(register):
    register("image_folder", image_folder, "random patches from a folder of images")
    register("skimage_photos", skimage_photos, "scikit-image's bundled photographs (embedded default)")
    register("paired_folder", PairedFolder, "degraded/clean pairs matched by name (evaluation on real pairs)")
