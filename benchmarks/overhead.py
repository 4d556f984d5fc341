"""Wall-clock overhead of dynprune on this machine, measured against the dense model in the same run.

1. Converted model on its dense branch vs the original model (target: within 5%).
2. Routed inference (classifier + grouping + one call per branch + scatter) vs the ideal mix: the sum
   of each branch's time on its own group, measured alone.
3. Each branch's time vs dense: the *dynamic* model runs its masked weights through the same dense
   kernels, so its sparse branches are not faster; the deployed model (``dynprune.deploy``, the N:M CPU
   kernel) is measured by benchmarks/speed.py.

Timings interleave the variants and report medians of ``--repeats`` rounds (this VM drifts; ratios
from one run are what to compare).

    python benchmarks/overhead.py [--weights ../shared/data/weights/dncnn/DnCNN-B/net.pth] [--size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dynprune as dp
from dynprune.classifier import DifficultyClassifier


def _time(fn, repeats_inner: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeats_inner):
        fn()
    return (time.perf_counter() - t) / repeats_inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="DnCNN weights file (default: random DnCNN-20, same cost)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=6, help="images per routed batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base = dp.create_model("dncnn", weights=args.weights) if args.weights else dp.create_model("dncnn")
    base.eval()
    conv = dp.convert(base).eval()
    cp = dp.ClassPruning(conv, DifficultyClassifier(base.in_channels, 3)).eval()
    x1 = torch.rand(1, base.in_channels, args.size, args.size)
    xb = torch.rand(args.batch, base.in_channels, args.size, args.size)
    branches = torch.arange(args.batch) % 3  # an even mix of the three branches
    groups = [(b, (branches == b).nonzero(as_tuple=True)[0]) for b in range(3)]

    def on_branch(b, x):
        with dp.use_branch(b):
            return conv(x)

    variants = {
        "original": lambda: base(x1),
        "converted, dense branch": lambda: conv(x1),
        **{f"branch {r}": (lambda b=b: on_branch(b, x1)) for b, r in enumerate(("1:4", "2:4", "4:4"))},
        "routed batch": lambda: cp.route(xb, branches),
        "ideal mix (sum of groups)": lambda: [on_branch(b, xb[idx]) for b, idx in groups],
        "classifier": lambda: cp.classifier(xb),
    }
    samples = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up, fills the mask caches
            fn()
        for _ in range(args.repeats):
            for k, fn in variants.items():
                samples[k].append(_time(fn))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"DnCNN-20, 1x{base.in_channels}x{args.size}x{args.size} (batch {args.batch} for routing), "
          f"{args.threads} threads, torch {torch.__version__}, median of {args.repeats}")
    print("| variant | ms | ratio |\n|---|---:|---:|")
    ref = med["original"]
    for k in ("original", "converted, dense branch", "branch 1:4", "branch 2:4", "branch 4:4"):
        print(f"| {k} | {1e3 * med[k]:.1f} | {med[k] / ref:.3f} x original |")
    ideal = med["ideal mix (sum of groups)"]
    print(f"| ideal mix (sum of groups) | {1e3 * ideal:.1f} | 1.000 |")
    print(f"| routed batch (fixed routing) | {1e3 * med['routed batch']:.1f} | {med['routed batch'] / ideal:.3f} x ideal |")
    print(f"| classifier on the batch | {1e3 * med['classifier']:.1f} | {med['classifier'] / ideal:.3f} x ideal |")
    dense_ratio = med["converted, dense branch"] / ref
    verdict = "PASS" if dense_ratio <= 1.05 else "FAIL"
    print(f"\ndense-branch overhead: {100 * (dense_ratio - 1):+.1f}% ({verdict}: target within 5%)")


if __name__ == "__main__":
    main()
