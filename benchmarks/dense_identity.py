"""The pretrained DnCNN and the densest branch of its conversion on BSD68: identical outputs, and the
PSNR of shared/data/weights/dncnn/PSNR_CHECK.txt under its protocol (noise from one generator seeded 0
per sigma, drawn sequentially over the sorted files; noisy input not clipped; output clamped; PSNR on
float images, averaged).

    python benchmarks/dense_identity.py --data ../shared/data [--weights DnCNN-B] [--sigma 15 25 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import dynprune as dp
from dynprune.imageio import read_folder
from dynprune.metrics import psnr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--weights", default="DnCNN-B")
    ap.add_argument("--sigma", type=float, nargs="+", default=[15, 25, 50])
    args = ap.parse_args()
    data = Path(args.data)
    model = dp.create_model("dncnn", weights=str(data / "weights/dncnn" / args.weights / "net.pth")).eval()
    conv = dp.convert(model).eval()
    _, images = read_folder(data / "denoise/BSD68", channels=1)
    check = (data / "weights/dncnn/PSNR_CHECK.txt").read_text()
    print(f"| sigma | pretrained {args.weights} | converted, densest branch | max abs difference | PSNR_CHECK line |")
    print("|---:|---:|---:|---:|---|")
    for sigma in args.sigma:
        g = torch.Generator().manual_seed(0)
        a, b, diff = [], [], 0.0
        with torch.no_grad():
            for clean in images:
                noisy = clean.unsqueeze(0) + torch.randn(clean.unsqueeze(0).shape, generator=g) * sigma / 255
                ya, yb = model(noisy), conv(noisy)
                diff = max(diff, (ya - yb).abs().max().item())
                a.append(psnr(ya[0], clean))
                b.append(psnr(yb[0], clean))
        line = next((ln.strip() for ln in check.splitlines() if ln.startswith(args.weights + " ")
                     and f"sigma={sigma:g} " in ln), "")
        print(f"| {sigma:g} | {sum(a) / len(a):.3f} | {sum(b) / len(b):.3f} | {diff:.1e} | {line} |")


if __name__ == "__main__":
    main()
