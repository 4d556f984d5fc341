"""Choosing the active branch: a thread- and task-safe context, and grouped per-sample routing."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence, TypeVar, Union

import torch

from .nm import NMRatio

__all__ = ["use_branch", "current_branch", "resolve_branch", "route", "per_group", "each_branch", "branch_key",
           "BranchLike"]

BranchLike = Union[int, str, NMRatio]
_ACTIVE: contextvars.ContextVar[BranchLike | None] = contextvars.ContextVar("dynprune_branch", default=None)


@contextlib.contextmanager
def use_branch(branch: BranchLike, model: torch.nn.Module | None = None) -> Iterator[BranchLike]:
    """Run every dynamic layer inside the block on ``branch``.

    ``model``: optional; when given, it must hold dynamic layers and ``branch`` must be one of its
    branches, checked at once (without it a mistake shows only when a layer runs, or not at all for a
    model that was never converted).

    ``branch`` is an index into the model's branches (sparsest first; negative counts from the
    densest), a ratio such as ``"2:4"``, or the name of a plan branch (:mod:`dynprune.plan`). The choice lives in a :mod:`contextvars` variable, so
    two threads can run the same model on different branches at once. Outside any block the
    densest branch runs, which gives the original model's output.

    Raises:
        TypeError: ``branch`` is not an int, a string or an NMRatio.
        ValueError: an empty string; ``model`` holds no dynamic layer, or ``branch`` is not among its branches.
        IndexError: ``model`` given and an index out of its range.
    """
    if isinstance(branch, bool) or not isinstance(branch, (int, str, NMRatio)):
        raise TypeError(f"branch must be an index, a ratio like '2:4' or a plan name, got {branch!r}")
    branch = branch_key(branch)
    if model is not None:
        labels = next((m.nm_labels for m in model.modules() if hasattr(m, "nm_labels")), None)
        if labels is None:
            raise ValueError(f"use_branch: {type(model).__name__} holds no dynamic N:M layer, so every branch runs the "
                             f"same dense model; call dynprune.convert() first")
        resolve_branch(branch, labels)
    token = _ACTIVE.set(branch)
    try:
        yield branch
    finally:
        _ACTIVE.reset(token)


def branch_key(branch: BranchLike) -> BranchLike:
    """``branch`` as the model's layers look it up: a ratio string parsed to NMRatio, a plan name kept.

    Raises:
        ValueError: an empty string.
    """
    if isinstance(branch, str):
        if not branch.strip():
            raise ValueError("branch '' is empty: give an index, a ratio like '2:4' or a plan name")
        try:
            return NMRatio.parse(branch)
        except ValueError:
            return branch.strip()
    return branch


def current_branch() -> BranchLike | None:
    """The branch set by the innermost :func:`use_branch`, or None (densest)."""
    return _ACTIVE.get()


def resolve_branch(branch: BranchLike | None, ratios: Sequence) -> int:
    """Index of ``branch`` in the branch labels ``ratios`` (NMRatio or plan names, sparsest first); None
    means the densest.

    Raises:
        IndexError: index out of range. ValueError: a ratio or name that is not among ``ratios``.
    """
    n = len(ratios)
    if branch is None:
        return n - 1
    if isinstance(branch, (NMRatio, str)):
        try:
            return ratios.index(branch)
        except ValueError:
            raise ValueError(f"branch {branch} is not one of the ratios {[str(r) for r in ratios]}") from None
    if not -n <= branch < n:
        raise IndexError(f"branch index {branch} out of range for {n} branches {[str(r) for r in ratios]}")
    return branch % n


T = TypeVar("T")


def each_branch(fn: Callable[[int], T], num_branches: int) -> list[T]:
    """``[fn(i) for i in range(num_branches)]``, each call inside ``use_branch(i)`` (sparsest first)."""
    out = []
    for i in range(num_branches):
        with use_branch(i):
            out.append(fn(i))
    return out


def per_group(fn: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``fn(k, x[index == k])`` once per distinct ``k``, the results scattered back to input order.

    Args:
        fn: (group k, its samples (b, ...)) -> (b, ...).
        x: (B, ...). index: int64 (B,) group per sample.
    Returns:
        (B, ...) outputs in input order.
    Raises:
        ValueError: ``index`` is not one group per sample.
    """
    if index.dim() != 1 or index.shape[0] != x.shape[0]:
        raise ValueError(f"branches must have shape ({x.shape[0]},), got {tuple(index.shape)}")
    out = None
    for k in torch.unique(index).tolist():
        idx = (index == k).nonzero(as_tuple=True)[0]
        y = fn(int(k), x.index_select(0, idx))
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:]))
        out.index_copy_(0, idx, y)
    return out


def route(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
    """Run ``fn`` per sample on that sample's branch: one call per distinct branch, results scattered back.

    Args:
        fn: a module or function mapping (b, ...) -> (b, ...); it runs under :func:`use_branch`.
        x: input batch (B, ...).
        branches: int64 (B,) branch index per sample.
    Returns:
        (B, ...) outputs in input order.
    Raises:
        ValueError: ``branches`` is not one index per sample.
    """
    def on_branch(b: int, xb: torch.Tensor) -> torch.Tensor:
        with use_branch(b):
            return fn(xb)

    return per_group(on_branch, x, branches)
