"""Backend ``onednn``: the branch's masked, folded weight run densely by ``F.conv2d`` (oneDNN on CPU). Runs
every layer and branch everywhere; the dense branch always runs here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Backend, register_backend


class OneDNN(Backend):
    name, sparse = "onednn", False

    def supports(self, conv, ratio, pattern, opts) -> str:
        return ""

    def pack(self, weight, mask, bias, ratio, pattern) -> dict[str, torch.Tensor]:
        return {"weight": weight.float().contiguous(memory_format=torch.channels_last)}

    def run(self, layer, branch, x, buffers) -> torch.Tensor:
        y = F.conv2d(x, buffers["weight"], buffers["bias"], layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.relu(y, inplace=True) if layer.relu else y

    def dense_weight(self, layer, buffers) -> torch.Tensor:
        return buffers["weight"]


register_backend(OneDNN())
