"""BatchNorm's train/eval gap per branch of a trained ClassPruning checkpoint (docs/results.md, "The embedded
default"). On 64 seeded 40x40 training patches (scikit-image's photos, sigma 15), for every variable BatchNorm
of each branch: the largest per-channel ratio of its input's variance to its running variance, with the network
in training mode (batch statistics) and in eval mode (running statistics, as the model runs); with ``--base``,
the same for the dense base (``base.pt``) in eval mode.

    python benchmarks/bn_gap.py runs/demo/full/last.pt --base runs/demo/full/base.pt
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from dynprune.branch import use_branch
from dynprune.checkpoint import load_file
from dynprune.models import load_trained
from dynprune.registry import create


def patches(n: int = 64, size: int = 40, sigma: float = 15.0) -> torch.Tensor:
    images = create("datasets", "skimage_photos", channels=1).images
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=g))]
        y = int(torch.randint(im.shape[-2] - size, (1,), generator=g))
        x = int(torch.randint(im.shape[-1] - size, (1,), generator=g))
        crop = im[..., y:y + size, x:x + size]
        out.append(crop + sigma / 255 * torch.randn(crop.shape, generator=g))
    return torch.stack(out)


@torch.no_grad()
def ratios(net: nn.Module, x: torch.Tensor, train: bool) -> list[float]:
    """Per marked norm (``_gap_mark``), in order: max over channels of var(input) / running_var, ``net`` (a
    copy, so training mode updates nothing) run once on ``x``."""
    net = copy.deepcopy(net).train(train)
    seen: list[float] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(float((i[0].var(dim=(0, 2, 3)) / m.running_var).max())))
             for m in net.modules() if getattr(m, "_gap_mark", False)]
    net(x)
    for h in hooks:
        h.remove()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--base", help="the run's dense base.pt")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, _, _ = load_trained(args.checkpoint)
    x = patches()
    restorer = model.restorer
    for i, label in enumerate(str(r) for r in model.ratios):
        for m in restorer.modules():
            if hasattr(m, "_gap_mark"):
                del m._gap_mark
        for m in restorer.modules():
            if hasattr(m, "aux_norms"):
                (m if i == len(m.nm_ratios) - 1 else m.aux_norms[i])._gap_mark = True
        with use_branch(i):
            for mode in (True, False):
                r = ratios(restorer, x, mode)
                print(f"branch {label}, {'train' if mode else 'eval'} mode: " + " ".join(f"{v:.2f}" for v in r))
    if args.base:
        base = load_file(args.base)
        dense = create("models", "dncnn", **base["arch"])
        dense.load_state_dict(base["model"])
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m._gap_mark = True
        print("dense base, eval mode: " + " ".join(f"{v:.2f}" for v in ratios(dense, x, False)))


if __name__ == "__main__":
    main()
