"""Data parallelism and bf16 on the CPU, measured on the main job (issue 34).

Part ``ranks``: ClassPruning on DnCNN-B (``--config``, default configs/dncnn_b.yaml: pretrained DnCNN-B, Train400)
with stage 2 (classifier) as configured, then ``--steps`` steps of stage 3 (restoration) and no joint stage,
run three ways from the same start and the same global batch: one process fp32, ``torchrun --nproc_per_node 2``
(gloo, one thread per rank) fp32, and one process bf16 (CPU autocast). Reports the restoration stage's steps
per second (its last progress line), the largest relative difference of the logged losses (every step)
against the one-process fp32 run, and the routed PSNR (dB) each model reaches on the first ``--limit`` BSD68
images at sigma 15/25/50 (``dynprune eval``).

Part ``nodes``: a two-"node" run on this machine: two ``torchrun --nnodes 2 --nproc_per_node 1`` invocations
meeting through the c10d rendezvous on localhost train a small ClassPruning run, are killed after the
first checkpoint of stage 3, and the run is resumed and finished by one plain process (``--resume``).

    python benchmarks/distributed.py --part ranks nodes [--steps 200] [--limit 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dynprune.outputs import RunLog
from dynprune.sparse_cpu import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(cfg: Path, nproc: int, threads: int, extra=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DYNPRUNE_PROGRESS": "lines"}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
            "dynprune", "train", str(cfg), *extra] if nproc > 1 else
           [sys.executable, "-m", "dynprune", "train", str(cfg), *extra])
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done


def _rate(stderr: str, desc: str) -> float:
    rates = re.findall(rf"{re.escape(desc)}: \d+/\d+ \(100%\) ([0-9.]+) it/s", stderr)
    return float(rates[-1])


def _routed(ckpt: Path, data: Path, out: Path, limit: int) -> list[float]:
    subprocess.run([sys.executable, "-m", "dynprune", "-q", "eval", str(ckpt), "--data", str(data), "--sigma", "15",
                    "25", "50", "--limit", str(limit), "--out", str(out), "--overwrite"], cwd=ROOT, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True)
    rep = json.loads((out / "report.json").read_text())
    return [c["models"]["routed"]["psnr"] for c in rep["conditions"].values()]


def ranks(args) -> None:
    from dynprune.config import load_config

    base = load_config(args.config).model_dump(mode="json")
    base["stages"]["restoration"].update(epochs=1, steps_per_epoch=args.steps)
    base["stages"]["joint"]["epochs"] = 0
    base.update(log_every=1, tensorboard=False, checkpoint_every=10_000, threads=None)
    base["validation"]["every"] = 0
    runs = {}
    for name, nproc, threads, precision in (("1 process, fp32", 1, 2, "fp32"), ("2 gloo ranks, fp32", 2, 1, "fp32"),
                                            ("1 process, bf16", 1, 2, "bf16")):
        out = Path(args.work) / re.sub(r"\W+", "_", name)
        cfg = dict(base, out_dir=str(out), precision=precision)
        t0 = time.perf_counter()
        done = _launch(_write(cfg, Path(args.work) / f"{out.name}.yaml"), nproc, threads, ["--overwrite"])
        losses = [r["loss"] for r in RunLog(out / "log.jsonl").rows() if r.get("stage") == "restoration" and "loss" in r]
        runs[name] = dict(rate=_rate(done.stderr, "stage 3 (restoration)"), losses=losses, wall=time.perf_counter() - t0,
                          psnr=_routed(out / "last.pt", Path(args.data) / "denoise" / "BSD68", out / "eval", args.limit))
        print(name, {k: v for k, v in runs[name].items() if k != "losses"}, flush=True)
    ref = runs["1 process, fp32"]
    print(f"\nCPU: {cpu_name()}, 2 cores; {args.config}: stage 2 as configured, then {args.steps} steps of stage 3 "
          f"(global batch {base['stages']['restoration']['batch_size']}); routed PSNR on the first {args.limit} BSD68 "
          "images")
    print("| run | stage 3 steps/s | vs 1 process fp32 | largest relative loss difference | routed PSNR 15 / 25 / 50 (dB) |")
    print("|---|---:|---:|---:|---|")
    for name, r in runs.items():
        diff = max(abs(a - b) / abs(a) for a, b in zip(ref["losses"], r["losses"]))
        print(f"| {name} | {r['rate']:.3f} | {r['rate'] / ref['rate']:.2f}x | {diff:.1e} over {len(r['losses'])} steps | "
              + " / ".join(f"{p:.2f}" for p in r["psnr"]) + " |")


def _running(cfg: Path) -> list[int]:
    """Pids of the processes whose command line names ``cfg``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(cfg) in (proc / "cmdline").read_text().replace("\0", " "):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def nodes(args) -> None:
    work = Path(args.work) / "nodes"
    cfg = {"model": {"name": "dncnn", "kwargs": {"in_channels": 1, "depth": 8, "width": 32}},
           "dataset": {"name": "skimage_photos", "kwargs": {"channels": 1, "patch_size": 32, "patches_per_image": 64}},
           "stages": {s: {"epochs": 1, "steps_per_epoch": n, "batch_size": 8, "lr_start": 1e-3, "lr_end": 1e-5}
                      for s, n in (("base", 40), ("classifier", 20), ("restoration", 60), ("joint", 10))},
           "out_dir": str(work / "run"), "checkpoint_every": 10, "log_every": 5, "tensorboard": False, "threads": 1}
    path = _write(cfg, Path(args.work) / "nodes.yaml")
    shutil.rmtree(work, ignore_errors=True)  # a fresh run: the kill below watches its log
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNPRUNE_PROGRESS": "lines"}
    port = 29400 + os.getpid() % 500
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={k}",
                               "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
                               "--rdzv-id=dynprune-nodes", "-m", "dynprune", "train", str(path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for k in (0, 1)]
    log = work / "run" / "log.jsonl"
    t0 = time.time()
    while time.time() - t0 < 900:  # kill both "nodes" once stage 3 has written a checkpoint
        rows = list(RunLog(log).rows()) if log.is_file() else []
        if any(r.get("stage") == "restoration" and r.get("step", 0) >= 20 for r in rows):
            break
        if any(p.poll() is not None for p in procs):
            sys.exit("a node ended before it was killed:\n" + "".join(p.stdout.read()[-3000:] for p in procs))
        time.sleep(1)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    while _running(path):  # the ranks torchrun started, killed too (a power cut takes every process)
        for pid in _running(path):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    from dynprune.checkpoint import load_file

    killed = load_file(work / "run" / "last.pt")["run"]
    print(f"killed both nodes; last.pt: phase {killed['phases'][killed['index']]} step {killed['step']}, "
          f"written by {killed['processes']} processes", flush=True)
    done = _launch(path, 1, 1, ["--resume"])
    final = load_file(work / "run" / "last.pt")["run"]
    steps = {r.get("stage") for r in RunLog(log).rows() if "loss" in r}
    print(f"resumed in 1 process: finished {final['totals']} (phase index {final['index']} of {len(final['phases'])}), "
          f"stages logged {sorted(steps)}; 'resumed' in its output: {'resum' in done.stderr}")
    print(f"CPU: {cpu_name()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", choices=["ranks", "nodes"], default=["ranks", "nodes"])
    ap.add_argument("--config", default="configs/dncnn_b.yaml")
    ap.add_argument("--data", default=os.environ.get("DYNPRUNE_DATA", "../shared/data"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--work", default="/tmp/dynprune_distributed")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DYNPRUNE_DATA", str(Path(args.data).resolve()))
    if "nodes" in args.part:
        nodes(args)
    if "ranks" in args.part:
        ranks(args)


if __name__ == "__main__":
    main()
