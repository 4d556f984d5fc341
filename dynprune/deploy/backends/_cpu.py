"""What both CPU kernels (element and vector N:M) share: the layers they run, and their availability."""

from __future__ import annotations

from typing import Any

from torch import nn

from ... import sparse_cpu
from ...nm import NMRatio


def kernel_reason(conv: nn.Conv2d, ratio: NMRatio, opts: dict[str, Any]) -> str:
    """Why the direct CPU kernels cannot run branch ``ratio`` of ``conv``; "" when they can."""
    if conv.stride != (1, 1):
        return f"stride {conv.stride} (kernel: stride 1)"
    if conv.groups != 1:
        return f"groups={conv.groups} (kernel: groups 1)"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r}/{conv.padding_mode} (kernel: explicit zero padding)"
    if conv.nm_span != conv.in_channels:
        return f"{conv.in_channels} input channels not divisible by M={ratio.m} (kernel: whole groups)"
    if conv.out_channels < opts["min_out_channels"]:
        return f"{conv.out_channels} output channels < min_out_channels={opts['min_out_channels']} (oneDNN faster)"
    return ""


def status() -> tuple[bool, str]:
    """(the compiled CPU kernel runs here, why not)."""
    st = sparse_cpu.kernel_status()
    return bool(st["available"]), str(st["reason"])
