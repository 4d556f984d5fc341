"""Wall-clock of the deployed N:M CPU kernels against dense DnCNN-B, measured in one process (issues 9, 36).

Parts (``--part``, default all):
  layer     one 64->64 3x3 convolution on 1x64x481x321: oneDNN (NCHW, channels_last) against the element
            kernel at 1:4 and 2:4 and the vector kernel (V = 8, 16, 32; 1:4, 2:4 and 4:4), AVX-512 and AVX2
            paths, 1 and 2 threads.
  branches  per branch, DnCNN-B (20 layers) on one BSD68 image (1x1x481x321), 1 and 2 threads: the
            deployed model against the fastest dense torch variant of NCHW eager, channels_last eager and
            torch.compile (inductor, freezing); interleaved rounds, medians.
  bsd68     end to end on all 68 BSD68 images at sigma 15 / 25 / 50 (seeded like ``dynprune eval``):
            dense DnCNN-B (its fastest variant from above) and, for the checkpoint and each ``--compare``
            checkpoint (e.g. the element and the vector16 ClassPruning DnCNN-B), the dynamic routed model,
            the deployed routed model (classifier, grouping and routing included) and each deployed branch
            forced on every image; if given, statically channel-pruned DnCNN-Bs (benchmarks/channel_prune.py).
            Per image, variants interleaved; PSNR of each, and each deployed routed model's PSNR against its
            dynamic one's. The plot ``OUT/../speed.png`` is PSNR against ms of these variants.
  memory    peak resident memory (ru_maxrss) of the dynamic and the deployed model, each in a fresh
            process, after one routed image per branch.
  plans     ``--plans``: DnCNN-B converted to one branch per plan (a ratio plan file from ``dynprune search``
            or a global ratio such as 1:4), deployed with the default ``max_density`` (layers at density
            <= 1/4 on the kernel, the others on oneDNN), on one BSD68 image against the fastest dense
            variant; which layers run sparse, MACs (% of dense) and ms, 1 and 2 threads. The weights do not
            change the time, so the pretrained DnCNN-B stands in for every plan.
  gcanet    per branch, the released GCANet dehaze checkpoint (``--gcanet-checkpoint``) on 1x3x321x481:
            which layers a kernel takes (the deploy report) and ms per branch, channels_last and NCHW.

``--pattern vector16`` (or another vector pattern) times the checkpoint's routed model under that mask
pattern instead of its own (parts branches, bsd68, plans, gcanet): its trained weights re-masked by the
pattern, its classifier and routing unchanged. Time and routing are those of a model trained with the
pattern (neither depends on the weights' values); its PSNR is not, and is printed only as the
deployed-vs-dynamic check.

The process's allocator is tuned for every variant alike (``sparse_cpu.tune_allocator``: large blocks
are reused instead of page-faulted in each layer; ``--default-allocator`` measures without it).

    python benchmarks/speed.py --data ../shared/data --checkpoint docs/checkpoints/cp_dncnn_b.pt \
        [--compare docs/checkpoints/cp_dncnn_b_vector.pt] [--pruned runs/channel_pruned/pruned.pt ...] \
        [--part branches bsd68 memory gcanet] [--rounds 7] [--pattern vector16] [--out docs/results/speed]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import dynprune as dp
from dynprune import sparse_cpu
from dynprune.imageio import read_folder
from dynprune.metrics import psnr
from dynprune.models import build_model, load_trained
from dynprune.registry import create

SIGMAS = (15, 25, 50)


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def interleaved(variants: dict, rounds: int, threads: int) -> dict[str, float]:
    """Median ms of each variant over ``rounds`` rounds, the variants interleaved within each round."""
    torch.set_num_threads(threads)
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up: caches, packing, compilation
            fn()
        for _ in range(rounds):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: _median_ms(v) for k, v in times.items()}


def dense_variants(weights: str, x: torch.Tensor) -> dict:
    """The dense DnCNN-B as NCHW eager, channels_last eager and torch.compile (inductor, freezing)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    # every DnCNN instance shares one forward code object: dense + channel-pruned models x 2 image
    # orientations x 2 thread settings exceed dynamo's default of 8 graphs and would fall back to eager
    dynamo_config.recompile_limit = 64
    nchw = dp.create_model("dncnn", weights=weights).eval()
    cl = dp.create_model("dncnn", weights=weights).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(cl, dynamic=False)   # one static graph per image shape
    xcl = x.contiguous(memory_format=torch.channels_last)
    return {"dense NCHW": lambda: nchw(x), "dense channels_last": lambda: cl(xcl),
            "dense torch.compile": lambda: compiled(xcl)}, {"NCHW": nchw, "channels_last": cl, "compile": compiled}


