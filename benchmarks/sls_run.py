"""SLS end to end (issue 10): one search, uniform N:M baselines at the same MACs, equal fine-tunes, evaluation.

Parts (``--part``, in this order by default):
  search    ``dynprune search`` of the config (resumable): nested plans for ``search.budgets``.
  plans     for each searched plan, a uniform plan at the same MACs: every searched layer at N:M with one
            shared density (N = round(d * M) per layer, M its group size, d in 1/64 steps), the one whose
            model MACs are the closest at or above the searched plan's (the baseline never gets less
            compute; MACs from the search's own fvcore layer counts).
  finetune  each plan (``--only`` to pick) fine-tuned from the pretrained weights with the config's
            ``stages.base`` (SR-STE, same steps and batches for every plan), as a one-branch model;
            resumable (``out/ft_<plan>/last.pt``); ``--from-search`` starts searched plans from the weights
            the search had adapted when it fixed them (``out/ft_<plan>_from_search``).
  eval      PSNR of the pretrained dense model, each plan before fine-tuning (one-shot masks) and after:
            SR configs on Set5 / Set14 (Y channel, border = scale, 8-bit output), denoising configs on
            BSD68 at the degradation's sigma (``--only`` to pick plans); table + ``out/eval.json``.
  plot      the layer-wise N/M of every plan: ``--plot`` (default docs/results/sls_plans.png).

    python benchmarks/sls_run.py --config configs/sls_carn_m_x4.yaml --data ../shared/data [--part ...] [--set k=v]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dynprune as dp
from dynprune.checkpoint import load_file
from dynprune.config import load_config
from dynprune.plan import RatioPlan
from dynprune.methods.sls import layer_macs, run_search, searchable_layers

from scores import denoise_scores, sr_scores


def _out(cfg) -> Path:
    return Path(cfg.out_dir).parent


def _pretrained(cfg):
    return dp.create_model(cfg.model.name, weights=cfg.model.weights, **cfg.model.kwargs).eval()


def _searched(cfg) -> list[RatioPlan]:
    return [RatioPlan.load(Path(cfg.out_dir) / f"sls-{100 * b:g}.yaml") for b in cfg.search.budgets
            if (Path(cfg.out_dir) / f"sls-{100 * b:g}.yaml").is_file()]


def _macs_table(cfg):
    from dynprune.registry import create
    from dynprune.train import sample_batch

    model = _pretrained(cfg)
    layers = searchable_layers(model, cfg.search.m, cfg.search.exclude)
    dataset = create("datasets", cfg.dataset.name, **cfg.dataset.kwargs)
    degrade = create("degradations", cfg.degradation.name, **cfg.degradation.kwargs)
    _, probe, _ = sample_batch(dataset, degrade, cfg.seed, 10, 0, 1, 1)
    macs, total = layer_macs(model, (probe,), layers)
    return layers, macs, total


def _fraction(plan: RatioPlan, macs: dict[str, int], total: int) -> float:
    kept = sum(macs[n] * r.n // r.m for n, r in plan.ratios.items())
    return (total - sum(macs[n] for n in plan.ratios) + kept) / total


def part_plans(cfg) -> None:
    layers, macs, total = _macs_table(cfg)
    for plan in _searched(cfg):
        best = None
        for k in range(1, 65):
            d = k / 64
            ratios = {n: f"{max(1, round(d * m))}:{m}" for n, (_, _, m) in layers.items()}
            uni = RatioPlan(ratios, name=f"uniform-{100 * plan.budget:g}", budget=plan.budget, model=plan.model)
            f = _fraction(uni, macs, total)
            if f >= plan.macs_fraction and (best is None or f < best[0]):  # never less compute than the plan
                best = (f, uni)
        f, uni = best
        uni.macs_fraction = f
        uni.save(_out(cfg) / f"{uni.name}.yaml")
        print(f"{plan.name}: {100 * plan.macs_fraction:.2f}% of dense MACs; {uni.name}: {100 * f:.2f}% "
              f"({sorted({str(r) for r in uni.ratios.values()})})")


def _all_plans(cfg) -> list[RatioPlan]:
    uniform = [RatioPlan.load(p) for p in sorted(_out(cfg).glob("uniform-*.yaml"))]
    return _searched(cfg) + uniform


def part_finetune(cfg, only: list[str], from_search: bool = False) -> None:
    from dynprune.methods.classpruning import Trainer

    for plan in _all_plans(cfg):
        if only and plan.name not in only:
            continue
        update = {"convert": cfg.convert.model_copy(update={"ratios": [plan.to_dict()]}),
                  "out_dir": str(_out(cfg) / f"ft_{plan.name}")}
        snapshot = Path(cfg.out_dir) / f"{plan.name}.weights.pt"
        if from_search and snapshot.is_file():  # start from the weights the search adapted to this plan
            update["model"] = cfg.model.model_copy(update={"weights": str(snapshot)})
            update["out_dir"] += "_from_search"
        run = cfg.model_copy(update=update)
        t0 = time.time()
        Trainer(run, resume=True).fit()
        print(f"fine-tuned {plan.name} in {time.time() - t0:.0f} s -> {run.out_dir}/last.pt")


def part_eval(cfg, data: Path, only: list[str]) -> dict:
    if cfg.degradation.name == "bicubic":
        score = lambda fn: sr_scores(fn, data, cfg.degradation.kwargs.get("scale", 4))  # noqa: E731
    else:
        score = lambda fn: denoise_scores(fn, data, cfg.degradation.kwargs["sigmas"][0])  # noqa: E731
    dense = _pretrained(cfg)
    rows = {"dense (pretrained)": {"macs": 1.0, **score(dense)}}
    for plan in _all_plans(cfg):
        if only and plan.name not in only:
            continue
        oneshot = dp.convert(dense, [plan]).eval()
        rows[f"{plan.name}, no fine-tune"] = {"macs": plan.macs_fraction, **score(oneshot)}
        for suffix, label in (("", "fine-tuned"), ("_from_search", "fine-tuned from the search's weights")):
            ckpt = _out(cfg) / f"ft_{plan.name}{suffix}" / "last.pt"
            if ckpt.is_file() and load_file(ckpt).get("done"):  # a fine-tune still running is left out
                tuned = dp.load(str(ckpt))
                rows[f"{plan.name}, {label}"] = {"macs": plan.macs_fraction, **score(tuned.restorer.eval())}
    keys = [k for k in next(iter(rows.values())) if k != "macs"]
    print("| model | MACs (% of dense) | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for name, r in rows.items():
        print(f"| {name} | {100 * r['macs']:.1f} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
    (_out(cfg) / "eval.json").write_text(json.dumps(rows, indent=1))
    return rows


def part_plot(cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plans = _searched(cfg)
    if not plans:
        raise SystemExit("no searched plans yet: run --part search first")
    names = list(plans[0].ratios)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(names)), 4))
    for plan in plans:
        ax.step(range(len(names)), [plan.ratios[n].density for n in names], where="mid",
                label=f"{plan.name} ({100 * plan.macs_fraction:.1f}% MACs)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("kept fraction N/M")
    ax.set_title(f"SLS plans from one search: {cfg.model.name}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/sls_carn_m_x4.yaml")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--part", nargs="+", default=["search", "plans", "finetune", "eval", "plot"])
    ap.add_argument("--only", nargs="*", default=[], help="plan names to fine-tune / evaluate (default: all)")
    ap.add_argument("--plot", type=Path, default=Path("docs/results/sls_plans.png"))
    ap.add_argument("--from-search", action="store_true",
                    help="fine-tune searched plans from the weights the search adapted (out/ft_<plan>_from_search)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, as for dynprune search (e.g. out_dir=runs/x/search)")
    args = ap.parse_args()
    cfg = load_config(args.config, sets=args.set)
    for part in args.part:
        if part == "search":
            run_search(cfg, resume=True)
        elif part == "plans":
            part_plans(cfg)
        elif part == "finetune":
            part_finetune(cfg, args.only, args.from_search)
        elif part == "eval":
            part_eval(cfg, args.data, args.only)
        elif part == "plot":
            part_plot(cfg, args.plot)


if __name__ == "__main__":
    main()
