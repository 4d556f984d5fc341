"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), state_dict clean-up."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic", "load_file", "load_weights", "strip_prefix", "load_strict", "check_finite"]


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or kill at any moment leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_file(path: str | os.PathLike) -> Any:
    """Load a torch file with ``weights_only=True`` on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, or a file that is truncated, corrupt or not a torch file (the path is named).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder; give the checkpoint file (e.g. its last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError,
            IndexError, KeyError, TypeError, AttributeError) as err:
        first = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): truncated, corrupt "
                         f"or not a torch weights file ({type(err).__name__}{': ' + first if first else ''})") from err


def load_weights(path: str | os.PathLike) -> Any:
    """A weights file's state_dict: a bare one, or the ``"model"`` entry of a ``{"model": ...}`` file
    (a dense export or a training checkpoint). Raises as :func:`load_file`."""
    sd = load_file(path)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if isinstance(sd, dict):
        check_finite(sd, f"weights {str(path)!r}")
    return sd


def check_finite(state_dict: dict[str, Any], source: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged run would restore black images with exit 0).

    Raises:
        ValueError: the first offending keys and their counts of non-finite values are named.
    """
    bad = [f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})" for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{source} holds non-finite weights (NaN/Inf) in {', '.join(bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}: the run that wrote it diverged")


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. ``nn.DataParallel``'s ``module.``) from every key that has it."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """``model.load_state_dict(state_dict)`` whose error names the missing, unexpected and mis-shaped keys.

    Raises:
        ValueError: the state_dict does not fit ``model`` (``source`` and up to 5 keys of each kind named).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{what} {items[:5]}{' ...' if len(items) > 5 else ''}"
                 for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if items]
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict)
    return model
