"""Tiled inference on a 6000 x 6000 gray image through DnCNN-B (issue 13): peak memory and time against
16 tiles of 1500 x 1500 run alone, and exactness against an untiled run on a 1024 x 1024 crop.

The 6000 x 6000 image is a mosaic of BSD68's test images (mirrored to fill), with seeded Gaussian noise at
sigma 25. Each measurement runs in its own process (peak RSS = that process's ``ru_maxrss``):

- ``tiled``: ``dynprune.tiling.tiled`` over the whole image, tiles of 1500 + 2 * overlap pixels (so 4 x 4
  tiles, each keeping a 1500 x 1500 centre), overlap 32 (DnCNN-B's receptive-field radius is 20);
- ``alone``: 16 separate 1500 x 1500 crops, one model call each (the work tiling cannot avoid);
- ``untiled``: the whole image in one call, only with ``--untiled`` (DnCNN-B needs about 30 GB).

    python benchmarks/tiling.py --data ../shared/data [--size 6000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

WEIGHTS = "weights/dncnn/DnCNN-B/net.pth"


def mosaic(data: Path, size: int, sigma: float = 25.0, seed: int = 0) -> torch.Tensor:
    """(1, 1, size, size) float32: BSD68 images side by side (mirrored), plus N(0, sigma/255) noise."""
    from dynprune.imageio import read_folder

    _, imgs = read_folder(data / "denoise" / "BSD68", channels=1)
    canvas = torch.empty(1, 1, size, size)
    r = c = row_h = 0
    k = 0
    while r < size:
        img = imgs[k % len(imgs)]
        k += 1
        img = img if (k // len(imgs)) % 2 == 0 else img.flip(-1)
        h, w = min(img.shape[1], size - r), min(img.shape[2], size - c)
        canvas[0, :, r:r + h, c:c + w] = img[:, :h, :w]
        row_h = max(row_h, h)
        c += w
        if c >= size:
            r, c, row_h = r + row_h, 0, 0
    g = torch.Generator().manual_seed(seed)
    return canvas + torch.randn(canvas.shape, generator=g) * (sigma / 255)


def measure(args) -> dict:
    """One measurement in this process: {"seconds", "peak_gib", ...}."""
    import dynprune
    from dynprune.tiling import tiled

    torch.set_num_threads(args.threads)
    model = dynprune.create_model("dncnn", weights=str(args.data / WEIGHTS)).eval()
    x = mosaic(args.data, args.size)
    out = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        if args.worker == "tiled":
            tiled(model, x, args.tile + 2 * args.overlap, args.overlap)
        elif args.worker == "alone":
            step = args.size // 4
            for i in range(4):
                for j in range(4):
                    model(x[..., i * step:(i + 1) * step, j * step:(j + 1) * step].contiguous())
        elif args.worker == "untiled":
            model(x)
        elif args.worker == "crop":
            crop = x[..., :1024, :1024].contiguous()
            full = model(crop)
            tiles = tiled(model, crop, 400, args.overlap)
            diff = (tiles - full).abs().max().item()
            q = lambda t: t.clamp(0, 1).mul(255).round()  # noqa: E731 - the 8-bit image a user saves
            out.update(max_abs_diff=diff, same_8bit=float((q(tiles) == q(full)).float().mean()))
        out["seconds"] = time.perf_counter() - t0
    out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--tile", type=int, default=1500, help="kept centre of each tile (px)")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--untiled", action="store_true", help="also run the whole image in one call (needs ~30 GB)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return
    from dynprune.tiling import check_fits

    import dynprune

    model = dynprune.create_model("dncnn", weights=str(args.data / WEIGHTS))
    try:
        check_fits(model, (1, 1, args.size, args.size), "DnCNN-B untiled")
        print("untiled: fits by the estimate")
    except ValueError as err:
        print(f"untiled: refused before allocating: {err}")
    runs = ["crop", "alone", "tiled"] + (["untiled"] if args.untiled else [])
    res = {}
    for worker in runs:
        cmd = [sys.executable, __file__, "--worker", worker, "--data", str(args.data), "--size", str(args.size),
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--threads", str(args.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        res[worker] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {"error": p.stderr[-300:]}
        print(worker, res[worker], flush=True)
    print(f"\n{args.size} x {args.size} gray, DnCNN-B, {args.threads} threads, tile {args.tile} + 2 x {args.overlap} overlap")
    print("| run | seconds | peak RSS (GiB) |\n|---|---:|---:|")
    for w in ("alone", "tiled", "untiled"):
        if w in res and "seconds" in res[w]:
            print(f"| {w} | {res[w]['seconds']:.1f} | {res[w]['peak_gib']:.2f} |")
    if "seconds" in res.get("alone", {}) and "seconds" in res.get("tiled", {}):
        print(f"tiled / alone time: {res['tiled']['seconds'] / res['alone']['seconds']:.3f} "
              f"(overlap adds {((args.tile + 2 * args.overlap) / args.tile) ** 2 - 1:.1%} pixels at most)")
    if "max_abs_diff" in res.get("crop", {}):
        print(f"1024 x 1024 crop, tiles of 400 px vs untiled: max |diff| {res['crop']['max_abs_diff']:.2e}, "
              f"identical 8-bit pixels {100 * res['crop']['same_8bit']:.4f}%")


if __name__ == "__main__":
    main()