def _forced(model, branch: int):
    """``model`` (x -> restored) with every input on ``branch``."""
    def run(x):
        with dp.use_branch(branch):
            return model(x)
    return run


def on_branch(model, branch: int, x: torch.Tensor):
    """``model`` on the fixed input ``x``, forced on ``branch`` (no argument: for ``interleaved``)."""
    run = _forced(model, branch)
    return lambda: run(x)


def against_dense(variants: dict, dense: dict, args, title: str, extra: tuple[str, ...] = (), cols=None) -> dict:
    """Per thread count in ``args.threads``: medians of ``variants`` (interleaved rounds), printed as a table
    with the speed-up over the fastest of the ``dense`` variants; ``cols(name)`` fills the ``extra`` columns."""
    out = {}
    for threads in args.threads:
        med = interleaved(variants, args.rounds, threads)
        best = min(dense, key=med.get)
        out[threads] = {"ms": med, "best_dense": best}
        print(f"\n### {title}, {threads} thread(s), median of {args.rounds} interleaved rounds "
              f"({sparse_cpu.cpu_name()}, {sparse_cpu.kernel_status()['isa']})")
        print("| variant | " + "".join(f"{c} | " for c in extra) + f"ms | speed-up vs fastest dense ({best}) |")
        print("|---|" + "---:|" * (len(extra) + 2))
        for k, v in med.items():
            print(f"| {k} | " + (f"{cols(k)} | " if extra else "") + f"{v:.1f} | {med[best] / v:.2f}x |")
    return out


def load_checkpoint(args, path: str | None = None):
    """The ClassPruning model of ``path`` (default ``args.checkpoint``); under ``--pattern`` its weights
    re-masked by that pattern (a model with the trained classifier and routing, whose branches run what a
    model trained with the pattern runs)."""
    cp, cfg, ckpt = load_trained(path or args.checkpoint)
    if args.pattern and args.pattern != cfg.convert.pattern:
        cfg.convert.pattern = args.pattern
        cp = build_model(cfg, arch=ckpt.get("arch", {}))
        cp.load_state_dict(ckpt["model"])
        cp.eval()
    return cp


def part_branches(args, image: torch.Tensor) -> dict:
    cp = load_checkpoint(args)
    deployed = dp.deploy(cp, max_density=0.5)          # both sparse branches on a kernel
    onednn = dp.deploy(cp, backend="onednn")           # every branch on oneDNN (BN folded, ReLU fused)
    x = image.unsqueeze(0)
    dense, _ = dense_variants(args.weights, x)
    ratios = [str(r) for r in cp.ratios]
    variants = dict(dense)
    for i, r in enumerate(ratios):
        variants[f"dynamic {r}"] = on_branch(cp.restorer, i, x)
        variants[f"deployed {r} (kernel)" if r != "4:4" else f"deployed {r} (oneDNN)"] = on_branch(deployed.restorer, i, x)
        if r != "4:4":
            variants[f"deployed {r} (oneDNN)"] = on_branch(onednn.restorer, i, x)
    out = against_dense(variants, dense, args, f"DnCNN-B per branch, 1x1x{x.shape[-2]}x{x.shape[-1]}")
    return {"image_shape": list(x.shape), "ratios": ratios, "threads": out}


def part_plans(args, image: torch.Tensor) -> dict:
    from dynprune.audit import audit
    from dynprune.plan import RatioPlan

    x = image.unsqueeze(0)
    dense, _ = dense_variants(args.weights, x)
    variants, rows = dict(dense), {}
    pretrained = dp.create_model("dncnn", weights=args.weights).eval()   # convert() copies it per plan
    for spec in args.plans:
        plan = RatioPlan.load(spec) if Path(spec).is_file() else spec
        label = plan.name if isinstance(plan, RatioPlan) else f"uniform {spec}"
        net = dp.convert(pretrained, ratios=[plan], pattern=args.pattern or "element")
        rep = audit(net, torch.rand(1, 1, 64, 64))
        frac = rep.branches[0].effective_macs / rep.dense_macs
        deployed = dp.deploy(net)
        sparse = deployed.deploy_report.sparse_layers(0)
        rows[label] = {"macs": frac, "sparse_layers": len(sparse), "layers": len(deployed.deploy_report.layers)}
        variants[f"deployed {label}"] = on_branch(deployed, 0, x)

    def cols(k):
        r = rows.get(k.removeprefix("deployed "))
        return f"{100 * r['macs']:.1f} | {r['sparse_layers']} of {r['layers']}" if r else "100.0 | -"

    out = against_dense(variants, dense, args, f"DnCNN-B under ratio plans, 1x1x{x.shape[-2]}x{x.shape[-1]}",
                        ("MACs (% of dense)", "layers on the kernel"), cols)
    return {"image_shape": list(x.shape), "plans": rows, "threads": out}


