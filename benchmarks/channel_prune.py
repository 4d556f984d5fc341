"""The honest baseline for issue 9: DnCNN-B statically channel-pruned with torch-pruning, then fine-tuned.

torch-pruning's dependency graph removes the same fraction of output channels from every hidden conv
(the last conv's single output is kept), ranked by group L2 magnitude (its ``MagnitudePruner`` with
``GroupMagnitudeImportance``); the BatchNorms follow through the graph. The pruned net is a plain DnCNN
of a smaller width, fine-tuned with L1 on the ClassPruning run's data (Train400 40x40 patches, AWGN at
sigma 15 / 25 / 50) for a CPU-time budget given in core-minutes (the ClassPruning run of
``configs/dncnn_bsd68_cpu.yaml`` took 39.8 min on 2 cores = 80 core-minutes). Checkpoints are atomic and
``--resume`` continues bit-identically (every batch is a function of the step; the step total is fixed
at the start from a timed probe and stored).

    python benchmarks/channel_prune.py --data ../shared/data --ratio 0.2 --core-minutes 80 --threads 1 \
        --out runs/channel_pruned [--resume]
    python benchmarks/channel_prune.py --data ../shared/data --ratio 0.2 --steps 3468 ...   # a fixed step total

Writes ``OUT/last.pt`` (during training) and ``OUT/pruned.pt`` (``{"model": state_dict, "arch": {...}}``,
loadable with ``dynprune.create_model("dncnn", weights=...)``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch_pruning as tp

import dynprune as dp
from dynprune.checkpoint import load_file, save_atomic
from dynprune.registry import create
from dynprune.train import cosine_lr


def prune(model: torch.nn.Module, ratio: float) -> torch.nn.Module:
    """Remove ``ratio`` of every hidden conv's output channels (torch-pruning), last conv kept."""
    model = model.eval()
    last = model.dncnn[-1]
    example = torch.rand(1, model.in_channels, 40, 40)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[last])
    pruner.step()
    return model


def hidden_width(model: torch.nn.Module) -> int:
    return model.dncnn[0].out_channels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the shared data folder (weights/dncnn, denoise/Train400)")
    ap.add_argument("--ratio", type=float, default=0.2, help="fraction of hidden channels removed")
    ap.add_argument("--core-minutes", type=float, default=80.0, help="training budget in CPU core-minutes")
    ap.add_argument("--steps", type=int, help="fixed step total instead of the timed --core-minutes probe "
                    "(CPU time per step depends on the machine and on what else runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, nargs=2, default=(2e-4, 1e-6), help="cosine start and end")
    ap.add_argument("--out", default="runs/channel_pruned")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    args = ap.parse_args()
    if not 0 < args.ratio < 1:
        raise SystemExit(f"channel_prune: error: --ratio must be in (0, 1), got {args.ratio}")
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"channel_prune: error: --steps must be >= 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data, out = Path(args.data), Path(args.out)

    model = prune(dp.create_model("dncnn", weights=str(data / "weights/dncnn/DnCNN-B/net.pth")), args.ratio)
    width = hidden_width(model)
    arch = dict(model.arch, width=width)
    dataset = create("datasets", "image_folder", root=str(data / "denoise/Train400"), channels=1, patch_size=40,
                     patches_per_image=64)
    noise = create("degradations", "gaussian_noise", sigmas=[15, 25, 50])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr[0])
    step, total = 0, args.steps
    if args.resume and (out / "last.pt").is_file():
        ck = load_file(out / "last.pt")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if args.steps is not None and args.steps != ck["total"]:
            raise SystemExit(f"channel_prune: error: --steps {args.steps} differs from the run's stored total "
                             f"{ck['total']} ({out / 'last.pt'}); a resumed run keeps its schedule")
        step, total = ck["step"], ck["total"]
        print(f"resumed from {out / 'last.pt'} at step {step}/{total}")

    def batch(k: int):
        g = torch.Generator().manual_seed(1_000_003 * 17 + k)
        idx = torch.randint(0, len(dataset), (args.batch,), generator=g)
        clean = torch.stack([dataset[int(i)] for i in idx])
        noisy, _ = noise(clean, generator=g)
        return clean, noisy

    def train_step(k: int, lr: float) -> float:
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr
        clean, noisy = batch(k)
        loss = (model(noisy) - clean).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    if total is None:  # fix the step total from a timed probe on a throwaway copy of the state
        state = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict())
        t0 = time.process_time()
        for k in range(5):
            train_step(k, 0.0)
        per_step = (time.process_time() - t0) / 5  # CPU seconds over all threads
        model.load_state_dict(state[0])
        opt = torch.optim.Adam(model.parameters(), lr=args.lr[0])
        total = max(1, math.floor(args.core_minutes * 60 / per_step))
        print(f"width 64 -> {width}; {per_step:.2f} CPU-s per step -> {total} steps for {args.core_minutes} core-min")
    t0 = time.time()
    while step < total:
        loss = train_step(step, cosine_lr(step, total - 1, *args.lr))
        step += 1
        if step % args.checkpoint_every == 0 or step == total:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "total": total,
                         "arch": arch}, out / "last.pt")
            print(f"step {step}/{total} loss {loss:.5f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    save_atomic({"model": model.state_dict(), "arch": arch}, out / "pruned.pt")
    print(f"saved {out / 'pruned.pt'} (width {width}, {sum(p.numel() for p in model.parameters())} parameters)")


if __name__ == "__main__":
    main()
