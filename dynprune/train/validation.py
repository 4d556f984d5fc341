"""Held-out images for validation during training (``validation`` config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..imageio import as_float
from ..registry import create

__all__ = ["held_out", "center_crop", "record_split", "routed_metrics", "routed_metric_names"]


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` crop of a (C, H, W) image (the whole image when ``size`` is 0 or not
    smaller than a side)."""
    h, w = img.shape[-2:]
    if not size:
        return img
    th, tw = min(size, h), min(size, w)
    y, x = (h - th) // 2, (w - tw) // 2
    return img[..., y:y + th, x:x + tw].contiguous()


def held_out(cfg, dataset, out: Path | None):
    """The validation images of a run, and the training dataset that remains.

    ``cfg.validation.dataset`` names a registered dataset: one with ``items`` of ``(name, degraded, clean)``
    (e.g. ``paired_folder``: real pairs) or ``images`` (clean, degraded synthetically at validation). Else a
    ``fraction`` of the training images is set aside by ``dataset.split(fraction, seed)``, and their names are
    written to ``out/validation.json`` (unless ``out`` is None: the caller records them). Each image is centre-cropped to ``crop`` (pixels; degraded and clean
    alike) and at most ``max_images`` are kept.

    Returns:
        (training dataset, [(name, clean (C, H, W))], {name: degraded (C, H, W)} or None for synthetic
        degradation). ([], None) when validation is off.
    Raises:
        ValueError: a training dataset that cannot set images aside; a validation split that leaves no
            training images; an empty validation dataset.
    """
    v = cfg.validation
    if not v.every:
        return dataset, [], None
    degraded = None
    if v.dataset is not None:
        ds = create("datasets", v.dataset.name, **v.dataset.kwargs)
        if hasattr(ds, "items"):
            images = [(name, clean) for name, _, clean in ds.items]
            degraded = {name: deg for name, deg, _ in ds.items}
        elif hasattr(ds, "images"):
            names = getattr(ds, "names", None) or [f"#{k}" for k in range(len(ds.images))]
            images = [(n, as_float(im)) for n, im in zip(names, ds.images)]
        else:
            raise ValueError(f"validation.dataset {v.dataset.name!r} has neither images nor (degraded, clean) items")
    else:
        if not hasattr(dataset, "split"):
            raise ValueError(f"dataset {cfg.dataset.name!r} cannot set images aside (no split()); give "
                             "validation.dataset instead of validation.fraction")
        dataset, images = dataset.split(v.fraction, cfg.seed)
        if images and len(images[0]) == 3:  # real pairs: (name, degraded, clean)
            degraded = {name: deg for name, deg, _ in images}
            images = [(name, clean) for name, _, clean in images]
        if out is not None:
            record_split(out, cfg, {"images": [n for n, _ in images]})
    if not images:
        raise ValueError(f"validation dataset {v.dataset.name if v.dataset else cfg.dataset.name!r} holds no image")
    images = [(n, center_crop(im, v.crop)) for n, im in images[: v.max_images]]
    if degraded is not None:
        degraded = {n: center_crop(degraded[n], v.crop) for n, _ in images}
    return dataset, images, degraded


def record_split(out: Path, cfg, names: dict) -> None:
    """Write ``out/validation.json``: the fraction, the seed and the held-out names (``names``)."""
    from ..outputs import write_text

    write_text(out / "validation.json", json.dumps({"fraction": cfg.validation.fraction, "seed": cfg.seed, **names},
                                                   indent=1) + "\n")


def routed_metrics(model, images, degraded, cfg, report=None) -> dict:
    """Validation metrics of a ClassPruning model (:func:`dynprune.evaluate.evaluate` on the held-out
    images): ``psnr_routed``, ``psnr_<ratio>`` per branch and ``psnr_input`` (dB, means over the
    degradation's levels, or over the real pairs), and ``route`` {ratio: images routed there}."""
    from ..evaluate import Condition, evaluate, level_conditions

    if degraded is not None:
        conditions = [Condition("pairs", degraded=degraded)]
    else:
        conditions = level_conditions(cfg.degradation.name, cfg.degradation.kwargs, cfg.seed)
    was = model.training
    try:
        result = evaluate(model, images, conditions, device=str(next(model.parameters()).device), report=report)
    finally:
        model.train(was)
    conds = list(result["conditions"].values())

    def mean(name):
        return sum(c["models"][name]["psnr"] for c in conds) / len(conds)

    out = {"psnr_routed": mean("routed"), "psnr_input": mean("degraded input")}
    out.update({f"psnr_{r}": mean(f"branch {r}") for r in result["ratios"]})
    out["route"] = {r: sum(c["histogram"][r] for c in conds) for r in result["ratios"]}
    return out


def routed_metric_names(ratios) -> list[str]:
    """The names :func:`routed_metrics` computes for a model of these branch ratios."""
    return ["psnr_routed", "psnr_input"] + [f"psnr_{r}" for r in ratios]
