"""Data parallelism across processes for the run loop: ``torchrun --nproc_per_node N -m dynprune train CONFIG``.

Each rank builds step s's whole batch (a pure function of seed, phase and step) and trains on its slice
``rank::`` of equal size, so the global batch, and the model, do not depend on the number of ranks. After
``backward`` the gradients of the trained parameters are averaged over the ranks by one all-reduce of a
flat buffer (what ``DistributedDataParallel`` does, without its per-forward hooks: a ClassPruning step runs
the restorer once per branch before one backward). BatchNorm in training mode, variable BatchNorm's
per-branch copies included, normalizes with the statistics of the global batch (:func:`synced_batch_norm`:
an all-reduce of per-channel sums and squared sums; ``SyncBatchNorm`` is CUDA-only and would merge the
branches' statistics into one set), so 2 ranks x batch 8 compute what 1 rank x batch 16 does, to float
rounding. Rank 0 alone writes checkpoints, logs and progress; the values it logs are the global batch's
(:func:`over_ranks`, at logging steps only). gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["setup", "rank_world", "shard", "average_gradients", "synced_batch_norm", "gather_objects", "any_rank",
           "mean_over_ranks", "over_ranks", "shutdown"]


def setup(device: str) -> tuple[int, int, str]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), once.

    Returns:
        (rank, world size, device): ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.
    Raises:
        ValueError: a CUDA device with a world larger than this machine's GPUs per node.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank, world = rank_world()
    if world > 1 and device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} (local rank {local}) has no GPU of its own: {torch.cuda.device_count()} "
                             f"here; start at most that many processes per node")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    return rank, world, device


def shutdown() -> None:
    """Leave the process group (if this process joined one): a barrier, then ``destroy_process_group``, as
    PyTorch asks at the end of a distributed program; without it a gloo rank can abort at interpreter exit
    while its worker threads still hold work. Call it on every rank after the last collective, on success
    only (after an error, exiting lets torchrun stop the other ranks)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: Any, rank: int, world: int) -> Any:
    """This rank's part of a batch: every tensor's rows ``rank * B/world`` to ``(rank + 1) * B/world`` (nested
    tuples, lists and dicts alike).

    Raises:
        ValueError: a batch size that ``world`` does not divide (both named).
    """
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.shape[0] % world:
            raise ValueError(f"a batch of {batch.shape[0]} cannot be split over {world} ranks: choose a batch size "
                             f"that the number of processes divides")
        part = batch.shape[0] // world
        return batch[rank * part:(rank + 1) * part]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(b, rank, world) for b in batch)
    if isinstance(batch, dict):
        return {k: shard(v, rank, world) for k, v in batch.items()}
    return batch


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over the ranks (one all-reduce of a flat buffer; a parameter
    without a gradient on this rank counts as zeros, and gets one if any rank had one)."""
    _, world = rank_world()
    if world == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalization with the statistics of the batch over all ranks (forward and backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_tensor([x.numel() // c])])
        dist.all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        invstd = (var + eps).rsqrt()
        shape = (1, c) + (1,) * (x.dim() - 2)
        xhat = ((xd - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype), n.to(x.dtype))
        y = xhat
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        return y, mean.to(x.dtype), var.to(x.dtype), n

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dn):
        xhat, weight, invstd, n = ctx.saved_tensors
        c = dy.shape[1]
        dims = [0, *range(2, dy.dim())]
        shape = (1, c) + (1,) * (dy.dim() - 2)
        local = torch.cat([dy.sum(dims), (dy * xhat).sum(dims)])
        total = local.clone()
        dist.all_reduce(total)
        scale = invstd if weight is None else invstd * weight
        dx = scale.view(shape) / n * (n * dy - total[:c].view(shape) - xhat * total[c:].view(shape))
        if weight is None:
            return dx, None, None, None
        return dx, local[c:], local[:c], None


def _global_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5):
    if not training:
        return _LOCAL_BATCH_NORM(input, running_mean, running_var, weight, bias, training, momentum, eps)
    y, mean, var, n = _GlobalBatchNorm.apply(input, weight, bias, eps)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (n / (n - 1).clamp_min(1)), alpha=momentum)
    return y


_LOCAL_BATCH_NORM = F.batch_norm


@contextlib.contextmanager
def synced_batch_norm(enabled: bool = True) -> Iterator[None]:
    """Inside the block, every BatchNorm in training mode (``F.batch_norm``, which ``nn.BatchNorm*`` and
    variable BatchNorm's per-branch copies call) normalizes with the global batch's statistics and updates
    its running statistics with them (momentum as given, unbiased variance, like torch's). A no-op outside
    a process group or when not ``enabled``."""
    if not enabled or rank_world()[1] == 1:
        yield
        return
    F.batch_norm = _global_batch_norm
    try:
        yield
    finally:
        F.batch_norm = _LOCAL_BATCH_NORM


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order ([obj] outside a process group)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself outside a process group)."""
    _, world = rank_world()
    if world == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (itself outside a process group)."""
    _, world = rank_world()
    if world == 1:
        return value
    v = value.detach().clone()
    dist.all_reduce(v)
    return v / world


def over_ranks(values: dict) -> dict:
    """A step's logged values for the global batch: floating tensors averaged over the ranks (per-rank means
    of equal shards), integer tensors summed (counts, e.g. a routing histogram), anything else as it is.
    Every rank must call it at the same steps, with the same keys (one all-reduce per tensor)."""
    if rank_world()[1] == 1:
        return values
    out = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = mean_over_ranks(v)
        elif isinstance(v, torch.Tensor):
            v = v.detach().clone()
            dist.all_reduce(v)
        out[k] = v
    return out
