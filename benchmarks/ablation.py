"""What each addition to the paper's ClassPruning recipe buys, and what each mask pattern costs, on one
training budget (issues 8 and 36).

Every row trains DnCNN-B from the same pretrained start with the same data, seed, stage lengths and LR
schedule (the paper-recipe config, ``configs/dncnn_bsd68_cpu.yaml``, with stage 2 / 3 set to --steps /
--joint-steps), changing only the named options; then evaluates on the first --limit BSD68 images at
sigma 15 / 25 / 50 (noise seeded as in ``dynprune eval``). Rows are resumable: a killed run continues where
its checkpoint left it when the script is started again.

    python benchmarks/ablation.py --data ../shared/data [--rows paper ste masked floor floor_denser distill all]
        [--steps 300] [--joint-steps 100] [--limit 20] [--out runs/ablation] [--threads N]

The mask patterns (element, vector V = 8 / 16 / 32, tap sharing) on the main job's recipe:

    python benchmarks/ablation.py --data ../shared/data --config configs/dncnn_b.yaml --steps 100 --joint-steps 0 \
        --limit 12 --rows pattern_element pattern_vector8 pattern_vector16 pattern_vector32 pattern_vector16_shared \
        --out runs/ablation_pattern --threads 1

Prints one markdown table: per sigma the routed PSNR minus the pretrained DnCNN-B's (dB), the densest
branch minus DnCNN-B (its drift), the worst monotonicity gap (a denser branch below a sparser one; 0 =
monotone), and the routed MACs (% of dense, classifier included).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynprune import cli
from dynprune.config import load_config
from dynprune.methods.classpruning import Trainer


def teacher_sets(data: str) -> list[str]:
    sigmas = (15, 25, 50)
    items = ", ".join(f"{{name: dncnn, weights: {data}/weights/dncnn/DnCNN-S-{s}/net.pth}}" for s in sigmas)
    return ["distill.weight=0.5", f"distill.teachers=[{items}]"]


def rows(data: str) -> dict[str, list[str]]:
    return {"paper": [],                                        # SR-STE (lambda_w 2e-4), L_W = p_i, no teacher
            "ste": ["convert.mask_grad=ste"],                   # SR-STE without its decay
            "masked": ["convert.mask_grad=masked"],             # each branch updates only the weights it keeps
            "floor": ["lw_floor=0.2"],
            "floor_denser": ["lw_floor=0.2", "lw_floor_to=denser"],   # the floor on the image's branch and denser ones
            "distill": teacher_sets(data),                      # DnCNN-S-15/25/50, one per level
            "distill_start": ["distill.weight=0.5"],            # the frozen pretrained DnCNN-B
            "all": ["convert.mask_grad=masked", "lw_floor=0.2", *teacher_sets(data)],
            "all_denser": ["convert.mask_grad=masked", "lw_floor=0.2", "lw_floor_to=denser", *teacher_sets(data)],
            # the same densities with M = 8 (more freedom per group: 2 of 8 instead of 1 of 4)
            "all_m8": ["convert.mask_grad=masked", "lw_floor=0.2", *teacher_sets(data),
                       "convert.ratios=['2:8', '4:8', '8:8']"],
            # mask patterns (use with --config configs/dncnn_b.yaml, the main recipe)
            **{f"pattern_{p.replace('-', '_')}": [f"convert.pattern={p}"]
               for p in ("element", "vector8", "vector16", "vector32", "vector16-shared", "vector8-shared")}}


def summarize(report: dict) -> dict:
    out = {}
    for label, c in report["conditions"].items():
        m = {k: v["psnr"] for k, v in c["models"].items()}
        branches = [m[f"branch {r}"] for r in report["ratios"]]
        gap = max([0.0] + [branches[i] - branches[j] for i in range(len(branches)) for j in range(i + 1, len(branches))])
        out[label] = {"routed": m["routed"] - m["dense"], "densest": branches[-1] - m["dense"], "monotone_gap": gap,
                      "macs": 100 * c["routed_macs_fraction"], "dense": m["dense"],
                      "histogram": c["histogram"], "branches": [b - m["dense"] for b in branches]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--config", default="configs/dncnn_bsd68_cpu.yaml")
    ap.add_argument("--rows", nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=300, help="stage-2 steps of every row")
    ap.add_argument("--joint-steps", type=int, default=100, help="stage-3 steps of every row (0: no stage 3)")
    ap.add_argument("--limit", type=int, default=20, help="first N BSD68 images")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of every row (default: the config's)")
    args = ap.parse_args()
    table = rows(args.data)
    names = args.rows or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; accepted: {list(table)}")
    results = {}
    for name in names:
        out = Path(args.out) / name
        joint = [f"stages.joint.steps_per_epoch={args.joint_steps}"] if args.joint_steps else ["stages.joint.epochs=0"]
        sets = [f"stages.restoration.steps_per_epoch={args.steps}", *joint,
                f"out_dir={out}", *table[name]] + ([f"threads={args.threads}"] if args.threads else [])
        cfg = load_config(args.config, sets=sets)
        (out).mkdir(parents=True, exist_ok=True)
        (out / "sets.json").write_text(json.dumps(sets, indent=1))
        Trainer(cfg, resume=True).fit()
        report = out / "eval" / "report.json"
        if not report.is_file():
            rc = cli.main(["eval", str(out / "last.pt"), "--data", f"{args.data}/denoise/BSD68", "--sigma", "15", "25",
                           "50", "--limit", str(args.limit), "--out", str(out / "eval")])
            if rc:
                raise SystemExit(f"evaluation of row {name!r} failed ({rc})")
        results[name] = summarize(json.loads(report.read_text()))
    labels = list(next(iter(results.values())))
    print(f"\nstage 2: {args.steps} steps, stage 3: {args.joint_steps} steps; BSD68 first {args.limit} images; "
          "dB relative to the pretrained DnCNN-B (" + ", ".join(f"{k} {v['dense']:.2f}" for k, v in
                                                             next(iter(results.values())).items()) + ")\n")
    head = " | ".join(f"{lb}: routed / densest / monotone gap" for lb in labels)
    print(f"| row | {head} | mean routed | routed MACs |")
    print("|---|" + "---:|" * (len(labels) + 2))
    for name, r in results.items():
        cells = " | ".join(f"{r[lb]['routed']:+.2f} / {r[lb]['densest']:+.2f} / {r[lb]['monotone_gap']:.2f}" for lb in labels)
        mean = sum(r[lb]["routed"] for lb in labels) / len(labels)
        macs = sum(r[lb]["macs"] for lb in labels) / len(labels)
        print(f"| {name} | {cells} | {mean:+.2f} | {macs:.1f}% |")
    ratios = "/".join(json.loads((Path(args.out) / names[0] / "eval" / "report.json").read_text())["ratios"])
    print(f"\nEvery branch, dB relative to the pretrained DnCNN-B (branches {ratios}):\n")
    print("| row | " + " | ".join(labels) + " | mean |")
    print("|---|" + "---:|" * (len(labels) + 1))
    for name, r in results.items():
        cells = " | ".join(" / ".join(f"{d:+.2f}" for d in r[lb]["branches"]) for lb in labels)
        k = len(r[labels[0]]["branches"])
        mean = " / ".join(f"{sum(r[lb]['branches'][i] for lb in labels) / len(labels):+.2f}" for i in range(k))
        print(f"| {name} | {cells} | {mean} |")


if __name__ == "__main__":
    main()
