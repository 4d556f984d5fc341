"""ClassSR vs ClassPruning-SR on FSRCNN x4, end to end on CPU, with the numbers docs/results_sr.md reports.

1. HR sub-images 128x128 (LR 32x32, bicubic x4) from rgb/Sun_Hays80, the 4 held-out images excluded.
2. FSRCNN-56 trained on all of them: the reference and the "-O" dense baseline.
3. ClassSR labels: the reference's PSNR per sub-image, binned at its terciles (ClassSR's fixed
   thresholds 27.17/35.15 dB belong to MSRResNet on DIV2K).
4. (a) ClassSR: FSRCNN-16/36/56 each trained on its class, then the Class-Module with the SR nets fixed.
   (b) ClassPruning-SR: the reference converted to 1:4/2:4/4:4 branches, trained by ``dynprune train``
   with configs/classpruning_fsrcnn_x4.yaml (stages 1-3).
5. Set5/Set14 x4 (their LR_bicubic files), 32/28 patches, PSNR/SSIM on Y with crop border 4; MACs per
   image; patch-class fractions; a 2048x1360 composite of the held-out images with its routing map.

    python benchmarks/classsr_run.py --data ../shared/data --out runs/classsr [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dynprune as dp
from dynprune.checkpoint import load_file, save_atomic
from dynprune.classsr import ClassSRClassifier, SeparateBranches, psnr_labels
from dynprune.methods.classsr import train_classsr_classifier, train_sr
from dynprune.config import load_config
from dynprune.imageio import read_folder, write_image
from dynprune.metrics import psnr, ssim
from dynprune.patches import restore_by_patches
from dynprune.plugins.datasets import PatchDataset
from dynprune.plugins.sr import bicubic_downsample, load_sr_pairs
from dynprune.methods.classpruning import Trainer

HELD_OUT = 4
WIDTHS = (16, 36, 56)
PAPER = "ClassSR paper: FSRCNN branches 141/304/468 M FLOPs per 32x32 LR patch; DIV2K 0896: ClassSR-FSRCNN 36.97 dB at 256 M vs FSRCNN 36.81 dB at 468 M"


def sub_images(images, n, seed):
    ds = PatchDataset(images, patch_size=128, patches_per_image=max(1, n // len(images) + 1), seed=seed)
    hr = torch.stack([ds[i] for i in range(n)])
    return bicubic_downsample(hr, 4), hr


def evaluate(models, pairs, dense_macs_patch, audits):
    """PSNR/SSIM (Y, crop 4) and MACs per image of each name -> (restorer, classify, audit key, fixed branch)."""
    out = {}
    for name, (fn, classify, key, fixed) in models.items():
        rows, counts = [], None
        rep = audits[key]
        per = torch.tensor([br.effective_macs for br in rep.branches], dtype=torch.float64)
        per_c = torch.tensor([br.flops("classsr") for br in rep.branches], dtype=torch.float64)
        dense_c = audits["classsr"].branches[-1].flops("classsr")
        for img_name, lr, hr in pairs:
            with torch.no_grad():
                res = restore_by_patches(fn, lr.unsqueeze(0), 32, 28, 4, classify=classify)
            sr, b = res.output[0], res.branches[0]
            if classify is not None:
                macs = float(per[b].sum() + rep.classifier_macs * len(b))
                flops_c = float(per_c[b].sum() + 2 * rep.classifier_macs * len(b))
                hist = torch.bincount(b, minlength=3)
                counts = hist if counts is None else counts + hist
            else:
                macs, flops_c = float(per[fixed]) * len(b), float(per_c[fixed]) * len(b)
            rows.append({"image": img_name, "psnr": psnr(sr, hr, crop_border=4, y_channel=True),
                         "ssim": ssim(sr, hr, crop_border=4, y_channel=True), "macs": macs,
                         "flops_classsr": flops_c, "dense_flops_classsr": dense_c * len(b),
                         "dense_macs": dense_macs_patch * len(b), "patches": len(b)})
        n = len(rows)
        out[name] = {"psnr": sum(r["psnr"] for r in rows) / n, "ssim": sum(r["ssim"] for r in rows) / n,
                     "macs_fraction": sum(r["macs"] for r in rows) / sum(r["dense_macs"] for r in rows),
                     "flops_fraction_classsr": sum(r["flops_classsr"] for r in rows)
                     / sum(r["dense_flops_classsr"] for r in rows),
                     "class_fractions": (counts / counts.sum()).tolist() if counts is not None else None,
                     "images": rows}
    return out


def routing_map(lr, res, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h, w = lr.shape[-2:]
    votes = torch.zeros(3, h, w)
    for b, (y, x) in zip(res.branches[0].tolist(), res.boxes[0]):
        votes[b, y:y + 32, x:x + 32] += 1
    cls = votes.argmax(0).numpy()
    colors = np.array([[0.2, 0.8, 0.2], [1.0, 0.85, 0.1], [0.9, 0.2, 0.2]])
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.4))
    ax[0].imshow(lr.permute(1, 2, 0).numpy())
    ax[0].set_title("LR input (512x340)")
    ax[1].imshow(lr.permute(1, 2, 0).numpy())
    ax[1].imshow(colors[cls], alpha=0.45)
    frac = torch.bincount(res.branches[0], minlength=3).float() / len(res.branches[0])
    ax[1].set_title(f"{title}: easy {100 * frac[0]:.0f}% / medium {100 * frac[1]:.0f}% / hard {100 * frac[2]:.0f}%")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/classsr")
    ap.add_argument("--pool", type=int, default=3000, help="training sub-images")
    ap.add_argument("--steps", type=int, default=3000, help="steps per SR network")
    ap.add_argument("--config", default="configs/classpruning_fsrcnn_x4.yaml")
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, Set5 only")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the trained SR networks of a previous run in --out; retrain only the routing parts")
    ap.add_argument("--classsr-weights", type=float, nargs=3, default=[1000.0, 0.5, 3.0],
                    metavar=("L1", "CLASS", "AVERAGE"), help="ClassSR loss weights (its configs: 1000 0.5 3)")
    ap.add_argument("--cost-weight", type=float, help="ClassPruning L_C weight w3 (default: the config's)")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()
    steps = 20 if args.quick else args.steps
    timings = {}

    files, images = read_folder(data / "rgb/Sun_Hays80", channels=3)
    held = list(zip(files[:HELD_OUT], images[:HELD_OUT]))
    lr, hr = sub_images(images[HELD_OUT:], 200 if args.quick else args.pool, seed=0)

    if args.reuse:
        ref = dp.create_model("fsrcnn", weights=str(out / "fsrcnn56_ref.pt")).eval()
    else:
        ref = dp.create_model("fsrcnn", width=56)
        train_sr(ref, lr, hr, steps, desc="reference FSRCNN-56")
        save_atomic({"model": ref.state_dict(), "arch": ref.arch}, out / "fsrcnn56_ref.pt")
    timings["reference"] = time.time() - t0

    labels, scores = psnr_labels(ref, lr, hr, [0.0, 1.0], y_channel=True)  # thresholds replaced below
    t = torch.quantile(scores, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)).tolist()
    labels, _ = psnr_labels(ref, lr, hr, t, y_channel=True)
    json.dump({"thresholds_db": t, "counts": torch.bincount(labels, minlength=3).tolist()},
              open(out / "labels.json", "w"))

    t1 = time.time()
    nets = [dp.create_model("fsrcnn", width=w) for w in WIDTHS]
    classsr = dp.ClassPruning(SeparateBranches(nets, [f"FSRCNN-{w}" for w in WIDTHS]), ClassSRClassifier())
    if args.reuse:
        saved = load_file(out / "classsr_fsrcnn.pt")["model"]
        classsr.restorer.load_state_dict({k[len("restorer."):]: v for k, v in saved.items() if k.startswith("restorer.")})
    else:
        for k, (width, net) in enumerate(zip(WIDTHS, nets)):
            idx = (labels == k).nonzero(as_tuple=True)[0]
            train_sr(net, lr[idx], hr[idx], steps, seed=k + 1, desc=f"ClassSR branch FSRCNN-{width} (class {k})")
    train_classsr_classifier(classsr, lr, hr, steps // 2, weights=tuple(args.classsr_weights))
    save_atomic({"model": classsr.state_dict(), "widths": WIDTHS}, out / "classsr_fsrcnn.pt")
    timings["classsr"] = time.time() - t1

    t2 = time.time()
    cfg = load_config(args.config, {"out_dir": str(out / "classpruning")})
    cfg.model.weights = str(out / "fsrcnn56_ref.pt")
    cfg.labeler.kwargs.update(thresholds=t, reference_kwargs={"weights": str(out / "fsrcnn56_ref.pt")},
                              metric_kwargs={"y_channel": True})
    cfg.dataset.kwargs.update(root=str(data / "rgb/Sun_Hays80"), exclude=[f.name for f, _ in held])
    if args.cost_weight is not None:
        w = cfg.stages.joint.loss_weights
        cfg.stages.joint.loss_weights = (w[0], w[1], args.cost_weight)
    if args.reuse:  # keep the trained branches, retrain the classifier (stage 1) and the joint stage
        prev = out / "classpruning_prev.pt"
        if not prev.is_file():
            (out / "classpruning/last.pt").rename(prev)
        cfg.init_from, cfg.stages.restoration.epochs = str(prev), 0
        cfg.out_dir = str(out / "classpruning_rerun")
    if args.quick:
        for st in (cfg.stages.classifier, cfg.stages.restoration, cfg.stages.joint):
            st.steps_per_epoch = 3
    cp = Trainer(cfg, overwrite=True).fit()  # this benchmark retrains its run from the start
    timings["classpruning"] = time.time() - t2

    audits = {"classsr": dp.audit(classsr, torch.zeros(1, 3, 32, 32)), "cp": dp.audit(cp, torch.zeros(1, 3, 32, 32))}
    dense_patch = audits["classsr"].branches[-1].dense_macs
    models = {"FSRCNN-O (dense)": (ref, None, "classsr", 2),
              **{f"ClassSR branch FSRCNN-{w}": (n, None, "classsr", k) for k, (w, n) in enumerate(zip(WIDTHS, nets))},
              "ClassSR routed": (classsr.restorer, classsr.classify, "classsr", None),
              **{f"CP branch {r}": ((lambda x, i=i: _on(cp.restorer, i, x)), None, "cp", i)
                 for i, r in enumerate(("1:4", "2:4", "4:4"))},
              "ClassPruning-SR routed": (cp.restorer, cp.classify, "cp", None)}
    results = {"paper": PAPER, "thresholds_db": t, "timings_s": timings, "steps": steps, "args": vars(args),
               "classsr_loss_weights": args.classsr_weights, "cp_loss_weights": list(cfg.stages.joint.loss_weights),
               "branch_macs_per_patch": {k: [b.effective_macs for b in a.branches] for k, a in audits.items()},
               "branch_flops_classsr_convention": {k: [b.flops("classsr") for b in a.branches] for k, a in audits.items()},
               "classifier_macs_per_patch": audits["classsr"].classifier_macs, "sets": {}}
    for set_name in (("Set5",) if args.quick else ("Set5", "Set14")):
        pairs = load_sr_pairs(data / "sr" / set_name, 4)
        results["sets"][set_name] = evaluate(models, pairs, dense_patch, audits)

    # large image: 2x2 composite of the held-out photos, each centre-cropped to 1024x680 -> HR 2048x1360
    crops = []
    for _, im in held:
        h, w = im.shape[-2:]
        y, x = (h - 680) // 2, (w - 1024) // 2
        crops.append(im[:, y:y + 680, x:x + 1024])
    big_hr = torch.cat([torch.cat(crops[:2], 2), torch.cat(crops[2:], 2)], 1)
    big_lr = bicubic_downsample(big_hr.unsqueeze(0), 4)
    large = {}
    for name, model in (("ClassSR", classsr), ("ClassPruning-SR", cp)):
        t3 = time.time()
        with torch.no_grad():
            res = restore_by_patches(model.restorer, big_lr, 32, 28, 4, classify=model.classify)
        key = "classsr" if name == "ClassSR" else "cp"
        per = torch.tensor([b.effective_macs for b in audits[key].branches], dtype=torch.float64)
        b = res.branches[0]
        large[name] = {"psnr_y": psnr(res.output[0], big_hr, crop_border=4, y_channel=True),
                       "macs_fraction": float((per[b].sum() + audits[key].classifier_macs * len(b)) / (dense_patch * len(b))),
                       "patches": len(b), "class_fractions": (torch.bincount(b, minlength=3) / len(b)).tolist(),
                       "seconds": time.time() - t3}
        routing_map(big_lr[0], res, out / f"routing_map_{key}.png", name)
        write_image(res.output[0], out / f"large_{key}_x4.png")
    with torch.no_grad():
        dense_big = restore_by_patches(ref, big_lr, 32, 28, 4).output[0]
    large["FSRCNN-O (dense)"] = {"psnr_y": psnr(dense_big, big_hr, crop_border=4, y_channel=True), "macs_fraction": 1.0}
    results["large_image"] = {"how": "2x2 tiles of 4 held-out Sun_Hays80 photos, centre crops 1024x680 -> HR 2048x1360, "
                                     "LR 512x340 by bicubic x4", **large}
    results["timings_s"]["total"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)


def _on(restorer, i, x):
    with dp.use_branch(i):
        return restorer(x)


def print_table(results):
    for set_name, res in results["sets"].items():
        print(f"\n{set_name} x4 (Y, crop 4), 32/28 patches")
        print("| model | PSNR (dB) | SSIM | MACs % of FSRCNN-O | ClassSR-convention FLOPs % | patch classes easy/medium/hard |")
        print("|---|---:|---:|---:|---:|---|")
        for name, r in res.items():
            cf = "/".join(f"{100 * c:.0f}%" for c in r["class_fractions"]) if r["class_fractions"] else ""
            print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {100 * r['macs_fraction']:.1f}% | "
                  f"{100 * r['flops_fraction_classsr']:.1f}% | {cf} |")
    print("\nlarge image:", json.dumps(results["large_image"], indent=1))
    print("timings (s):", {k: round(v) for k, v in results["timings_s"].items()})


if __name__ == "__main__":
    main()
