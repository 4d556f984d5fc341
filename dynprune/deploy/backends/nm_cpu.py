"""Backend ``nm_cpu``: the element-wise N:M direct kernel (:func:`dynprune.sparse_cpu.nm_conv2d`): every output
channel keeps its own inputs, one lane permute per FMA. Runs element-pattern branches up to the deploy
option ``max_density`` (default 0.25: it beats oneDNN at 1:4 on the measured CPUs, not at 2:4 everywhere)."""

from __future__ import annotations

import torch

from ... import sparse_cpu
from . import Backend, _cpu, check_nm_index, check_shape, register_backend


class ElementNM(Backend):
    name, sparse = "nm_cpu", True

    def status(self):
        return _cpu.status()

    def handles(self, pattern) -> bool:
        return not pattern.is_vector

    def supports(self, conv, ratio, pattern, opts) -> str:
        why = _cpu.kernel_reason(conv, ratio, opts)
        if not why and ratio.m not in sparse_cpu.SUPPORTED_M:
            why = f"M={ratio.m} (kernel: M in {sparse_cpu.SUPPORTED_M})"
        if not why and ratio.density > opts["max_density"]:
            why = f"density {ratio} > max_density={opts['max_density']:g} (oneDNN faster on the measured CPU)"
        return why

    def pack(self, weight, mask, bias, ratio, pattern) -> dict[str, torch.Tensor]:
        values, index = sparse_cpu.compress(weight, mask, ratio.n, ratio.m)
        return {"values": values, "index": index}

    def run(self, layer, branch, x, buffers) -> torch.Tensor:
        lanes = sparse_cpu.lanes()
        key = (branch, lanes)
        packed = layer._kernel_cache.get(key)
        if packed is None:  # the SIMD layout of this machine, once per branch
            r = layer.ratios[branch]
            packed = sparse_cpu.pack_for_kernel(buffers["values"], buffers["index"], buffers["bias"],
                                                layer.in_channels, r.n, r.m, lanes)
            layer._kernel_cache[key] = packed
        return sparse_cpu.nm_conv2d(x, packed, layer.out_channels, layer.kernel_size, layer.padding, layer.dilation,
                                    layer.relu)

    def check(self, layer, branch, buffers) -> str:
        r = layer.ratios[branch]
        shape = (layer.out_channels, layer.kernel_size[0] * layer.kernel_size[1], layer.in_channels // r.m * r.n)
        return (check_shape("values", buffers["values"], shape, torch.float32)
                or check_shape("index", buffers["index"], shape, torch.int16)
                or check_nm_index(buffers["index"], r.n, r.m))

    def kept(self, layer, buffers) -> torch.Tensor:
        return self.dense_weight(layer, {"values": torch.ones_like(buffers["values"]), "index": buffers["index"]}) > 0

    def dense_weight(self, layer, buffers) -> torch.Tensor:
        return sparse_cpu.decompress(buffers["values"], buffers["index"], layer.in_channels, layer.kernel_size)


register_backend(ElementNM())
