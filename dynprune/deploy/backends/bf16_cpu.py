"""Backend ``bf16_cpu``: bf16 branches on the bf16 vector kernel (:func:`dynprune.sparse_cpu.vec_bf16conv2d`, AVX-512
BF16): bf16 activations x bf16 weights (the masked, BatchNorm-folded weight rounded to bf16) accumulated in fp32
with ``vdpbf16ps``, bias and ReLU fused, written as bf16 straight into the next bf16 layer's input (or float32
where the next layer is not bf16). Vector-pattern branches run their kept weights only; element-pattern and
dense branches run the dense bf16 weight. No calibration. On a CPU without AVX-512 BF16 the same bf16 values
run through ``F.conv2d`` in float32 (the same result to float tolerance), after one warning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import sparse_cpu
from . import check_shape, register_backend
from ._cpu import LowPrecisionCPU


class BF16CPU(LowPrecisionCPU):
    name, precision = "bf16_cpu", "bf16"

    def pack(self, weight, mask, bias, ratio, pattern) -> dict[str, torch.Tensor]:
        keep = mask if pattern.is_vector else torch.ones_like(mask)
        values, gidx, _ = sparse_cpu.pack_bf16(weight * mask, keep, self.block(pattern))
        # stored 4-D (B, taps, K/2, V*2); b16out: 1 where the next layer reads bf16 (set by deploy)
        return {"b16values": values.flatten(3), "b16gidx": gidx, "b16out": torch.zeros(1)}

    def _packed(self, layer, branch, buffers):
        key = ("bf16", branch)
        if key not in layer._kernel_cache:
            values = buffers["b16values"].contiguous().unflatten(3, (self.block(layer.pattern), 2))
            bias = torch.zeros(values.shape[0] * values.shape[3])
            bias[: layer.out_channels] = buffers["bias"]
            layer._kernel_cache[key] = (values, buffers["b16gidx"].contiguous(), bias)
        return layer._kernel_cache[key]

    def run(self, layer, branch, x, buffers) -> torch.Tensor:
        packed = self._packed(layer, branch, buffers)
        return sparse_cpu.vec_bf16conv2d(x.to(torch.bfloat16), packed, layer.out_channels, layer.kernel_size,
                                         layer.padding, layer.dilation, layer.relu, bool(buffers["b16out"][0] > 0))

    def fallback(self, layer, branch, x, buffers) -> torch.Tensor:
        if branch not in layer._dense:
            layer._dense[branch] = self.dense_weight(layer, buffers).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x.to(torch.bfloat16).float(), layer._dense[branch], buffers["bias"], layer.stride, layer.padding,
                     layer.dilation, layer.groups)
        y = F.relu(y) if layer.relu else y
        return y.to(torch.bfloat16) if buffers["b16out"][0] > 0 else y

    def check(self, layer, branch, buffers) -> str:
        v = self.block(layer.pattern)
        blocks, taps = -(-layer.out_channels // v), layer.kernel_size[0] * layer.kernel_size[1]
        values, gidx = buffers["b16values"], buffers["b16gidx"]
        if values.dim() != 4 or tuple(values.shape[:2]) != (blocks, taps) or values.shape[3] != v * 2:
            return f"b16values is {tuple(values.shape)}, expected ({blocks}, {taps}, K/2, {v * 2})"
        cb = -(-blocks * values.shape[2] * 4 // 64) * 64
        return (check_shape("b16values", values, tuple(values.shape), torch.bfloat16)
                or check_shape("b16gidx", gidx, (taps, cb // 2), torch.int16)
                or check_shape("b16out", buffers["b16out"], (1,), torch.float32)
                or ("b16gidx holds input channels out of range"
                    if gidx.numel() and (int(gidx.max()) >= layer.in_channels or int(gidx.min()) < 0) else ""))

    def dense_weight(self, layer, buffers) -> torch.Tensor:
        values = buffers["b16values"].unflatten(3, (self.block(layer.pattern), 2))
        return sparse_cpu.decompress_grouped(values, buffers["b16gidx"], layer.out_channels, layer.in_channels,
                                             layer.kernel_size)


register_backend(BF16CPU())
