"""Patch-routing throughput on this machine, against the alternatives in the same run.

Variants on one LR image split into 32x32 sub-images with stride 28 (ClassSR's test setting):
- grouped routing (dynprune): classify all patches, one batch per class, merge;
- one patch at a time (ClassSR's released loop): classify and run each patch with batch 1;
- dense: the widest network on every patch (batched), and on the whole image without patches.
Also the share of MACs the overlap adds. Branches: ClassSR-FSRCNN (separate nets 16/36/56) or
ClassPruning-FSRCNN (one net, 1:4/2:4/4:4); random weights (speed does not depend on them), and an
even class mix forced through a fixed classifier.

    python benchmarks/patches.py [--size 512 340] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dynprune as dp
from dynprune.classsr import SeparateBranches
from dynprune.patches import restore_by_patches, split_patches


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=[512, 340], metavar=("W", "H"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    w, h = args.size
    x = torch.rand(1, 3, h, w)
    patches, boxes = split_patches(x[0], 32, 28)
    n = len(boxes)
    classes = torch.arange(n) % 3
    lookup = {tuple(p.flatten()[:8].tolist()): int(c) for p, c in zip(patches, classes)}

    def classify(p):  # deterministic even mix; costs nothing, like a cached classifier
        return torch.tensor([lookup[tuple(q.flatten()[:8].tolist())] for q in p])

    separate = SeparateBranches([dp.create_model("fsrcnn", width=d).eval() for d in (16, 36, 56)])
    shared = dp.convert(dp.create_model("fsrcnn", width=56)).eval()
    dense = separate.nets[2]

    def one_by_one(restorer):
        out = torch.zeros(1, 3, h * 4, w * 4)
        cnt = torch.zeros(1, 1, h * 4, w * 4)
        for p, (y, xx) in zip(patches, boxes):
            with dp.use_branch(classify(p[None])[0].item()):
                o = restorer(p[None])
            out[..., y * 4:y * 4 + 128, xx * 4:xx * 4 + 128] += o
            cnt[..., y * 4:y * 4 + 128, xx * 4:xx * 4 + 128] += 1
        return out / cnt

    variants = {
        "ClassSR nets, grouped": lambda: restore_by_patches(separate, x, 32, 28, 4, classify=classify),
        "ClassSR nets, one patch at a time": lambda: one_by_one(separate),
        "N:M branches, grouped": lambda: restore_by_patches(shared, x, 32, 28, 4, classify=classify),
        "N:M branches, one patch at a time": lambda: one_by_one(shared),
        "dense FSRCNN-56 on all patches": lambda: restore_by_patches(dense, x, 32, 28, 4),
        "dense FSRCNN-56 on the whole image": lambda: dense(x),
    }
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():
            fn()
        for _ in range(args.repeats):
            for k, fn in variants.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    ref = statistics.median(times["dense FSRCNN-56 on all patches"])
    print(f"LR {w}x{h} x4, {n} patches of 32 (stride 28), even class mix, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| variant | s | patches/s | time vs dense on patches |\n|---|---:|---:|---:|")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.3f} | {n / m:.0f} | {m / ref:.2f} |")
    overlap = n * 32 * 32 / (h * w) - 1
    print(f"\noverlap: {n} patches cover {n * 32 * 32} LR px for {h * w} px: +{100 * overlap:.1f}% MACs over whole-image")


if __name__ == "__main__":
    main()
