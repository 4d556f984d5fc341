"""What the CPU kernels share: the layers they run (fp32 N:M kernels; the low-precision ones), their availability."""

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


MIN_IN_CHANNELS = 16  # thinner layers (a network's first) stay fp32: little work, most of the quantization error


def lowp_reason(conv, opts) -> str:
    """Why the low-precision kernels (int8, bf16) cannot run ``conv``; "" when they can."""
    if conv.stride != (1, 1) or conv.groups != 1:
        return f"stride {conv.stride}, groups {conv.groups} (kernel: stride 1, groups 1)"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r}/{conv.padding_mode} (kernel: explicit zero padding)"
    if max(conv.kernel_size) > 16:
        return f"kernel {conv.kernel_size} (kernel: sides up to 16)"
    if not MIN_IN_CHANNELS <= conv.in_channels <= 256:
        return f"{conv.in_channels} input channels (kernel: {MIN_IN_CHANNELS} to 256; thin layers stay fp32)"
    if conv.out_channels < opts["min_out_channels"]:
        return f"{conv.out_channels} output channels < min_out_channels={opts['min_out_channels']}"
    return ""


def status() -> tuple[bool, str]:
    """(the compiled CPU kernel runs here, why not)."""
    st = sparse_cpu.kernel_status()
    return bool(st["available"]), str(st["reason"])
