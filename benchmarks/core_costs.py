"""What the dynamic layers cost against the dense model, measured in one run (issue 12).

Parts (``--part``, default all):
  memory   bytes held in eval after running every branch once: parameters, buffers, per-branch norm
           copies and the mask cache (one packed magnitude ordering per layer, 2 bits per weight for
           M=4), against the dense model; beside it what a cache of masked weights per branch held.
  eval     median ms of one forward: the original model, the converted model on its dense branch and
           on 1:4 (eager, inference mode; the sparse branch checks its cached ordering and masks the
           weight on every call).
  train    median ms of one training step (forward, backward, Adam) of the original model and of the
           converted model on 1:4 (mask from the cached ordering, SR-STE's record and decay).
  compile  the routed DnCNN-B (a ClassPruning checkpoint) on BSD68 images at sigma 15 / 25 / 50: eager
           against torch.compile (inductor) of the dynamic restorer, per image, classifier included.

Models: torchvision resnet50 (random weights, 1x3x224x224; train: batch 8) and DnCNN-B (20 layers,
1x1x256x256; train: batch 16 of 1x64x64). Variants interleave within each round; medians of --rounds.

    python benchmarks/core_costs.py --data ../shared/data --checkpoint docs/checkpoints/cp_dncnn_b.pt \
        [--part memory eval train compile] [--rounds 5] [--images 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision

import dynprune as dp
from dynprune.layers import dynamic_layers
from speed import SIGMAS, _bsd68, interleaved


def models(data: Path) -> dict:
    weights = data / "weights/dncnn/DnCNN-B/net.pth"
    dncnn = dp.create_model("dncnn", weights=str(weights)) if weights.is_file() else dp.create_model("dncnn")
    return {"resnet50": (torchvision.models.resnet50().eval(), (1, 3, 224, 224), (8, 3, 224, 224)),
            "DnCNN-B": (dncnn.eval(), (1, 1, 256, 256), (16, 1, 64, 64))}


def held_bytes(model: torch.nn.Module) -> int:
    """Parameters, buffers and mask caches of ``model`` (bytes)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for _, layer in dynamic_layers(model):
        if layer._nm_order_cache is not None:
            total += layer._nm_order_cache[0].numel() * layer._nm_order_cache[0].element_size()
    return total


def part_memory(args) -> None:
    print("\n| model | dense MB | converted, every branch run, MB | x dense | a masked-weight cache per branch held, MB |")
    print("|---|---:|---:|---:|---:|")
    for name, (model, shape, _) in models(args.data).items():
        net = dp.convert(model).eval()
        with torch.inference_mode():
            for b in range(3):
                with dp.use_branch(b):
                    net(torch.rand(shape))
        dense, conv = held_bytes(model), held_bytes(net)
        sparse_w = sum(l.dense_weight.numel() * 4 for _, l in dynamic_layers(net))
        old = conv - sum(l._nm_order_cache[0].numel() for _, l in dynamic_layers(net)) + 2 * sparse_w
        print(f"| {name} | {dense / 2**20:.1f} | {conv / 2**20:.1f} | {conv / dense:.3f} | {old / 2**20:.1f} "
              f"({old / dense:.2f}x) |")


def part_eval(args) -> None:
    print(f"\n| model | original ms | converted, dense branch | converted, 1:4 branch | threads {args.threads} |")
    print("|---|---:|---:|---:|---|")
    for name, (model, shape, _) in models(args.data).items():
        net = dp.convert(model).eval()
        x = torch.rand(shape)

        def sparse():
            with dp.use_branch(0):
                net(x)
        t = interleaved({"orig": lambda: model(x), "dense": lambda: net(x), "sparse": sparse},
                        args.rounds, args.threads)
        print(f"| {name} | {t['orig']:.1f} | {t['dense']:.1f} ({t['dense'] / t['orig']:.3f}x) | "
              f"{t['sparse']:.1f} ({t['sparse'] / t['orig']:.3f}x) | |")


def _train_step(model, opt, x, branch=None):
    def step():
        ctx = dp.use_branch(branch) if branch is not None else torch.enable_grad()
        with ctx:
            loss = model(x).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def part_train(args) -> None:
    torch.set_num_threads(args.threads)
    print(f"\n| model | original step ms | converted, 1:4 branch | overhead | threads {args.threads} |")
    print("|---|---:|---:|---:|---|")
    for name, (model, _, shape) in models(args.data).items():
        net = dp.convert(model).train()
        model.train()
        x = torch.rand(shape)
        steps = {"orig": _train_step(model, torch.optim.Adam(model.parameters(), 1e-5), x),
                 "sparse": _train_step(net, torch.optim.Adam(net.parameters(), 1e-5), x, 0)}
        times = {k: [] for k in steps}
        for fn in steps.values():
            fn()
        for _ in range(args.rounds):
            for k, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(1e3 * (time.perf_counter() - t0))
        o, s = statistics.median(times["orig"]), statistics.median(times["sparse"])
        print(f"| {name} | {o:.0f} | {s:.0f} | {100 * (s / o - 1):+.1f}% | |")


def part_compile(args) -> None:
    torch.set_num_threads(args.threads)
    cp = dp.load(args.checkpoint)
    names, images = _bsd68(args.data)
    images = images[: args.images]
    noisy = []
    for s in SIGMAS:
        g = torch.Generator().manual_seed(0)
        noisy += [(im + s / 255.0 * torch.randn(im.shape, generator=g)).unsqueeze(0) for im in images]
    eager_restorer = cp.restorer
    t0 = time.perf_counter()
    compiled = torch.compile(eager_restorer)
    with torch.inference_mode():  # compile every branch at both image orientations
        for x in noisy:
            with dp.use_branch(int(cp.classify(x)[0])):
                compiled(x)
    compile_s = time.perf_counter() - t0
    times = {"eager": [], "compiled": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for x in noisy:
                for k, net in (("eager", eager_restorer), ("compiled", compiled)):
                    t0 = time.perf_counter()
                    cp.restorer = net
                    cp.route(x)
                    times[k].append(1e3 * (time.perf_counter() - t0))
    cp.restorer = eager_restorer
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"\nrouted DnCNN-B ({args.checkpoint}), {len(noisy)} BSD68 images x {args.rounds} rounds, "
          f"{args.threads} threads; compiling took {compile_s:.0f} s")
    print("| routed model | median ms / image | vs eager |")
    print("|---|---:|---:|")
    print(f"| eager (dynamic layers) | {e:.0f} | 1.00x |")
    print(f"| torch.compile (inductor) | {c:.0f} | {e / c:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--checkpoint", default="docs/checkpoints/cp_dncnn_b.pt")
    ap.add_argument("--part", nargs="+", default=["memory", "eval", "train", "compile"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=6, help="BSD68 images per sigma for the compile part")
    args = ap.parse_args()
    for part in args.part:
        {"memory": part_memory, "eval": part_eval, "train": part_train, "compile": part_compile}[part](args)


if __name__ == "__main__":
    main()
