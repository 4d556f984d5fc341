"""Low precision against what a user deploys instead (issue 37): dynprune int8 vs dense torch int8 and bf16.

Parts (``--part``, default both):
  layer   one 64->64 3x3 convolution + bias + ReLU on 1x64x481x321, 1 and 2 threads, interleaved rounds,
          medians: oneDNN fp32 and bf16 (channels_last), torch's dense int8 (``torch.ao`` quantized ConvReLU2d,
          x86 engine: oneDNN/FBGEMM u8 x s8), and dynprune's vector16 kernels at 1:4, 2:4 and 4:4: int8 (uint8
          in, uint8 out, as between two int8 layers), bf16 (bf16 in and out) and fp32.
  bsd68   end to end on BSD68 x sigma 15 / 25 / 50 (seeded like ``dynprune eval``), every variant on every
          noisy image in turn: dense DnCNN-B fp32 (channels_last eager), dense bf16 (the same under
          ``torch.autocast``), dense torch int8 (eager ``torch.ao`` post-training quantization, x86 engine,
          18 fused Conv+BN+ReLU in int8, first and last conv fp32, calibrated on the same images as ours), dense
          OpenVINO fp32, at its default precision (bf16 where the CPU has it) and int8 after NNCF post-training
          quantization on the same images (first and last conv excluded), and torch int8 through torchao's PT2E
          flow and torch.compile (X86InductorQuantizer defaults), when the ``bench`` extra is installed,
          and the ClassPruning checkpoint deployed at fp32, bf16 and int8 (classifier and grouping included).
          Mean ms per image and mean PSNR per sigma.

  observers  int8 calibration observers on the first ``--limit`` (default 12) BSD68 images: per branch, the
          PSNR of the int8 deployment minus the fp32 deployment's at sigma 15 / 25 / 50, with MinMax ranges and
          with the 99.999th / 99.99th / 99.9th percentile as the top of each range.

Calibration (both int8 models): the first 8 Train400 images, center 160x160, each at sigma 15, 25 and 50
(``dynprune.deploy.calibration.calibration_images``): training images, not BSD68.

    python benchmarks/lowp.py --data ../shared/data --checkpoint docs/checkpoints/cp_dncnn_b_vector.pt \
        [--part layer bsd68] [--threads 1 2] [--bsd-threads 2] [--limit N] [--out docs/results/lowp] \
        [--qat-checkpoint docs/checkpoints/cp_dncnn_b_vector_qat.pt]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import dynprune as dp
from dynprune import quant, sparse_cpu
from dynprune.deploy.calibration import calibration_images
from dynprune.metrics import psnr
from dynprune.models import load_trained
from dynprune.nm import nm_mask
from dynprune.registry import create
from speed import SIGMAS, _bsd68, interleaved, timed_bsd68

warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning)


def torch_int8_layer(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor):
    """torch's dense int8 ConvReLU2d (x86 engine) for weight ``w``, input ``x`` in [0, 1]."""
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d

    torch.backends.quantized.engine = "x86"
    qc = ConvReLU2d(w.shape[1], w.shape[0], 3, padding=1)
    scale = w.abs().amax((1, 2, 3)) / 127
    qc.set_weight_bias(torch.quantize_per_channel(w, scale, torch.zeros(len(w), dtype=torch.long), 0, torch.qint8), b)
    qc.scale, qc.zero_point = 0.05, 0
    xq = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last), 1 / 255, 0, torch.quint8)
    return lambda: qc(xq)


