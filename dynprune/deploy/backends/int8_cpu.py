"""Backend ``int8_cpu``: int8 branches on the int8 vector kernel (:func:`dynprune.sparse_cpu.vec_qconv2d`, AVX-512
VNNI + VBMI): uint8 activations x int8 weights (per output channel) accumulated in int32, requantized in the
epilogue with bias and ReLU fused, written as uint8 straight into the next int8 layer's input (or float32 where
the next layer is not int8). Vector-pattern branches run their kept weights only; element-pattern and dense
branches run the dense int8 weight. Arithmetic: :func:`dynprune.quant.qconv_reference` (bit-exact), which
is also the fallback on CPUs without the instructions (one warning).

Weights are quantized when packed; the activations' quantization (``q8act``: input scale and zero point,
output scale and zero point, output scale 0 for float32 output) is set by :func:`dynprune.deploy`'s calibration.
"""

from __future__ import annotations

import math

import torch

from ... import quant, sparse_cpu
from . import check_shape, register_backend
from ._cpu import LowPrecisionCPU

def act_params(buffers) -> tuple[quant.ActQuant, quant.ActQuant | None]:
    """(input, output or None for float32 output) quantization of a branch from its ``q8act`` buffer."""
    s_in, z_in, s_out, z_out = buffers["q8act"].tolist()
    if not (math.isfinite(s_in) and s_in > 0):
        raise RuntimeError("this int8 layer was never calibrated: deploy(model, precision='int8', "
                           "calibration=images) sets its activation scales")
    return quant.ActQuant(s_in, int(z_in)), (quant.ActQuant(s_out, int(z_out)) if s_out > 0 else None)


class Int8CPU(LowPrecisionCPU):
    name, precision = "int8_cpu", "int8"

    def pack(self, weight, mask, bias, ratio, pattern) -> dict[str, torch.Tensor]:
        keep = mask if pattern.is_vector else torch.ones_like(mask)   # element pattern: the dense int8 weight
        wq, w_scale = quant.quantize_weight(weight * mask)
        values, gidx, wsum = quant.pack_int8_weights(wq, keep, self.block(pattern))
        act = torch.tensor([math.nan, 0.0, 0.0, 0.0])
        # stored 4-D (B, taps, K/4, V*4): a model's .to(memory_format=...) rejects 5-D buffers
        return {"q8values": values.flatten(3), "q8gidx": gidx, "q8wscale": w_scale, "q8wsum": wsum, "q8act": act}

    def _packed(self, layer, branch, buffers) -> tuple[quant.QConvPacked, quant.ActQuant, quant.ActQuant | None]:
        key = ("int8", branch)
        hit = layer._kernel_cache.get(key)
        if hit is None:
            act_in, act_out = act_params(buffers)
            extra = quant.requantization(buffers["q8wsum"], buffers["q8wscale"], buffers["bias"], act_in, act_out)
            values = self._values(layer, buffers)
            packed = quant.QConvPacked(values, buffers["q8gidx"].contiguous(), *extra)
            hit = layer._kernel_cache[key] = (packed, act_in, act_out)
        return hit

    def run(self, layer, branch, x, buffers) -> torch.Tensor:
        packed, act_in, act_out = self._packed(layer, branch, buffers)
        if x.dtype != torch.uint8:
            x = quant.quantize(x, act_in)
        return sparse_cpu.vec_qconv2d(x, packed, layer.out_channels, layer.kernel_size, layer.padding, layer.dilation,
                                      act_in.zero, act_out.zero if act_out else None, layer.relu)

    def fallback(self, layer, branch, x, buffers) -> torch.Tensor:
        packed, act_in, act_out = self._packed(layer, branch, buffers)
        key = ("int8-weight", branch)
        if key not in layer._kernel_cache:
            layer._kernel_cache[key] = quant.unpack_int8(packed.values, packed.gidx, layer.out_channels,
                                                         layer.in_channels, layer.kernel_size)
        if x.dtype != torch.uint8:
            x = quant.quantize(x, act_in)
        y = quant.qconv_reference(x, act_in, layer._kernel_cache[key], packed, layer.padding, layer.dilation,
                                  layer.relu, act_out)
        return y.contiguous(memory_format=torch.channels_last)

    def _values(self, layer, buffers) -> torch.Tensor:
        v = self.block(layer.pattern)
        return buffers["q8values"].contiguous().unflatten(3, (v, 4))

    def check(self, layer, branch, buffers) -> str:
        v = self.block(layer.pattern)
        blocks, taps = -(-layer.out_channels // v), layer.kernel_size[0] * layer.kernel_size[1]
        values, gidx = buffers["q8values"], buffers["q8gidx"]
        if values.dim() != 4 or tuple(values.shape[:2]) != (blocks, taps) or values.shape[3] != v * 4:
            return f"q8values is {tuple(values.shape)}, expected ({blocks}, {taps}, K/4, {v * 4})"
        cb = -(-blocks * values.shape[2] * 4 // 64) * 64
        act = buffers["q8act"]
        return (check_shape("q8values", values, tuple(values.shape), torch.int8)
                or check_shape("q8gidx", gidx, (taps, cb), torch.uint8)
                or check_shape("q8wscale", buffers["q8wscale"], (layer.out_channels,), torch.float32)
                or check_shape("q8wsum", buffers["q8wsum"], (blocks * v,), torch.int32)
                or check_shape("q8act", act, (4,), torch.float32)
                or ("q8gidx holds input channels out of range" if gidx.numel() and int(gidx.max()) >= layer.in_channels
                    else "")
                or ("q8act is not a finite calibration (scales > 0, zero points 0..255)"
                    if not (bool(torch.isfinite(act).all()) and act[0] > 0 and act[2] >= 0
                            and all(0 <= z <= 255 for z in (act[1], act[3]))) else ""))

    def dense_weight(self, layer, buffers) -> torch.Tensor:
        w = quant.unpack_int8(self._values(layer, buffers), buffers["q8gidx"], layer.out_channels, layer.in_channels,
                              layer.kernel_size)
        return w.float() * buffers["q8wscale"].view(-1, 1, 1, 1)


register_backend(Int8CPU())
