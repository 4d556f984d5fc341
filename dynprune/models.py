"""The model factory and loaders: a ClassPruning model from a config (:func:`build_model`), from a training
checkpoint (:func:`load_trained`), or whatever a dynprune file holds (:func:`load`). Nothing here imports
a training method, so deployment and evaluation build models without the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_finite, load_file, load_strict
from .classifier import create_classifier
from .classpruning import ClassPruning
from .config import TrainConfig
from .convert import convert
from .layers import check_pinned, pin_from_state
from .registry import create

__all__ = ["build_model", "load_trained", "load"]


def _arch(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    return dict(getattr(model, "arch", None) or cfg.model.kwargs)


def build_model(cfg: TrainConfig, arch: dict[str, Any] | None = None, in_channels: int | None = None) -> ClassPruning:
    """Backbone from the registry (pretrained ``weights`` if given, else ``arch``), converted, plus classifier."""
    if arch is not None:
        base = create("models", cfg.model.name, **arch)
    elif cfg.model.weights:
        base = create("models", cfg.model.name, weights=cfg.model.weights, **cfg.model.kwargs)
    else:
        base = create("models", cfg.model.name, **cfg.model.kwargs)
    c = cfg.convert
    restorer = convert(base, c.ratios, exclude=c.exclude, mask_grad=c.mask_grad, srste_decay=c.srste_decay,
                       pattern=c.pattern)
    restorer.arch = _arch(base, cfg)
    channels = in_channels or getattr(base, "in_channels", 1)
    classifier = create_classifier(cfg.classifier.name, channels, len(c.ratios), **cfg.classifier.kwargs)
    return ClassPruning(restorer, classifier)


def load_trained(path: str | Path, ckpt: dict | None = None) -> tuple[ClassPruning, TrainConfig, dict]:
    """Rebuild a trained ClassPruning model from a checkpoint (state_dict + config, no pickled modules);
    ``ckpt`` is the file's content when the caller has read it already (it is not read again).

    Raises:
        FileNotFoundError: missing file. ValueError: truncated/corrupt file, not a dynprune checkpoint,
        non-finite weights (the keys named), weights of another architecture (the mismatching keys named), or
        a pinned N:M order that is not a permutation per group.
    """
    ckpt = load_file(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{str(path)!r} is not a ClassPruning checkpoint (no 'model' + 'config' entries; "
                         f"{_what_it_is(ckpt)})")
    cfg = TrainConfig.model_validate(ckpt["config"])
    # the classifier's input channels: those of its first convolution (the backbone may not say, e.g. SR nets)
    channels = next((v.shape[1] for k, v in ckpt["model"].items() if k.startswith("classifier.")
                     and getattr(v, "dim", lambda: 0)() == 4), None) if isinstance(ckpt["model"], dict) else None
    if isinstance(ckpt["model"], dict):
        check_finite(ckpt["model"], f"checkpoint {str(path)!r}")
    model = build_model(cfg, arch=ckpt.get("arch", {}), in_channels=channels)
    if isinstance(ckpt["model"], dict):
        pin_from_state(model, ckpt["model"])  # a PnG restorer's fixed orderings
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:  # name the keys (older checkpoints without routing buffers load above)
        load_strict(model, ckpt["model"], f"checkpoint {str(path)!r} (architecture of its config)")
        raise ValueError(f"checkpoint {str(path)!r} does not fit its config: {str(err).splitlines()[0]}") from err
    try:
        check_pinned(model)
    except ValueError as err:
        raise ValueError(f"checkpoint {str(path)!r} is damaged or crafted: {err}") from None
    model.eval()
    return model, cfg, ckpt


def _what_it_is(obj) -> str:
    if isinstance(obj, dict) and "model" in obj and "arch" in obj:
        return "it holds a dense network's weights: build it with dynprune.create_model(name, **arch) and load them"
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return (f"it is a bare state_dict (first keys {list(obj)[:3]}): load it with "
                "dynprune.create_model(name, weights=path)")
    return f"it holds a {type(obj).__name__}"


def load(path: str | Path) -> nn.Module:
    """The trained model a dynprune file holds, in eval mode, in one line: a training checkpoint (``train``'s
    ``last.pt``, ``docs/checkpoints/*.pt``) gives its :class:`ClassPruning` model; a deployed artifact
    (``dynprune deploy``) gives the deployed model. Input/output as the model's (images in [0, 1]).

    >>> model = dynprune.load("docs/checkpoints/cp_dncnn_b.pt")            # doctest: +SKIP
    >>> fast = dynprune.deploy(model)                                         # doctest: +SKIP

    Raises:
        FileNotFoundError: missing file. ValueError: truncated/corrupt file, or a file that is not a ClassPruning
        checkpoint nor a deployed model (what it holds instead is named), or weights that do not fit its config.
    """
    from .deploy.artifact import is_deployed_file, load_deployed

    obj = load_file(path)
    if is_deployed_file(obj):
        return load_deployed(path, obj)
    return load_trained(path, obj)[0]