def part_layer(args) -> dict:
    torch.manual_seed(0)
    x = torch.rand(1, 64, 481, 321).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(64, 64, 3, 3) * 0.05, torch.randn(64) * 0.1
    wcl = w.contiguous(memory_format=torch.channels_last)
    xb, wb, bb = x.to(torch.bfloat16), wcl.to(torch.bfloat16), b.to(torch.bfloat16)
    variants = {"oneDNN fp32 (channels_last)": lambda: torch.relu(torch.nn.functional.conv2d(x, wcl, b, padding=1)),
                "oneDNN bf16 (channels_last)": lambda: torch.relu(torch.nn.functional.conv2d(xb, wb, bb, padding=1)),
                "torch int8 dense (x86 engine)": torch_int8_layer(w, b, x)}
    a_in, a_out = quant.ActQuant(1 / 255, 0), quant.ActQuant(0.05, 0)
    xu = quant.quantize(x, a_in)
    for r in ("1:4", "2:4", "4:4"):
        mask = nm_mask(w, r, pattern="vector16")
        wq, ws = quant.quantize_weight(w * mask)
        p = quant.pack_int8(wq, mask, 16, ws, b, a_in, a_out)
        variants[f"dynprune int8 vector16 {r}"] = (
            lambda p=p: sparse_cpu.vec_qconv2d(xu, p, 64, (3, 3), (1, 1), (1, 1), 0, 0, True))
        pb = sparse_cpu.pack_bf16(w * mask, mask, 16, b)
        variants[f"dynprune bf16 vector16 {r}"] = (
            lambda pb=pb: sparse_cpu.vec_bf16conv2d(xb, pb, 64, (3, 3), (1, 1), (1, 1), True, True))
        if r != "4:4":
            packed = sparse_cpu.compress_vector(w * mask, mask, 16, b)
            variants[f"dynprune fp32 vector16 {r}"] = (
                lambda pk=packed: sparse_cpu.vec_conv2d(x, pk, 64, (3, 3), (1, 1), (1, 1), True))
    out = {}
    for threads in args.threads:
        med = interleaved(variants, args.rounds, threads)
        ref8, ref16 = med["torch int8 dense (x86 engine)"], med["oneDNN bf16 (channels_last)"]
        fp = med["oneDNN fp32 (channels_last)"]
        out[threads] = med
        print(f"\n### One 64->64 3x3 layer on 1x64x481x321, {threads} thread(s), median of {args.rounds} interleaved "
              f"rounds ({sparse_cpu.cpu_name()})")
        print("| variant | ms | vs dense of its precision | vs oneDNN fp32 |\n|---|---:|---:|---:|")
        for k, v in med.items():
            ref = ref8 if "int8" in k else ref16 if "bf16" in k else fp
            print(f"| {k} | {v:.2f} | {ref / v:.2f}x | {fp / v:.2f}x |")
    return out


class TorchInt8DnCNN(nn.Module):
    """Dense DnCNN-B in torch's eager int8 (x86 engine): the 18 middle Conv+BN+ReLU fused and quantized (per
    channel weights, histogram-calibrated activations: ``get_default_qconfig("x86")``), first and last conv fp32."""

    def __init__(self, dense: nn.Module, calibration: torch.Tensor):
        super().__init__()
        from torch.ao import quantization as tq

        torch.backends.quantized.engine = "x86"
        seq = copy.deepcopy(dense.dncnn).eval()
        tq.fuse_modules(seq, [[str(i), str(i + 1), str(i + 2)] for i in range(2, len(seq) - 1, 3)], inplace=True)
        self.head, self.tail = seq[:2], seq[-1]
        self.body = nn.Sequential(tq.QuantStub(), *seq[2:-1], tq.DeQuantStub())
        self.body.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(self.body, inplace=True)
        with torch.no_grad():
            for k in range(0, len(calibration), 4):
                self.body(self.head(calibration[k:k + 4]))
        tq.convert(self.body, inplace=True)

    def forward(self, x):
        return x - self.tail(self.body(self.head(x)))


