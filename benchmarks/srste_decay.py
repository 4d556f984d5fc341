"""SR-STE's decay against the loss gradient, per branch, at the start of a ClassPruning fine-tune.

SR-STE (Zhou et al., ICLR 2021, eq. 4) adds lambda_w * (1 - mask) * W to the gradient of every weight the
running branch prunes. With nested masks the weights that the 1:4 branch prunes are the ones the 2:4 and
4:4 branches keep, and Adam divides each weight's gradient by its own running RMS, so a decay term that
is larger than the loss gradient becomes a full-size step towards zero. This script measures, on one
seeded stage-2 batch of the config's data and pretrained start, per branch: the mean |loss gradient| and
the mean |decay term| over the pruned weights, and the share of pruned weights whose gradient sign the
decay flips (their first Adam step then shrinks them instead of following the loss).

    python benchmarks/srste_decay.py [--config configs/dncnn_bsd68_cpu.yaml] [--batches 4]
"""

from __future__ import annotations

import argparse

import torch

from dynprune.branch import use_branch
from dynprune.config import load_config
from dynprune.layers import DynamicNMMixin
from dynprune.methods.classpruning import Trainer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dncnn_bsd68_cpu.yaml")
    ap.add_argument("--batches", type=int, default=4, help="stage-2 batches averaged (seeded, steps 0..n-1)")
    args = ap.parse_args()
    cfg = load_config(args.config, sets=["convert.mask_grad=ste", "out_dir=/tmp/dynprune_srste_probe",
                                         "distill.weight=0"])
    lam = load_config(args.config).convert.srste_decay
    tr = Trainer(cfg, overwrite=True)  # a scratch folder of this probe
    sc = cfg.stages.restoration
    batches = tr.phases()[2].batches  # stage 2 (restoration), step-keyed
    net = tr.model.restorer.train()
    layers = [m for m in net.modules() if isinstance(m, DynamicNMMixin)]
    print(f"config {args.config}: lambda_w = {lam:g}, {args.batches} batches of {sc.batch_size}")
    print("| branch | pruned weights | mean abs loss gradient | mean abs decay term | decay / gradient | sign flipped by decay |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, ratio in enumerate(tr.model.ratios):
        if ratio.is_dense:
            print(f"| {ratio} | 0 | | | | |")
            continue
        g_sum = None
        for step in range(args.batches):
            clean, degraded, _, _ = batches[step]
            net.zero_grad(set_to_none=True)
            with use_branch(b):
                tr.rec_loss(net(degraded), clean).mean().backward()
            g = torch.cat([m.dense_weight.grad.flatten() for m in layers])
            g_sum = g if g_sum is None else g_sum + g
        grad = g_sum / args.batches
        w = torch.cat([m.dense_weight.detach().flatten() for m in layers])
        pruned = ~torch.cat([m.branch_mask(b).flatten() for m in layers])
        decay = lam * w[pruned]
        gl = grad[pruned]
        flipped = ((gl + decay).sign() != gl.sign()).float().mean().item()
        print(f"| {ratio} | {int(pruned.sum()):,} | {gl.abs().mean():.3e} | {decay.abs().mean():.3e} | "
              f"{(decay.abs().mean() / gl.abs().mean()):.2f} | {100 * flipped:.1f}% |")


if __name__ == "__main__":
    main()
