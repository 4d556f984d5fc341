"""Deployed artifacts: a deployed ClassPruning model saved as a state_dict plus what rebuilds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import check_finite, load_file, save_atomic
from .api import PRECISIONS, _deploy
from .layer import SparseConv2d

__all__ = ["save_deployed", "load_deployed", "is_deployed_file", "DEPLOY_FORMAT"]

DEPLOY_FORMAT = "dynprune.deployed/1"


def save_deployed(model: nn.Module, path: str | Path, config: dict, arch: dict, run: dict | None = None) -> Path:
    """Write a deployed ClassPruning model as ``{"format", "config", "arch", "deploy", "model", "run"}``: its
    state_dict (packed branches included), the training config, the architecture, the deploy options
    (with every layer's backend per branch, so loading on another machine packs the same buffers) and the
    training checkpoint's ``run`` record (where its relative input paths were, for ``eval``'s dense
    reference); loads with ``weights_only=True``.

    Raises:
        ValueError: ``model`` was not made by :func:`~dynprune.deploy`.
    """
    opts = getattr(model, "deploy_options", None)
    if opts is None:
        raise ValueError(f"{type(model).__name__} was not made by dynprune.deploy()")
    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()}
    return save_atomic({"format": DEPLOY_FORMAT, "config": config, "arch": arch, "deploy": opts,
                        "model": model.state_dict(), "run": run}, path)


def is_deployed_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == DEPLOY_FORMAT


def load_deployed(path: str | Path, obj: dict | None = None) -> nn.Module:
    """Rebuild a model written by :func:`save_deployed` (in eval mode, ready to run).

    On a machine where a kernel cannot run, it still loads and runs its sparse branches densely (one
    warning names the reason). ``obj``: the file's content when the caller has read it already.

    Raises:
        FileNotFoundError: missing file. ValueError: not a deployed artifact, non-finite weights, an artifact
        packed for another mask pattern than its config's, weights that do not fit, or packed buffers that
        are inconsistent (shapes, sparse indices out of range, N:M counts other than declared, branches not
        nested: :meth:`SparseConv2d.check_buffers`), checked before any kernel runs.
    """
    from ..config import TrainConfig
    from ..models import build_model

    obj = load_file(path) if obj is None else obj
    if not is_deployed_file(obj):
        raise ValueError(f"{str(path)!r} is not a deployed dynprune model (no format {DEPLOY_FORMAT!r}); "
                         f"make one with `dynprune deploy CKPT OUT`")
    cfg = TrainConfig.model_validate(obj["config"])
    dep = dict(obj["deploy"])
    packed_for = dep.pop("pattern", "element")
    if packed_for != cfg.convert.pattern:
        raise ValueError(f"deployed model {str(path)!r} was packed for mask pattern {packed_for!r}, but its config "
                         f"converts with pattern {cfg.convert.pattern!r}: the file is inconsistent; deploy the "
                         f"training checkpoint again")
    check_finite(obj["model"], f"deployed model {str(path)!r}")
    backend = dep.pop("backend", "cpu")
    dep.pop("backends", None)
    if dep.get("precision", "fp32") not in PRECISIONS:
        raise ValueError(f"deployed model {str(path)!r} has precision {dep['precision']!r}, not one of "
                         f"{list(PRECISIONS)}")
    model = _deploy(build_model(cfg, arch=obj.get("arch", {})), backend, **dep)
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as err:
        raise ValueError(f"deployed model {str(path)!r} does not fit the architecture its config describes: "
                         f"{str(err).splitlines()[0]}") from err
    for name, layer in model.named_modules():
        why = layer.check_buffers() if isinstance(layer, SparseConv2d) else ""
        if why:
            raise ValueError(f"deployed model {str(path)!r} is damaged or crafted: layer {name}, {why}")
    return model.eval()
