"""What the CPU kernels share: the layers they run (fp32 N:M kernels; the low-precision ones), their availability,
and the base of the low-precision backends."""

from __future__ import annotations

from typing import Any

from torch import nn

from ... import sparse_cpu
from ...nm import NMPattern, NMRatio
from . import Backend


def _geometry_reason(conv: nn.Conv2d) -> str:
    """Why no direct CPU kernel runs ``conv`` whatever its branch (stride, groups, padding); "" when one can."""
    if conv.stride != (1, 1):
        return f"stride {conv.stride} (kernel: stride 1)"
    if conv.groups != 1:
        return f"groups={conv.groups} (kernel: groups 1)"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r}/{conv.padding_mode} (kernel: explicit zero padding)"
    return ""


def kernel_reason(conv: nn.Conv2d, ratio: NMRatio, opts: dict[str, Any]) -> str:
    """Why the direct CPU kernels cannot run branch ``ratio`` of ``conv``; "" when they can."""
    why = _geometry_reason(conv)
    if why:
        return why
    if conv.nm_span != conv.in_channels:
        return f"{conv.in_channels} input channels not divisible by M={ratio.m} (kernel: whole groups)"
    if conv.out_channels < opts["min_out_channels"]:
        return f"{conv.out_channels} output channels < min_out_channels={opts['min_out_channels']} (oneDNN faster)"
    return ""


MIN_IN_CHANNELS = 16  # thinner layers (a network's first) stay fp32: little work, most of the quantization error


def lowp_reason(conv, opts) -> str:
    """Why the low-precision kernels (int8, bf16) cannot run ``conv``; "" when they can."""
    why = _geometry_reason(conv)
    if why:
        return why
    if max(conv.kernel_size) > 16:
        return f"kernel {conv.kernel_size} (kernel: sides up to 16)"
    if not MIN_IN_CHANNELS <= conv.in_channels <= 256:
        return f"{conv.in_channels} input channels (kernel: {MIN_IN_CHANNELS} to 256; thin layers stay fp32)"
    if conv.out_channels < opts["min_out_channels"]:
        return f"{conv.out_channels} output channels < min_out_channels={opts['min_out_channels']}"
    return ""


class LowPrecisionCPU(Backend):
    """What ``int8_cpu`` and ``bf16_cpu`` share: they run every branch (vector patterns on their kept weights, others
    dense) of the layers :func:`lowp_reason` allows, only when ``deploy(precision=...)`` asks for theirs, and
    only where :func:`dynprune.sparse_cpu.lowp_kernel` says their instructions exist (else ``fallback``)."""

    sparse = True

    def status(self) -> tuple[bool, str]:
        return sparse_cpu.lowp_kernel(self.precision)

    def supports(self, conv, ratio, pattern, opts) -> str:
        if opts.get("precision") != self.precision:
            return f"precision {opts.get('precision', 'fp32')} ({self.name}: {self.precision} only)"
        return lowp_reason(conv, opts)

    @staticmethod
    def block(pattern: NMPattern) -> int:
        """Output channels per packed block: the pattern's V, or 16 for masks packed dense (element pattern)."""
        return pattern.v if pattern.is_vector else 16

def status() -> tuple[bool, str]:
    """(the compiled CPU kernel runs here, why not)."""
    st = sparse_cpu.kernel_status()
    return bool(st["available"]), str(st["reason"])