def openvino_variants(dense: nn.Module, calibration: torch.Tensor, threads: int) -> dict:
    """Dense DnCNN-B on OpenVINO's CPU plugin (the ``bench`` extra; {} without it), latency mode, ``threads``
    threads, dynamic H x W: fp32 (precision hint f32), its default precision (bf16 on CPUs that have it), and
    int8 after NNCF post-training quantization on ``calibration`` (first and last conv kept at the default
    precision; NNCF's defaults otherwise: MinMax ranges, fast bias correction). {name: noisy -> restored}."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        print("OpenVINO / NNCF not installed (pip install -e .[bench]): no OpenVINO rows")
        return {}
    model = ov.convert_model(copy.deepcopy(dense).to(memory_format=torch.contiguous_format),
                             example_input=torch.rand(1, 1, 64, 64), input=[1, 1, -1, -1])
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    q8 = nncf.quantize(model, nncf.Dataset([c[None].numpy() for c in calibration]), subset_size=len(calibration),
                       ignored_scope=nncf.IgnoredScope(names=[convs[0], convs[-1]]))
    core, out = ov.Core(), {}
    for name, m, hint in (("fp32", model, "f32"), ("default precision", model, None), ("int8 (NNCF)", q8, None)):
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        cfg.update({"INFERENCE_PRECISION_HINT": hint} if hint else {})
        compiled = core.compile_model(m, "CPU", cfg)
        prec = str(compiled.get_property("INFERENCE_PRECISION_HINT")).split("'")[1]
        out[f"dense DnCNN-B OpenVINO {name} ({prec})"] = \
            lambda x, c=compiled: torch.from_numpy(c(x.contiguous().numpy())[0])
    return out


def pt2e_variant(dense: nn.Module, calibration: torch.Tensor) -> dict:
    """Dense DnCNN-B in int8 through torchao's PT2E flow (the ``bench`` extra; {} without it): exported with
    dynamic H x W, ``X86InductorQuantizer`` at its default config (every conv, static per-tensor activations,
    per-channel weights), calibrated on ``calibration`` one image at a time, then ``torch.compile`` (inductor,
    freezing; static shapes: one compilation per image orientation, in the warm-up)."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        print("torchao not installed (pip install -e .[bench]): no PT2E row")
        return {}
    from torch._inductor import config as inductor_config

    model = copy.deepcopy(dense).to(memory_format=torch.contiguous_format).eval()
    dim = {2: torch.export.Dim("h", min=16, max=4096), 3: torch.export.Dim("w", min=16, max=4096)}
    with torch.no_grad():
        graph = torch.export.export(model, (calibration[:1],), dynamic_shapes=(dim,)).module()
        prepared = prepare_pt2e(graph, xiq.X86InductorQuantizer().set_global(
            xiq.get_default_x86_inductor_quantization_config()))
        for img in calibration:
            prepared(img[None])
        quantized = convert_pt2e(prepared)
    inductor_config.freezing = True
    compiled = torch.compile(quantized, dynamic=False)
    return {"dense DnCNN-B torch int8 (PT2E x86 inductor, torch.compile)": lambda x: compiled(x.contiguous())}


