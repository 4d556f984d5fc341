"""The shared run loop's data pipeline, measured: step throughput with 0 and 2 DataLoader workers, the share of
a step spent waiting for its batch, and the memory a DIV2K-sized training folder takes per process.

Part ``throughput``: ClassPruning stage 3 (restoration: every branch's L_W through the frozen classifier) on
the config's network and data (default DnCNN-B on Train400, batch 32), ``--steps`` steps per setting,
settings interleaved over ``--rounds`` rounds, medians. Workers 0 builds each batch in the training process,
between steps, which is exactly the work the hand-written loop did before dynprune.train; workers 2 builds
them in two processes while the step runs. The batches are the same (tests/train/test_data.py).
``--precision fp32 bf16`` adds the training arithmetic as a dimension (bf16: torch.autocast on the CPU), and
``--memory-format nchw nhwc`` the batches' memory layout (nhwc: config ``channels_last``).

Part ``memory``: writes ``--images`` synthetic 8-bit RGB images of 2040 x 1356 (DIV2K's size; smooth noise, so
PNG keeps them small on disk) into ``--folder`` once, then, in a fresh process each, builds the training
dataset as ``image_folder`` does (8-bit images kept as uint8) and as float32 (the layout before), and reports
the peak resident memory. The float32 layout is measured on at most ``--float-images`` images (800 would
need 26.5 GB) and its per-image cost extrapolated.

    python benchmarks/train_loop.py --part throughput memory [--config configs/dncnn_b.yaml] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dynprune.sparse_cpu import cpu_name


def throughput(args) -> None:
    import dynprune.train.run as run_mod
    from dynprune.config import load_config
    from dynprune.methods.classpruning import STAGES, Trainer

    waits: list[float] = []
    original = run_mod.batch_loader

    def timed_loader(*a, **k):  # time spent in next(loader): the step waiting for its batch
        loader = original(*a, **k)

        def gen():
            it = iter(loader)
            while True:
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                waits.append(time.perf_counter() - t0)
                yield batch
        return gen()

    run_mod.batch_loader = timed_loader
    stage = STAGES.index("restoration")
    variants = [(w, p, f) for f in args.memory_format for p in args.precision for w in args.workers]
    results: dict[tuple, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for w, p, f in variants:
            sets = [f"out_dir=/tmp/dynprune_loop_bench/w{w}{p}{f}", f"data.workers={w}", f"precision={p}",
                    f"channels_last={f == 'nhwc'}",
                    "tensorboard=false", "validation.every=0", f"threads={args.threads}",
                    f"stages.restoration.steps_per_epoch={args.steps}", "stages.restoration.epochs=1",
                    "checkpoint_every=100000"]
            cfg = load_config(args.config, sets=sets)
            tr = Trainer(cfg, overwrite=True)
            tr.run.index = stage  # straight to stage 2 from the config's start
            waits.clear()
            t0 = time.perf_counter()
            tr.run.fit(tr, until=stage + 1)
            wall = time.perf_counter() - t0
            steady = waits[1:]  # the first batch of a fresh loader also waits for its workers to start
            results[(w, p, f)].append((args.steps / wall, sum(steady) / max(wall, 1e-9)))
            print(f"round {r}: workers {w}, {p}, {f}: {args.steps / wall:.3f} steps/s, waiting for batches "
                  f"{100 * sum(steady) / wall:.1f}% of the time", flush=True)
    print(f"\nCPU: {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; config {args.config}, "
          f"stage 3 (restoration), {args.steps} steps x {args.rounds} rounds, medians")
    print("| DataLoader workers | precision | memory format | steps/s | vs the first row | time waiting for the batch |")
    print("|---:|---|---|---:|---:|---:|")
    base = statistics.median(s for s, _ in results[variants[0]])
    for v in variants:
        sps = statistics.median(s for s, _ in results[v])
        wait = statistics.median(f for _, f in results[v])
        print(f"| {v[0]} | {v[1]} | {v[2]} | {sps:.3f} | {sps / base:.2f}x | {100 * wait:.1f}% |")


def synthesize(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for k in range(n):
        path = folder / f"{k:04d}.png"
        low = torch.rand(1, 3, 34, 51, generator=g)  # smooth noise: small PNGs, quick to write
        if path.is_file():
            continue
        img = torch.nn.functional.interpolate(low, size=(1356, 2040), mode="bilinear", align_corners=False)[0]
        arr = img.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(arr).save(tmp, compress_level=1)  # fast zlib; decoding cost is what is read back
        tmp.rename(path)


def _peak_child(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args) -> None:
    folder = Path(args.folder)
    synthesize(folder, args.images)
    probe = ("import json, resource, sys\n"
             "from dynprune.plugins.datasets import PatchDataset\n"
             "from dynprune.imageio import read_folder\n"
             "files, images = read_folder(sys.argv[1] if len(sys.argv) > 1 else {folder!r}, 3, compact_8bit={compact})\n"
             "files, images = files[:{n}], images[:{n}]\n"
             "ds = PatchDataset(images, 40, 64)\n"
             "print(json.dumps({{'images': len(images), 'peak_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,"
             " 'held_gb': sum(t.numel() * t.element_size() for t in images) / 2**30, 'dtype': str(images[0].dtype)}}))")
    rows = []
    small = Path(str(folder) + f"_first{args.float_images}")
    small.mkdir(exist_ok=True)
    for k in range(args.float_images):
        link = small / f"{k:04d}.png"
        if not link.exists():
            link.symlink_to((folder / f"{k:04d}.png").resolve())
    for label, compact, src, n in (("float32 (before)", False, small, args.float_images),
                                   ("uint8 (image_folder now)", True, small, args.float_images),
                                   ("uint8 (image_folder now)", True, folder, args.images)):
        r = _peak_child(probe.format(folder=str(src), compact=compact, n=n))
        rows.append((label, r))
        print(f"{label}: {r}", flush=True)
    print(f"\nCPU: {cpu_name()}; {args.images} synthetic 8-bit RGB images of 2040 x 1356 (DIV2K's size) in {folder}")
    print("| layout | images | held (GB) | peak RSS of the process (GB) | per image (MB) | 800 images (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in rows:
        per = r["held_gb"] * 1024 / r["images"]
        print(f"| {label} | {r['images']} | {r['held_gb']:.2f} | {r['peak_gb']:.2f} | {per:.1f} | {per * 800 / 1024:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", choices=["throughput", "memory"], default=["throughput", "memory"])
    ap.add_argument("--config", default="configs/dncnn_b.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                    help="training arithmetic of each variant (bf16: CPU autocast)")
    ap.add_argument("--memory-format", nargs="+", choices=["nchw", "nhwc"], default=["nchw"],
                    help="the batches' memory layout (nhwc: config channels_last)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folder", default="/tmp/dynprune_div2k_synth")
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--float-images", type=int, default=100)
    args = ap.parse_args()
    if "throughput" in args.part:
        throughput(args)
    if "memory" in args.part:
        memory(args)


if __name__ == "__main__":
    main()