def part_layer(args) -> dict:
    """One 64->64 3x3 layer on 1x64x481x321: oneDNN NCHW / channels_last against the kernel (both ISAs)."""
    import os

    import torch.nn.functional as F

    from dynprune.nm import nm_mask

    torch.manual_seed(0)
    w, b = torch.randn(64, 64, 3, 3), torch.randn(64)
    xn = torch.randn(1, 64, 481, 321)
    x, wcl = xn.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    variants = {"oneDNN NCHW": lambda: F.conv2d(xn, w, b, padding=1),
                "oneDNN channels_last": lambda: F.conv2d(x, wcl, b, padding=1)}
    for isa in ("avx512", "avx2"):
        os.environ["DYNPRUNE_ISA"] = isa
        sparse_cpu._build.cache_clear()
        if not sparse_cpu.kernel_status()["available"]:
            continue
        for n in (1, 2):
            values, index = sparse_cpu.compress(w, nm_mask(w, f"{n}:4"), n, 4)
            packed = sparse_cpu.pack_for_kernel(values, index, b, 64, n, 4, sparse_cpu.lanes())
            variants[f"element {isa} {n}:4"] = (lambda packed=packed, bits=512 if isa == "avx512" else 256:
                                                sparse_cpu._build()[0].nm_conv2d(x, *packed[:3], 64, 3, 3, 1, 1, 1, 1,
                                                                                 packed[3], True, bits))
        for v in (8, 16, 32):
            for n in (1, 2, 4):
                packed = sparse_cpu.compress_vector(w, nm_mask(w, f"{n}:4", pattern=f"vector{v}"), v, b)
                variants[f"vector{v} {isa} {n}:4"] = (lambda p=packed, bits=512 if isa == "avx512" else 256:
                                                      sparse_cpu._build()[0].vec_conv2d(x, *p, 64, 3, 3, 1, 1, 1, 1,
                                                                                        True, bits))
    os.environ.pop("DYNPRUNE_ISA")
    sparse_cpu._build.cache_clear()
    out = {}
    for threads in args.threads:
        med = interleaved(variants, args.rounds, threads)
        out[threads] = med
        ref = min(med["oneDNN NCHW"], med["oneDNN channels_last"])
        print(f"\n### One 64->64 3x3 layer (+bias, ReLU fused in the kernels), 1x64x481x321, {threads} thread(s), "
              f"{sparse_cpu.cpu_name()}, median of {args.rounds} interleaved rounds")
        print("| variant | ms | vs fastest oneDNN |\n|---|---:|---:|")
        for k, v in med.items():
            print(f"| {k} | {v:.1f} | {ref / v:.2f}x |")
    return out


def _bsd68(data: Path):
    files, images = read_folder(data / "denoise/BSD68", channels=1)
    return [f.name for f in files], images


def timed_bsd68(variants: dict, images: list, routers: dict, warm_both_orientations: bool = False):
    """Every variant (noisy (1, 1, H, W) -> restored) on every image of ``images`` at each sigma of ``SIGMAS`` (noise
    seeded like ``dynprune eval``), in turn per image. Returns ({variant: {"ms": total ms, "psnr": {"sigma=s":
    mean dB}}}, {router name: {"sigma=s": routing histogram}} of the ClassPruning models in ``routers``,
    {variant: per-image PSNR list over all sigmas})."""
    res = {k: {"ms": 0.0, "psnr": {}} for k in variants}
    routing, per_image = {name: {} for name in routers}, {k: [] for k in variants}
    with torch.inference_mode():
        x0 = images[0].unsqueeze(0)
        for fn in variants.values():  # warm-up (compilation, packing; both image orientations if asked)
            fn(x0)
            if warm_both_orientations:
                fn(x0.transpose(-1, -2).contiguous())
        for s in SIGMAS:
            deg = create("degradations", "gaussian_noise", sigmas=[s])
            g = torch.Generator().manual_seed(0)
            scores = {k: [] for k in variants}
            hist = {name: [0] * len(cp.ratios) for name, cp in routers.items()}
            for img in images:
                y = deg(img.unsqueeze(0), generator=g, level=0)[0]
                for k, fn in variants.items():
                    t0 = time.perf_counter()
                    out = fn(y)
                    res[k]["ms"] += 1e3 * (time.perf_counter() - t0)
                    scores[k].append(psnr(out[0], img))
                for name, cp in routers.items():
                    hist[name][int(cp.classify(y)[0])] += 1
            for k in variants:
                res[k]["psnr"][f"sigma={s}"] = sum(scores[k]) / len(scores[k])
                per_image[k] += scores[k]
            for name in routers:
                routing[name][f"sigma={s}"] = hist[name]
    return res, routing, per_image


