"""Backend ``onednn``: the branch's masked, folded weight run densely by ``F.conv2d`` (oneDNN on CPU). Runs
every layer and branch everywhere; the dense branch always runs here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Backend, check_shape, register_backend


class OneDNN(Backend):
    name, sparse = "onednn", False

    def supports(self, conv, ratio, pattern, opts) -> str:
        return ""

    def pack(self, weight, mask, bias, ratio, pattern) -> dict[str, torch.Tensor]:
        return {"weight": weight.float().contiguous(memory_format=torch.channels_last)}

    def run(self, layer, branch, x, buffers) -> torch.Tensor:
        y = F.conv2d(x, buffers["weight"], buffers["bias"], layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.relu(y, inplace=True) if layer.relu else y

    def check(self, layer, branch, buffers) -> str:
        kh, kw = layer.kernel_size
        w = buffers["weight"]
        why = check_shape("weight", w, (layer.out_channels, layer.in_channels // layer.groups, kh, kw), torch.float32)
        r = layer.ratios[branch]
        if why or r.is_dense or layer.groups != 1:
            return why
        span = layer.in_channels // r.m * r.m  # N:M covers whole groups of the input channels
        nonzero = (w[:, :span] != 0).reshape(w.shape[0], span // r.m, r.m, kh, kw).sum(2)
        over = nonzero > r.n  # zeros may be kept values, so at most n, not exactly n
        if bool(over.any()):
            o, g, y, x = over.nonzero()[0].tolist()
            return f"weight keeps {int(nonzero[o, g, y, x])} of {r.m} in group {g} of output channel {o}, tap ({y}, {x}): not {r}"
        return ""

    def dense_weight(self, layer, buffers) -> torch.Tensor:
        return buffers["weight"]


register_backend(OneDNN())
