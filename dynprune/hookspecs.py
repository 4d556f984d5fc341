"""pluggy hook specifications of dynprune.

A plugin is a module (or object) with functions marked ``@dynprune.hookimpl``, found through the
entry-point group ``dynprune``::

    [project.entry-points.dynprune]
    my_backbone = "my_package.dynprune_plugin"

Each hook receives a ``register(name, factory, description="", paper=None)`` callback.
``factory(**kwargs)`` builds the object; ``paper`` optionally maps an evaluation condition label
(e.g. "sigma=25") or "paper" to a published figure that ``dynprune eval`` prints beside its rows; names must be unique across all plugins (a duplicate raises ``ValueError``
naming both plugins). The built-in adapters and plugins use exactly these hooks.
"""

from __future__ import annotations

from typing import Callable, Protocol

import pluggy

__all__ = ["hookspec", "hookimpl", "Register"]

hookspec = pluggy.HookspecMarker("dynprune")
hookimpl = pluggy.HookimplMarker("dynprune")


class Register(Protocol):
    def __call__(self, name: str, factory: Callable[..., object], description: str = "",
                 paper: dict[str, str] | None = None) -> None: ...


@hookspec
def dynprune_register_models(register: Register) -> None:
    """Register restoration models (backbones). ``factory(**kwargs) -> nn.Module`` whose forward maps
    a degraded image (B, C, H, W) float32 in [0, 1] to the restored image of the same layout."""


@hookspec
def dynprune_register_degradations(register: Register) -> None:
    """Register degradation synthesizers. ``factory(**kwargs)`` returns a callable
    ``(clean, *, generator=None, level=None) -> (degraded, level)`` with attribute ``levels`` (the number
    of difficulty levels) and ``describe_level(i) -> str``; ``clean`` (B, C, H, W) in [0, 1]."""


@hookspec
def dynprune_register_labelers(register: Register) -> None:
    """Register difficulty labelers. ``factory(num_classes, **kwargs)`` returns a callable
    ``(clean, degraded, level) -> (degraded, labels)``; labels int64 (B,), 0 = easiest."""


@hookspec
def dynprune_register_losses(register: Register) -> None:
    """Register reconstruction losses. ``factory(**kwargs)`` returns ``(pred, target) -> (B,)`` per-sample
    losses (float32)."""


@hookspec
def dynprune_register_classifiers(register: Register) -> None:
    """Register difficulty classifiers. ``factory(in_channels, num_classes, **kwargs) -> nn.Module`` mapping
    a degraded image (B, C, H, W) float32 in [0, 1] to (B, L) logits."""


@hookspec
def dynprune_register_datasets(register: Register) -> None:
    """Register training datasets. ``factory(**kwargs)`` returns a ``torch.utils.data.Dataset`` of clean
    float32 tensors (C, h, w) in [0, 1]; ``set_epoch(epoch)`` reseeds its random crops if present."""
