"""Training methods on the shared run loop (:mod:`dynprune.train`), one module each, chosen by a config's
``method`` (``dynprune train`` runs it; ``dynprune search`` and ``dynprune png`` name theirs):

- ``classpruning``: the paper's three stages (:class:`~dynprune.methods.classpruning.Trainer`);
- ``png``: prune-and-grow over a task sequence (:class:`~dynprune.methods.png.PnG`);
- ``sls``: the per-layer N:M search (:class:`~dynprune.methods.sls.Search`);
- ClassSR's in-memory loops (:mod:`dynprune.methods.classsr`).

A method is a class ``(cfg, resume=False, overwrite=False)`` with ``fit()`` that builds a
:class:`~dynprune.train.Run` and gives it its phases; adding one is a module here and one line in
:data:`METHODS` (docs/concepts.md, "Adding a training method").
"""

from __future__ import annotations

import importlib

__all__ = ["METHODS", "get_method", "register_method"]

# name -> "module:class", imported on first use
METHODS: dict[str, str] = {
    "classpruning": "dynprune.methods.classpruning:Trainer",
    "png": "dynprune.methods.png:PnG",
    "sls": "dynprune.methods.sls:Search",
}


def register_method(name: str, target: str | type) -> None:
    """Register a method class (or its ``"module:Class"`` path) under ``name`` (replacing an earlier one)."""
    METHODS[name] = target


def get_method(name: str) -> type:
    """The method class registered as ``name``.

    Raises:
        ValueError: an unknown name (the registered ones listed).
    """
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; registered: {', '.join(sorted(METHODS))}")
    target = METHODS[name]
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    return target