def part_bsd68(args) -> dict:
    torch.set_num_threads(args.bsd_threads)
    cp, cfg, _ = load_trained(args.checkpoint)
    cal = calibration_images(Path(args.data) / "denoise/Train400",
                             create("degradations", "gaussian_noise", sigmas=list(SIGMAS)), count=8)
    t0 = time.perf_counter()
    dep32 = dp.deploy(cp)
    dep8 = dp.deploy(cp, precision="int8", calibration=cal)
    dep16 = dp.deploy(cp, precision="bf16")
    qat = {}
    if args.qat_checkpoint:
        qat_cp = load_trained(args.qat_checkpoint)[0]
        qat = {"routed, deployed fp32 (QAT checkpoint)": dp.deploy(qat_cp),
               "routed, deployed int8 (QAT)": dp.deploy(qat_cp, precision="int8", calibration=cal)}
    print(f"deploy fp32, int8 (calibration on {len(cal)} images) and bf16: {time.perf_counter() - t0:.1f} s")
    dense = dp.create_model("dncnn", weights=args.weights or str(Path(args.data) / "weights/dncnn/DnCNN-B/net.pth"))
    dense = dense.eval().to(memory_format=torch.channels_last)
    tint8 = TorchInt8DnCNN(dense, cal).eval()
    cl = torch.channels_last

    def bf16(x):
        with torch.autocast("cpu", torch.bfloat16):
            return dense(x.contiguous(memory_format=cl)).float()

    variants = {"dense DnCNN-B fp32 (channels_last)": lambda x: dense(x.contiguous(memory_format=cl)),
                "dense DnCNN-B bf16 (autocast)": bf16,
                "dense DnCNN-B torch int8 (x86)": lambda x: tint8(x.contiguous(memory_format=cl)),
                **pt2e_variant(dense, cal),
                **openvino_variants(dense, cal, args.bsd_threads),
                "routed, deployed fp32": lambda x: dep32(x),
                "routed, deployed bf16": lambda x: dep16(x),
                "routed, deployed int8": lambda x: dep8(x),
                **{k: (lambda x, m=m: m(x)) for k, m in qat.items()}}
    names, images = _bsd68(Path(args.data))
    images = images[: args.limit or None]
    res, routing, _ = timed_bsd68(variants, images, cp, warm_both_orientations=True)
    n = len(images) * len(SIGMAS)
    ref = res["dense DnCNN-B fp32 (channels_last)"]
    print(f"\n### BSD68 end to end ({sparse_cpu.cpu_name()}), {len(images)} images x sigma {SIGMAS}, "
          f"{args.bsd_threads} thread(s), checkpoint {args.checkpoint}; routed models include the classifier")
    print("| model | ms / image | speed-up vs dense fp32 | PSNR 15 / 25 / 50 (dB) | mean | vs dense fp32 |\n"
          "|---|---:|---:|---|---:|---:|")
    mean0 = sum(ref["psnr"].values()) / 3
    for k, v in res.items():
        p = " / ".join(f"{v['psnr'][f'sigma={s}']:.2f}" for s in SIGMAS)
        mean = sum(v["psnr"].values()) / 3
        print(f"| {k} | {v['ms'] / n:.0f} | {ref['ms'] / v['ms']:.2f}x | {p} | {mean:.2f} | {mean - mean0:+.2f} |")
    for prec, tags in (("bf16", ("bf16 (autocast)", "default precision")), ("int8", ("int8",))):
        dense_k = min((k for k in res if k.startswith("dense") and any(t in k for t in tags)), key=lambda k: res[k]["ms"])
        for k in [k for k in res if k.startswith(f"routed, deployed {prec}")]:
            print(f"{k} vs the fastest dense {prec} ({dense_k}): {res[dense_k]['ms'] / res[k]['ms']:.2f}x")
    print(f"routing {routing}")
    return {"threads": args.bsd_threads, "images": len(images), "results": res, "routing": routing}


def part_observers(args) -> dict:
    from dynprune.deploy.calibration import calibrate_int8

    torch.set_num_threads(args.bsd_threads)
    cp, _, _ = load_trained(args.checkpoint)
    cal = calibration_images(Path(args.data) / "denoise/Train400",
                             create("degradations", "gaussian_noise", sigmas=list(SIGMAS)), count=8)
    dep32, dep8 = dp.deploy(cp), dp.deploy(cp, precision="int8", calibration=cal)
    _, images = _bsd68(Path(args.data))
    images = images[: args.limit or 12]
    out = {}
    print(f"\n### int8 calibration observers, {len(images)} BSD68 images, dB vs the fp32 deployment per branch")
    print("| observer | " + " | ".join(f"branch {r} at sigma {s}" for r, s in zip(cp.ratios, SIGMAS))
          + " |\n|---|---:|---:|---:|")
    for name, pct in (("MinMax", None), ("99.999th percentile", 99.999), ("99.99th", 99.99), ("99.9th", 99.9)):
        calibrate_int8(dep8.restorer, cp.restorer, cal, percentile=pct)
        deltas = []
        for i, s in enumerate(SIGMAS):
            g = torch.Generator().manual_seed(0)
            deg = create("degradations", "gaussian_noise", sigmas=[s])
            d = []
            with torch.inference_mode(), dp.use_branch(i):
                for img in images:
                    y = deg(img.unsqueeze(0), generator=g, level=0)[0]
                    d.append(psnr(dep8.restorer(y)[0], img) - psnr(dep32.restorer(y)[0], img))
            deltas.append(sum(d) / len(d))
        out[name] = deltas
        print(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in deltas) + " |")
    return out