def part_bsd68(args, dense_kind: str) -> dict:
    torch.set_num_threads(args.bsd_threads)
    _, images = _bsd68(Path(args.data))
    images = images[: args.limit or None]
    _, dense_models = dense_variants(args.weights, images[0].unsqueeze(0))
    dense = dense_models[dense_kind]
    cl = torch.channels_last
    variants = {"dense DnCNN-B": lambda x: dense(x.contiguous(memory_format=cl))}
    routers = {}
    for path in [args.checkpoint, *args.compare]:
        cp = load_checkpoint(args, path)
        pattern = str(dp.conversion_report(cp.restorer).pattern)
        name = pattern if pattern not in routers else f"{pattern} ({Path(path).stem})"
        routers[name] = cp
        deployed = dp.deploy(cp)
        variants[f"{name} routed (dynamic)"] = cp
        variants[f"{name} routed (deployed)"] = deployed
        for b, r in enumerate(cp.ratios):
            variants[f"{name} branch {r} (deployed)"] = _forced(deployed.restorer, b)
    for path in args.pruned:
        pruned = dp.create_model("dncnn", weights=path).eval().to(memory_format=cl)
        width = pruned.arch["width"]
        if dense_kind == "compile":
            pruned = torch.compile(pruned, dynamic=False)
        variants[f"channel-pruned DnCNN-B, width {width}"] = lambda x, m=pruned: m(x.contiguous(memory_format=cl))
    res, routing, per_image = timed_bsd68(variants, images, routers, warm_both_orientations=True)
    max_dpsnr = {name: max(abs(a - b) for a, b in zip(per_image[f"{name} routed (deployed)"],
                                                     per_image[f"{name} routed (dynamic)"])) for name in routers}
    n = len(images) * len(SIGMAS)
    ref = res["dense DnCNN-B"]["ms"]
    print(f"\n### BSD68 end to end ({sparse_cpu.cpu_name()}), {len(images)} images x sigma {SIGMAS}, {args.bsd_threads} "
          f"thread(s){', re-masked as ' + args.pattern if args.pattern else ''}; dense = DnCNN-B {dense_kind}; "
          f"routed models include the classifier and the grouping; a branch row runs the restorer alone with every image on that branch")
    print("| model | total s | ms / image | speed-up vs dense | PSNR 15 / 25 / 50 (dB) | mean |\n|---|---:|---:|---:|---|---:|")
    for k, v in res.items():
        p = " / ".join(f"{v['psnr'][f'sigma={s}']:.2f}" for s in SIGMAS)
        print(f"| {k} | {v['ms'] / 1e3:.1f} | {v['ms'] / n:.0f} | {ref / v['ms']:.2f}x | {p} | "
              f"{statistics.mean(v['psnr'].values()):.2f} |")
    print(f"routing {routing}; largest per-image |PSNR deployed - dynamic| = {max_dpsnr} dB")
    return {"threads": args.bsd_threads, "dense_variant": dense_kind, "images": len(images), "results": res,
            "routing": routing, "max_abs_psnr_diff_deployed_vs_dynamic": max_dpsnr}


