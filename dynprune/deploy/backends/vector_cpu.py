"""Backend ``vector_cpu``: the vector-pattern direct kernel (:func:`dynprune.sparse_cpu.vec_conv2d`). A block of V
output channels keeps the same inputs, so each kept input value is broadcast once into V weights: a dense
direct convolution over the kept inputs only (3.1x oneDNN at 1:4 and 1.7x at 2:4 on a 64->64 3x3 layer,
Zen 4, on both the AVX-512 and the AVX2 path; docs/results.md). Runs vector-pattern branches up to the deploy
option ``max_density_vector`` (default 0.75: at 4:4 the kernel is 0.94x of oneDNN, so dense stays there). On its
first call per branch it runs the faster of its AVX-512 and AVX2 code paths for the layer's shape, measured
once per machine (:func:`dynprune.sparse_cpu.vector_isa`)."""

from __future__ import annotations

import torch

from ... import sparse_cpu
from . import Backend, _cpu, check_nm_index, check_shape, register_backend


class VectorNM(Backend):
    name, sparse = "vector_cpu", True

    def status(self):
        return _cpu.status()

    def handles(self, pattern) -> bool:
        return pattern.is_vector

    def supports(self, conv, ratio, pattern, opts) -> str:
        why = _cpu.kernel_reason(conv, ratio, opts)
        if not why and ratio.density > opts["max_density_vector"]:
            why = f"density {ratio} > max_density_vector={opts['max_density_vector']:g} (oneDNN faster)"
        return why

    def pack(self, weight, mask, bias, ratio, pattern) -> dict[str, torch.Tensor]:
        values, index, _ = sparse_cpu.compress_vector(weight, mask, pattern.v)
        return {"vvalues": values, "vindex": index}

    def run(self, layer, branch, x, buffers) -> torch.Tensor:
        hit = layer._kernel_cache.get(branch)
        if hit is None:  # contiguous values (model.to(channels_last) restrides 4-D buffers), bias padded to blocks
            values = buffers["vvalues"].contiguous()
            bias = torch.zeros(values.shape[0] * values.shape[3])
            bias[: layer.out_channels] = buffers["bias"]
            packed = (values, buffers["vindex"].contiguous(), bias)
            isa = sparse_cpu.vector_isa(packed, layer.in_channels, layer.out_channels, layer.kernel_size,
                                        layer.dilation)
            hit = layer._kernel_cache[branch] = (packed, isa)
        return sparse_cpu.vec_conv2d(x, hit[0], layer.out_channels, layer.kernel_size, layer.padding, layer.dilation,
                                     layer.relu, hit[1])

    def check(self, layer, branch, buffers) -> str:
        r, v = layer.ratios[branch], layer.pattern.v
        blocks, taps = -(-layer.out_channels // v), layer.kernel_size[0] * layer.kernel_size[1]
        k = layer.in_channels // r.m * r.n
        return (check_shape("vvalues", buffers["vvalues"], (blocks, taps, k, v), torch.float32)
                or check_shape("vindex", buffers["vindex"], (blocks, taps, k), torch.int32)
                or check_nm_index(buffers["vindex"], r.n, r.m))

    def kept(self, layer, buffers) -> torch.Tensor:
        ones = {"vvalues": torch.ones_like(buffers["vvalues"]), "vindex": buffers["vindex"]}
        return self.dense_weight(layer, ones) > 0

    def dense_weight(self, layer, buffers) -> torch.Tensor:
        return sparse_cpu.decompress_vector(buffers["vvalues"], buffers["vindex"], layer.out_channels,
                                            layer.in_channels, layer.kernel_size)


register_backend(VectorNM())