def _short(name: str) -> str:
    """A plot label: 'dense DnCNN-B OpenVINO int8 (NNCF) (bfloat16)' -> 'dense OpenVINO int8 (NNCF) (bfloat16)'."""
    return name.replace("dense DnCNN-B ", "dense ").replace("routed, deployed ", "routed ")


def plot(bsd: dict, out: Path, title: str) -> None:
    """Mean PSNR (dB, BSD68 x sigma 15/25/50) against mean ms per image, one point per model (legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    colors = plt.get_cmap("tab20").colors
    for i, (k, v) in enumerate(bsd["results"].items()):
        mean = sum(v["psnr"].values()) / len(v["psnr"])
        ms = v["ms"] / (bsd["images"] * len(SIGMAS))
        ax.scatter(ms, mean, marker="o" if k.startswith("routed") else "s", s=55, color=colors[i % 20],
                   edgecolor="black", linewidth=0.5, label=f"{_short(k)}: {ms:.0f} ms, {mean:.2f} dB")
    ax.set_xlabel("ms per image (mean over BSD68 x sigma 15/25/50)")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlim(0, None)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="docs/checkpoints/cp_dncnn_b_vector.pt")
    ap.add_argument("--weights", help="dense DnCNN-B weights (default: DATA/weights/dncnn/DnCNN-B/net.pth)")
    ap.add_argument("--qat-checkpoint", help="bsd68: also deploy this checkpoint (a QAT fine-tune of --checkpoint) "
                                             "at fp32 and int8 (rows '... (QAT checkpoint)', '... int8 (QAT)')")
    ap.add_argument("--part", nargs="+", default=["layer", "bsd68"], choices=["layer", "bsd68", "observers"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bsd-threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N BSD68 images only")
    ap.add_argument("--out", default="docs/results/lowp")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw psnr_vs_ms.png from the newest OUT/lowp*.json that holds a bsd68 part")
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        runs = [(json.loads(f.read_text()), f.stat().st_mtime) for f in out.glob("lowp*.json")]
        res = max(runs, key=lambda r: ("bsd68" in r[0], r[1]))[0]
        plot(res["bsd68"], out / "psnr_vs_ms.png", f"DnCNN-B on BSD68, {res['cpu']}, {res['bsd68']['threads']} threads")
        return
    sparse_cpu.tune_allocator()
    if not sparse_cpu.has_int8_kernel():
        print("this CPU does not run the int8 kernel (AVX-512 VNNI + VBMI): int8 rows run the reference path")
    results = {"cpu": sparse_cpu.cpu_name(), "torch": torch.__version__}
    if "layer" in args.part:
        results["layer"] = part_layer(args)
    if "bsd68" in args.part:
        results["bsd68"] = part_bsd68(args)
    if "observers" in args.part:
        results["observers"] = part_observers(args)
    out.mkdir(parents=True, exist_ok=True)
    name = "lowp.json" if set(args.part) == {"layer", "bsd68"} else f"lowp_{'_'.join(args.part)}.json"
    (out / name).write_text(json.dumps(results, indent=1))
    if "bsd68" in results:
        plot(results["bsd68"], out / "psnr_vs_ms.png",
             f"DnCNN-B on BSD68, {results['cpu']}, {results['bsd68']['threads']} threads")


if __name__ == "__main__":
    main()