def _model_bytes(model: torch.nn.Module) -> int:
    """Parameters, buffers and the weight caches (dynamic layers' packed orderings, deployed layers'
    kernel packing and fallback weights) of ``model``."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        elif isinstance(t, (tuple, list)):
            for u in t:
                add(u)
    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
    for m in model.modules():
        add(getattr(m, "_nm_order_cache", None) or ())  # a dynamic layer's packed magnitude ordering
        for cache in ("_packed", "_dense"):
            for v in getattr(m, cache, {}).values():
                add(v)
    return total


def _peak_rss_child(kind: str, checkpoint: str, shape: list[int]) -> None:
    cp, _, _ = load_trained(checkpoint)
    model = dp.deploy(cp) if kind == "deployed" else cp
    x = torch.rand(*shape)
    with torch.inference_mode():
        for b in range(len(cp.ratios)):
            model.route(x, torch.full((1,), b))
    print(json.dumps({"kind": kind, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "model_mb": _model_bytes(model) / 2 ** 20}))


def part_memory(args, shape: list[int]) -> dict:
    out = {}
    for kind in ("dynamic", "deployed"):
        cmd = [sys.executable, __file__, "--memory-child", kind, "--checkpoint", args.checkpoint,
               "--shape", *map(str, shape), "--default-allocator"]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        out[kind] = json.loads(line)
    print(f"\n### Peak memory, one routed {shape} image per branch, fresh process each (default allocator)")
    print("| model | peak RSS (MB) | weights incl. per-branch caches (MB) |\n|---|---:|---:|")
    for k, v in out.items():
        print(f"| {k} | {v['peak_rss_mb']:.0f} | {v['model_mb']:.2f} |")
    return out


def part_gcanet(args) -> dict:
    """GCANet per branch: the released dehaze checkpoint's restorer (under ``--pattern``, re-masked), its dense
    base (the checkpoint's weights on the dense branch, exported) as the reference."""
    cp = load_checkpoint(args, args.gcanet_checkpoint)
    net = cp.restorer.eval()
    base = dp.export_branch(net, len(dp.model_ratios(net)) - 1).eval()
    deployed = dp.deploy(net, max_density=0.5)
    nchw = dp.deploy(net, max_density=0.5, channels_last=False)
    x = torch.rand(1, 3, 321, 481)
    variants = {"dense GCANet": lambda: base(x)}
    for i, r in enumerate(dp.model_ratios(net)):
        variants[f"dynamic {r}"] = on_branch(net, i, x)
        variants[f"deployed {r}, channels_last"] = on_branch(deployed, i, x)
        variants[f"deployed {r}, NCHW + kernel copies"] = on_branch(nchw, i, x)
    sparse = len(deployed.deploy_report.sparse_layers(0))
    net_pattern = deployed.deploy_report.options["pattern"]
    print(deployed.deploy_report)
    out = {}
    for threads in args.threads:
        med = interleaved(variants, args.rounds, threads)
        out[threads] = med
        print(f"\n### GCANet per branch ({args.gcanet_checkpoint}, pattern {net_pattern}), 1x3x321x481, {threads} "
              f"thread(s), {sparse_cpu.cpu_name()} ({sparse} of {len(deployed.deploy_report.layers)} layers on a kernel at 1:4)")
        print("| variant | ms | vs dense |\n|---|---:|---:|")
        for k, v in med.items():
            print(f"| {k} | {v:.1f} | {med['dense GCANet'] / v:.2f}x |")
    return {"threads": out, "report": str(deployed.deploy_report)}


def plot(results: dict, out: Path) -> None:
    """PSNR (mean over sigma 15/25/50) against ms per BSD68 image of part bsd68's variants: dense, each
    pattern's deployed branches (a line) and routed models, channel-pruned models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bsd = results["bsd68"]
    if "dense DnCNN-B" not in bsd["results"] or not all(isinstance(v, dict) for v in bsd["routing"].values()):
        raise SystemExit("speed: error: this speed.json was written by an older speed.py (no per-pattern "
                         "routing); rerun --part bsd68 to plot it")
    n = bsd["images"] * len(SIGMAS)
    point = {k: (v["ms"] / n, statistics.mean(v["psnr"].values())) for k, v in bsd["results"].items()}
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    ax.plot(*point["dense DnCNN-B"], "ks", ms=10, label="dense DnCNN-B")
    for i, name in enumerate(bsd["routing"]):
        color = f"C{i}"
        branches = [(v, k.split(" branch ")[1].split(" ")[0]) for k, v in point.items()   # in ratio order
                    if k.startswith(f"{name} branch ")]
        ax.plot([v[0] for v, _ in branches], [v[1] for v, _ in branches], "o--", color=color, alpha=0.6,
                label=f"{name}: deployed branches")
        for v, r in branches:
            ax.annotate(r, v, textcoords="offset points", xytext=(5, -10), fontsize=8, color=color)
        ax.plot(*point[f"{name} routed (deployed)"], "*", color=color, ms=15, label=f"{name}: routed, deployed")
        ax.plot(*point[f"{name} routed (dynamic)"], "^", color=color, ms=8, mfc="none",
                label=f"{name}: routed, dynamic")
    pruned = [k for k in point if k.startswith("channel-pruned")]
    for i, k in enumerate(pruned, start=len(bsd["routing"])):
        ax.plot(*point[k], "D", color=f"C{i}", ms=8, label=k)
    ax.set_xlabel(f"ms per image ({bsd['threads']} threads, {results.get('cpu', 'CPU')})")
    ax.set_ylabel("BSD68 PSNR, mean over sigma 15/25/50 (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="docs/checkpoints/cp_dncnn_b.pt")
    ap.add_argument("--weights", help="dense DnCNN-B weights (default: DATA/weights/dncnn/DnCNN-B/net.pth)")
    ap.add_argument("--compare", nargs="*", default=[],
                    help="more ClassPruning checkpoints measured beside --checkpoint in part bsd68")
    ap.add_argument("--pruned", nargs="*", default=[], help="channel-pruned DnCNN-B files (benchmarks/channel_prune.py)")
    ap.add_argument("--part", nargs="+", default=["layer", "branches", "bsd68", "memory", "gcanet"],
                    choices=["layer", "branches", "bsd68", "memory", "gcanet", "plans"])
    ap.add_argument("--plans", nargs="*", default=["1:4", "2:4"],
                    help="ratio plan files (dynprune search) or global ratios, for --part plans")
    ap.add_argument("--pattern", help="time the checkpoint's model under this mask pattern (e.g. vector16), "
                    "its weights re-masked; also the pattern of --part plans and gcanet")
    ap.add_argument("--gcanet-checkpoint", default="docs/checkpoints/cp_gcanet_dehaze.pt")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bsd-threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N BSD68 images only")
    ap.add_argument("--default-allocator", action="store_true", help="do not tune glibc's allocator")
    ap.add_argument("--out", default="docs/results/speed")
    ap.add_argument("--plot-only", action="store_true", help="redraw speed.png from OUT/speed.json")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.default_allocator:
        sparse_cpu.tune_allocator()
    if args.memory_child:
        return _peak_rss_child(args.memory_child, args.checkpoint, args.shape)
    if args.plot_only:
        results = json.loads((Path(args.out) / "speed.json").read_text())
        plot(results, Path(args.out).parent / "speed.png")
        return None
    args.weights = args.weights or str(Path(args.data) / "weights/dncnn/DnCNN-B/net.pth")
    if not sparse_cpu.kernel_status()["available"]:
        raise SystemExit(f"speed: error: the N:M kernel cannot run here: {sparse_cpu.kernel_status()['reason']}")
    names, images = _bsd68(Path(args.data))
    image = images[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"torch": torch.__version__, "isa": sparse_cpu.kernel_status()["isa"], "cpu": sparse_cpu.cpu_name(),
               "pattern": args.pattern or "checkpoint's",
               "allocator": "default" if args.default_allocator else "tuned", "image": names[0]}
    if "layer" in args.part:
        results["layer"] = part_layer(args)
    if "branches" in args.part:
        results["branches"] = part_branches(args, image)
    if "bsd68" in args.part:
        kind = "compile"
        if "branches" in results:
            best = results["branches"]["threads"][args.bsd_threads]["best_dense"] \
                if args.bsd_threads in results["branches"]["threads"] else "dense torch.compile"
            kind = {"dense NCHW": "NCHW", "dense channels_last": "channels_last"}.get(best, "compile")
        results["bsd68"] = part_bsd68(args, kind)
    if "memory" in args.part:
        results["memory"] = part_memory(args, [1, 1, *image.shape[-2:]])
    if "gcanet" in args.part:
        results["gcanet"] = part_gcanet(args)
    if "plans" in args.part:
        results["plans"] = part_plans(args, image)
        (out / "plans.json").write_text(json.dumps(results["plans"], indent=1))
        if args.part == ["plans"]:
            return print(f"results: {out / 'plans.json'}")
    (out / "speed.json").write_text(json.dumps(results, indent=1, default=str))
    if "bsd68" in results and not args.pattern:   # a --pattern stand-in's PSNR is no quality figure: no plot
        plot(results, out.parent / "speed.png")
        print(f"\nplot: {out.parent / 'speed.png'}")
    print(f"results: {out / 'speed.json'}")


if __name__ == "__main__":
    main()
