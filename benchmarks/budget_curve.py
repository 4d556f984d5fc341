"""Routed PSNR against a mean-MACs budget: one trained ClassPruning model at several budgets (issue 8).

For each budget the routing penalty is calibrated on degraded *calibration* images (the training set,
never the test set) with :func:`dynprune.budget.calibrate_budget`. On the test images every branch's
PSNR is read from a ``dynprune eval`` report of the same checkpoint, whose noise this script regenerates
with the same seed, so only the classifier runs here (it checks that its argmax routing reproduces the
report's before using it). ``--calibrate test`` instead enforces the budget over the processed set itself:
lam is solved on the degraded test images' classifier outputs (no clean image is used), as a server that
restores a batch under a compute budget would. A report made with ``--pairs`` (real degraded images,
e.g. Rain100H) contributes its real condition, read from the report's folders; then ``--test`` /
``--sigma`` may be left out.

    python benchmarks/budget_curve.py runs/dncnn_b/last.pt --report docs/results/dncnn_b/report.json \\
        --calibrate ../shared/data/denoise/Train400 --test ../shared/data/denoise/BSD68 \\
        --sigma 15 25 50 --budgets 0.50 0.55 0.58
    python benchmarks/budget_curve.py runs/gcanet_derain/last.pt --report docs/results/gcanet_derain/report.json \\
        --calibrate test --budgets 0.65 0.55

Prints one markdown table: per budget the penalty, the MACs on the calibration and on the test images
(% of dense, classifier included, pixel-weighted), per condition the routed PSNR minus the dense
reference's (dB), their mean, and the routing counts per branch (sparsest first, all conditions).
"""

from __future__ import annotations

import argparse
import json

import torch

from dynprune import cli
from dynprune.budget import calibrate_budget
from dynprune.evaluate import degraded_images
from dynprune.imageio import read_folder
from dynprune.registry import create
from dynprune.models import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--report", required=True, help="report.json of `dynprune eval CHECKPOINT --data TEST --sigma ...`")
    ap.add_argument("--calibrate", required=True,
                    help="clean calibration images (e.g. the training set), or 'test': the degraded test images "
                         "themselves (a budget over the processed set, from the classifier's outputs alone)")
    ap.add_argument("--test", help="the clean test images the report's synthetic conditions were made on")
    ap.add_argument("--sigma", type=float, nargs="+", default=[],
                    help="the report's noise levels; without it, the checkpoint's own degradation levels")
    ap.add_argument("--budgets", type=float, nargs="+", required=True, help="mean MACs, fractions of dense")
    ap.add_argument("--cal-seed", type=int, default=1)
    ap.add_argument("--fill", action="store_true", help="spend the budget (dynprune.budget.solve_penalty's fill)")
    ap.add_argument("--classify-tile", type=int, default=None, help="as given to `dynprune eval` for the report")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model, cfg, _ = load_trained(args.checkpoint)
    cli._set_classify_tile(model, args.classify_tile)
    report = json.loads(open(args.report).read())
    ratios, frac, cls = report["ratios"], report["branch_macs_fraction"], report["classifier_macs_fraction"]
    if args.sigma and not args.test:
        raise SystemExit("--sigma needs --test (the clean images the report's noise conditions were drawn on)")
    test_sets: dict[str, list[tuple[str, torch.Tensor]]] = {}   # condition label -> (image name, degraded)
    if args.test:
        names, test = read_folder(args.test)
        seed = report.get("seed", 0)
        conds = cli._noise_conditions(args.sigma, seed) if args.sigma else cli._level_conditions(cfg, seed)
        first = next(c for c in report["conditions"].values())
        n = len(first["images"])          # a report made with --limit N: its first N images
        for label, ys in degraded_images(test[:n], conds).items():
            test_sets[label] = [(p.name, y) for p, y in zip(names, ys)]
    if report.get("pairs"):
        real = [c for c in report["conditions"] if c.startswith("real ")]
        pairs = create("datasets", "paired_folder", degraded=report["pairs"][0], clean=report["pairs"][1])
        test_sets[real[0]] = [(n, d.unsqueeze(0)) for n, d, _ in pairs][: len(report["conditions"][real[0]]["images"])]
    if not test_sets:
        raise SystemExit("nothing to test: give --test and --sigma, or a report made with --pairs")
    if args.calibrate == "test":   # the processed set itself: only the classifier's outputs, no clean image
        cal_noisy = [y for ys in test_sets.values() for _, y in ys]
    elif not args.sigma:
        raise SystemExit("--calibrate DIR synthesizes noise at --sigma; give --sigma, or --calibrate test")
    else:
        _, cal = read_folder(args.calibrate)
        cal_noisy = [y for ys in degraded_images(cal, cli._noise_conditions(args.sigma, args.cal_seed)).values() for y in ys]
    rows_by = {label: {r["image"]: r for r in c["images"]} for label, c in report["conditions"].items()}

    def routed(tag: str, budget_info: dict | None) -> str:
        diffs, counts, macs, px = [], [0] * len(ratios), 0.0, 0
        for label, ys in test_sets.items():
            d = []
            for name, y in ys:
                row = rows_by[label][name]
                b = int(model.classify(y)[0])
                if budget_info is None and ratios[b] != row["branch"]:
                    raise SystemExit(f"{name} {label}: argmax routes to {ratios[b]}, the report to "
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

    head = " | ".join(test_sets)
    print(f"| budget | penalty | calibration MACs | test MACs | {head} | mean | routing {' / '.join(ratios)} |")
    print("|---|---:|---:|---:|" + "---:|" * (len(test_sets) + 1) + "---|")
    model.route_penalty.zero_()
    print(routed("argmax (paper)", None))
    for budget in args.budgets:
        info = calibrate_budget(model, cal_noisy, budget, fill=args.fill)
        print(routed(f"{100 * budget:g}%", info), flush=True)


if __name__ == "__main__":
    main()
