"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), integrity checks, state_dict clean-up.

Every mapping dynprune saves (training checkpoints, best.pt, base.pt, PnG and SLS state, deployed artifacts)
carries ``"sha256"``: a SHA-256 digest of its whole content (keys in order, every tensor's dtype, shape and
bytes, every other value's repr), computed at save and verified at load. torch does not verify its
archive's CRC when loading, so without it a flipped bit in a tensor loads silently and restores wrong
images; with it the file is refused as corrupt. Files written before the digest existed load with one
notice per process."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["save_atomic", "load_file", "digest", "verify", "load_weights", "strip_prefix", "load_strict", "check_finite"]


DIGEST_KEY = "sha256"
_NOTICED: set[str] = set()


_NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                 torch.uint8, torch.bool}
_CHUNK = 1 << 16  # tensors at least this large are hashed in place, smaller pieces joined first


def _feed(h, obj: Any, parts: list) -> None:
    """Feed ``obj`` into the hash ``h`` deterministically (mappings in key order): the byte stream is a
    type tag, shape and dtype per tensor and its raw bytes; small pieces collect in ``parts`` and are hashed
    joined (the same stream, fewer calls)."""
    if isinstance(obj, torch.Tensor):
        t = obj if obj.device.type == "cpu" and obj.is_contiguous() else obj.detach().cpu().contiguous()
        parts.append(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            a = t.detach().numpy() if t.dtype in _NUMPY_DTYPES else t.detach().view(-1).view(torch.uint8).numpy()
            if a.nbytes >= _CHUNK:  # the buffer itself, no copy
                h.update(b"".join(parts))
                parts.clear()
                h.update(a)
            else:
                parts.append(a.tobytes())
    elif isinstance(obj, dict):
        parts.append(b"D%d" % len(obj))
        for k in obj:
            parts.append(repr(k).encode())
            _feed(h, obj[k], parts)
    elif isinstance(obj, (list, tuple)):
        parts.append(b"L%d" % len(obj))
        for v in obj:
            _feed(h, v, parts)
    else:
        parts.append(repr(obj).encode())


def digest(obj: dict) -> str:
    """The SHA-256 hex digest of a mapping's content, its ``"sha256"`` entry left out (module doc)."""
    h, parts = hashlib.sha256(), []
    _feed(h, {k: v for k, v in obj.items() if k != DIGEST_KEY}, parts)
    h.update(b"".join(parts))
    return h.hexdigest()


def verify(obj: Any, path: Path) -> None:
    """Check a loaded mapping against its ``"sha256"`` entry, and drop the entry (module doc).

    Raises:
        ValueError: the digests differ: the file is corrupt (named).
    """
    if not isinstance(obj, dict):
        return
    stored = obj.pop(DIGEST_KEY, None)
    if stored is None:
        if ("config" in obj or "arch" in obj) and str(path) not in _NOTICED:
            _NOTICED.add(str(path))
            log.info("%s has no integrity digest (written before dynprune stored one): loaded unverified", path)
        return
    if digest(obj) != stored:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: its content does not match the SHA-256 digest stored "
                         "when it was written (a damaged copy, a bad disk or an edited file); use another copy")


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A mapping gets its ``"sha256"`` digest (module doc). A crash or kill at any moment leaves either the old
    file or the new one, never a partial one (:func:`dynprune.outputs.write_output`).

    Raises:
        ValueError: the disk is full or the folder not writable (the previous file intact).
    """
    from .outputs import write_output

    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != DIGEST_KEY}, DIGEST_KEY: digest(obj)}
    return write_output(path, lambda f: torch.save(obj, f))


def load_file(path: str | os.PathLike) -> Any:
    """Load a torch file with ``weights_only=True`` on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, or a file that is truncated, corrupt (its digest does not match) or not a
            torch file (the path is named).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder; give the checkpoint file (e.g. its last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError,
            IndexError, KeyError, TypeError, AttributeError) as err:
        text = str(err)
        if isinstance(err, pickle.UnpicklingError):  # torch's advice to load unsafely is not ours to give
            said = [ln.strip() for ln in text.replace("WeightsUnpickler error:", "\n").splitlines()]
            said = [ln for ln in said if ln and not ln.startswith(("Weights only load failed", "Check the doc",
                                                                   "Please file an issue"))]
            text = "it holds more than tensors and plain containers; nothing in it was run" + (
                f": {said[0]}" if said else "")
        first = (text.strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): truncated, corrupt "
                         f"or not a torch weights file ({type(err).__name__}{': ' + first if first else ''})") from err
    verify(obj, path)
    return obj


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
