"""SR-STE's decay once per update against once per use, on the first steps of a ClassPruning stage 2.

Networks that apply a layer several times per forward (RESCAN's recurrent stages, SRN's scales) used to
get SR-STE's decay lambda_w * (1 - m) * W once per *use* (it was added in backward). dynprune now adds it
once per optimizer update (Zhou et al. 2021, eq. 4; dynprune.srste). The old behaviour is reproduced
exactly by multiplying each layer's lambda_w by its number of uses per forward (the gradient is then
g + uses * lambda_w * (1 - m) * W, as before). From one seeded start and the same batches, this runs the
config's stage 2 (L_W over every branch, Adam) for --steps steps both ways and prints, per run: the uses
per layer, the decay-to-gradient ratio at step 0, how much the weights pruned by the sparsest branch
shrank, and the stage-2 loss.

    python benchmarks/srste_reuse.py --config configs/rescan_derain_cpu.yaml --steps 10
    python benchmarks/srste_reuse.py --config configs/srn_deblur_cpu.yaml --steps 5 --batch 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections import Counter

import torch

from dynprune.config import load_config
from dynprune.layers import DynamicNMMixin
from dynprune.methods.classpruning import STAGES, Trainer


def uses_per_forward(net: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """{dynamic layer name: calls in one forward of ``net`` on ``x``}."""
    calls: Counter = Counter()
    hooks = [m.register_forward_pre_hook(lambda m, i, name=n: calls.update([name]))
             for n, m in net.named_modules() if isinstance(m, DynamicNMMixin)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return dict(calls)


def run(tr: Trainer, start: dict, uses: dict[str, int] | None, steps: int, sc) -> dict:
    """``steps`` stage-2 steps from ``start``; ``uses`` given: the old per-use decay."""
    model = tr.model
    model.load_state_dict(start)
    net = model.restorer
    layers = {n: m for n, m in net.named_modules() if isinstance(m, DynamicNMMixin)}
    lam = {n: m.nm_decay for n, m in layers.items()}
    if uses is not None:
        for n, m in layers.items():
            m.nm_decay = lam[n] * uses.get(n, 1)
    pruned = {n: ~m.branch_mask(0) for n, m in layers.items()}
    w0 = {n: m.dense_weight.detach().clone() for n, m in layers.items()}
    opt = torch.optim.Adam(net.parameters(), lr=sc.lr_start)
    stage = STAGES.index("restoration")
    losses, ratio = [], None
    for step in range(steps):
        clean, degraded, labels, level = tr.phases()[stage].batches[step]
        loss, _ = tr._loss(stage, clean, degraded, labels, level, sc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:  # decay term against the loss gradient on the pruned weights
            g = torch.cat([m.dense_weight.grad[pruned[n]].abs() for n, m in layers.items()])
            d = torch.cat([(m.nm_decay * m.dense_weight.detach()[pruned[n]]).abs() for n, m in layers.items()])
            ratio = (d.mean() / g.mean()).item()
        opt.step()
        losses.append(loss.item())
    shrink = [(m.dense_weight.detach()[pruned[n]].abs().mean() / w0[n][pruned[n]].abs().mean()).item()
              for n, m in layers.items()]
    for n, m in layers.items():
        m.nm_decay = lam[n]
    return {"ratio": ratio, "shrink": statistics.mean(shrink), "loss0": losses[0], "loss": losses[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/rescan_derain_cpu.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None, help="override the stage-2 batch size")
    args = ap.parse_args()
    sets = ["out_dir=/tmp/dynprune_srste_reuse"] + ([f"stages.restoration.batch_size={args.batch}"] if args.batch else [])
    cfg = load_config(args.config, sets=sets)
    torch.manual_seed(cfg.seed)
    tr = Trainer(cfg, overwrite=True)  # a scratch folder of this probe
    sc = cfg.stages.restoration
    start = copy.deepcopy(tr.model.state_dict())
    _, degraded, _, _ = tr.phases()[STAGES.index("restoration")].batches[0]
    uses = uses_per_forward(tr.model.restorer.eval(), degraded[:1])
    hist = Counter(uses.values())
    print(f"config {args.config}: {len(uses)} dynamic layers; uses per forward: "
          + ", ".join(f"{k}x: {v} layers" for k, v in sorted(hist.items())))
    print(f"stage 2 from the config's start, {args.steps} steps of batch {sc.batch_size}, lambda_w = {cfg.convert.srste_decay:g}")
    print("| decay | decay / loss gradient (step 0) | pruned weights' mean abs after / before | stage-2 loss step 0 -> last |")
    print("|---|---:|---:|---|")
    for label, u in (("once per use (old)", uses), ("once per update (SR-STE eq. 4)", None)):
        r = run(tr, start, u, args.steps, sc)
        print(f"| {label} | {r['ratio']:.3f} | {r['shrink']:.4f} | {r['loss0']:.4f} -> {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
