"""Routed PSNR against a mean-MACs budget: one trained ClassPruning model at several budgets (issue 8).

For each budget the routing penalty is calibrated on degraded *calibration* images (the training set,
never the test set) with :func:`dynprune.budget.calibrate_budget`. On the test images every branch's
PSNR is read from a ``dynprune eval`` report of the same checkpoint, whose noise this script regenerates
with the same seed, so only the classifier runs here (it checks that its argmax routing reproduces the
report's before using it). ``--calibrate test`` instead enforces the budget over the processed set itself:
lam is solved on the degraded test images' classifier outputs (no clean image is used), as a server that
restores a batch under a compute budget would.

    python benchmarks/budget_curve.py runs/dncnn_b/last.pt --report docs/results/dncnn_b/report.json \\
        --calibrate ../shared/data/denoise/Train400 --test ../shared/data/denoise/BSD68 \\
        --sigma 15 25 50 --budgets 0.50 0.55 0.58

Prints one markdown table: per budget the penalty, the MACs on the calibration and on the test images
(% of dense, classifier included, pixel-weighted), per sigma the routed PSNR minus the dense reference's
(dB), their mean, and the routing counts per branch (sparsest first, all sigmas).
"""

from __future__ import annotations

import argparse
import json

import torch

from dynprune import cli
from dynprune.budget import calibrate_budget
from dynprune.evaluate import degraded_images
from dynprune.imageio import read_folder
from dynprune.trainer import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--report", required=True, help="report.json of `dynprune eval CHECKPOINT --data TEST --sigma ...`")
    ap.add_argument("--calibrate", required=True,
                    help="clean calibration images (e.g. the training set), or 'test': the degraded test images "
                         "themselves (a budget over the processed set, from the classifier's outputs alone)")
    ap.add_argument("--test", required=True, help="the clean test images the report was made on")
    ap.add_argument("--sigma", type=float, nargs="+", required=True)
    ap.add_argument("--budgets", type=float, nargs="+", required=True, help="mean MACs, fractions of dense")
    ap.add_argument("--cal-seed", type=int, default=1)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model, _, _ = load_trained(args.checkpoint)
    report = json.loads(open(args.report).read())
    ratios, frac, cls = report["ratios"], report["branch_macs_fraction"], report["classifier_macs_fraction"]
    names, test = read_folder(args.test)
    test_noisy = {k: list(enumerate(v)) for k, v in degraded_images(test, cli._noise_conditions(args.sigma, report.get("seed", 0))).items()}
    if args.calibrate == "test":   # the processed set itself: only the classifier's outputs, no clean image
        cal_noisy = [y for ys in test_noisy.values() for _, y in ys]
    else:
        _, cal = read_folder(args.calibrate)
        cal_noisy = [y for ys in degraded_images(cal, cli._noise_conditions(args.sigma, args.cal_seed)).values() for y in ys]
    rows_by = {label: {r["image"]: r for r in c["images"]} for label, c in report["conditions"].items()}

    def routed(tag: str, budget_info: dict | None) -> str:
        diffs, counts, macs, px = [], [0] * len(ratios), 0.0, 0
        for label, ys in test_noisy.items():
            d = []
            for i, y in ys:
                row = rows_by[label][names[i].name]
                b = int(model.classify(y)[0])
                if budget_info is None and ratios[b] != row["branch"]:
                    raise SystemExit(f"{names[i].name} {label}: argmax routes to {ratios[b]}, the report to "
                                     f"{row['branch']}: the report was made with other noise or another checkpoint")
                counts[b] += 1
                n = y.shape[-1] * y.shape[-2]
                macs, px = macs + n * (frac[b] + cls), px + n
                d.append(row[f"branch {ratios[b]}"][0] - row["dense"][0])
            diffs.append(sum(d) / len(d))
        cal_cost = "" if budget_info is None else f"{100 * budget_info['calibrated_cost']:.2f}%"
        pen = "0" if budget_info is None else f"{budget_info['penalty']:.3g}"
        return (f"| {tag} | {pen} | {cal_cost} | {100 * macs / px:.2f}% | " + " | ".join(f"{v:+.3f}" for v in diffs)
                + f" | {sum(diffs) / len(diffs):+.3f} | {' / '.join(map(str, counts))} |")

    head = " | ".join(f"sigma {s:g}" for s in args.sigma)
    print(f"| budget | penalty | calibration MACs | test MACs | {head} | mean | routing {' / '.join(ratios)} |")
    print("|---|---:|---:|---:|" + "---:|" * (len(args.sigma) + 1) + "---|")
    model.route_penalty.zero_()
    print(routed("argmax (paper)", None))
    for budget in args.budgets:
        info = calibrate_budget(model, cal_noisy, budget)
        print(routed(f"{100 * budget:g}%", info), flush=True)


if __name__ == "__main__":
    main()
