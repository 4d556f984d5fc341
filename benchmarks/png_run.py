"""PnG end to end (issue 11): the task sequence, then per-task PSNR, parameters and MACs against separate
models (one per task) and one shared model, in one table.

Parts (``--part``, in this order by default):
  run   ``dynprune png`` of the config (resumable; also trains the classifier if ``stages.classifier`` asks).
  separate  one dense model per task trained with that task's PnG budget (its grow + fine-tune steps and
        batches) from the same starting weights, as a one-branch run of the trainer (``out_dir/separate_<task>``,
        resumable); tasks given with ``--separate NAME=WEIGHTS`` (e.g. the pretrained DnCNN-S-15) are skipped.
  eval  every task on its real test set: denoising tasks on BSD68 at the task's sigma, SR tasks on Set5 /
        Set14 at the task's scale (benchmarks/scores.py); rows: the PnG model (branch t = task t), each
        separate model on its task (``--separate`` weights, else the trained ``separate_<task>``), the ``--shared WEIGHTS`` model on every task; table +
        ``out_dir/eval.json``.

    python benchmarks/png_run.py --config configs/png_dncnn.yaml --data ../shared/data \\
        --separate sigma15=../shared/data/weights/dncnn/DnCNN-S-15/net.pth ... --shared .../DnCNN-B/net.pth
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import dynprune as dp
from dynprune.audit import audit
from dynprune.checkpoint import load_file
from dynprune.config import load_config
from dynprune.layers import dynamic_layers
from dynprune.methods.png import load, run_png

from scores import denoise_scores, sr_scores


class _Task(nn.Module):
    """A model called with one task's forward arguments (for fvcore's audit)."""

    def __init__(self, model: nn.Module, kwargs: dict):
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def forward(self, x):
        return self.model(x, **self.kwargs)


def _scorer(task, cfg, data: Path):
    deg = task.degradation or cfg.degradation
    if deg.name == "bicubic":
        scale = deg.kwargs.get("scale", 4)
        return (lambda fn: sr_scores(fn, data, scale)), torch.rand(1, 3, 32, 32)
    return (lambda fn: denoise_scores(fn, data, deg.kwargs["sigmas"][0])), torch.rand(1, 1, 64, 64)


def png_params(model) -> int:
    """Parameters a PnG model stores: the weights some task owns (rank < N_T), everything outside the N:M
    layers' weights (biases, other layers, every task's norms and heads)."""
    owned = sum(int(layer.branch_mask(-1).sum()) for _, layer in dynamic_layers(model.restorer))
    nm = {id(layer.dense_weight) for _, layer in dynamic_layers(model.restorer)}
    return owned + sum(p.numel() for p in model.restorer.parameters() if id(p) not in nm)


def task_params(net: nn.Module, task, tasks) -> int:
    """Parameters one task's model needs: all of ``net``'s except other tasks' heads (a separate x2 model
    built as the multi-scale CARN-M does not count the x3 / x4 upsamplers it never runs)."""
    mods = dict(net.named_modules())
    others = {id(p) for t in tasks if t.head and t.head != task.head and t.head in mods
              for p in mods[t.head].parameters()}
    return sum(p.numel() for p in net.parameters() if id(p) not in others)


def _separate_cfg(cfg, task):
    """The one-branch dense trainer config of a task's separate model: the PnG budget of the task, and its
    PnG recipe (with ``distill``, the task's teacher, built for the task's forward arguments)."""
    from dynprune.methods.png import PHASES

    distill = cfg.distill
    if distill.weight > 0:
        i = cfg.png.tasks.index(task)
        teacher = distill.teachers[i if len(distill.teachers) > 1 else 0]
        distill = distill.model_copy(update={"teachers": [
            teacher.model_copy(update={"kwargs": {**teacher.kwargs, **task.forward}})]})

    stages = [getattr(task, ph) or getattr(cfg.png, ph) for ph in PHASES]
    steps = sum(sc.epochs * (sc.steps_per_epoch or 0) for sc in stages)
    base = stages[-1].model_copy(update={"epochs": 1, "steps_per_epoch": steps, "lr_start": stages[0].lr_start})
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"kwargs": {**cfg.model.kwargs, **task.forward}}),
        "dataset": task.dataset or cfg.dataset, "degradation": task.degradation or cfg.degradation,
        "loss": task.loss or cfg.loss, "distill": distill, "convert": cfg.convert.model_copy(update={"ratios": ["4:4"]}),
        "stages": cfg.stages.model_copy(update={"base": base, "classifier": base.model_copy(update={"epochs": 0})}),
        "out_dir": str(Path(cfg.out_dir) / f"separate_{task.name}")})


def part_separate(cfg, given: dict[str, str]) -> None:
    from dynprune.methods.classpruning import Trainer

    for task in cfg.png.tasks:
        if task.name in given:
            continue
        run = _separate_cfg(cfg, task)
        t0 = time.time()
        Trainer(run, resume=True).fit()
        print(f"separate {task.name}: {run.stages.base.steps_per_epoch} steps in {time.time() - t0:.0f} s -> "
              f"{run.out_dir}/last.pt")


def _separate_model(cfg, task, given: dict[str, str]):
    if task.name in given:
        return dp.create_model(cfg.model.name, weights=given[task.name], **cfg.model.kwargs).eval()
    ckpt = Path(cfg.out_dir) / f"separate_{task.name}" / "last.pt"
    if ckpt.is_file() and load_file(ckpt).get("done"):
        return dp.load(str(ckpt)).restorer.eval()
    return None


def part_eval(cfg, data: Path, separate: dict[str, str], shared: str | None) -> dict:
    png = load(Path(cfg.out_dir) / "png.pt")
    shared_net = dp.create_model(cfg.model.name, weights=shared, **cfg.model.kwargs).eval() if shared else None
    rows: dict[str, dict] = {}
    for i, task in enumerate(png.tasks):
        score, probe = _scorer(task, cfg, data)
        rep = audit(_Task(png.restorer, task.forward).eval(), probe)
        rows.setdefault("PnG (one model)", {"params": png_params(png)})[task.name] = {
            "macs": rep.branches[i].effective_macs / rep.dense_macs,
            **score(lambda x, i=i: png(x, i))}
        net = _separate_model(cfg, task, separate)
        if net is not None:
            rows.setdefault("separate models", {"params": 0})[task.name] = {
                "macs": 1.0, **score(lambda x, net=net, kw=task.forward: net(x, **kw))}
            rows["separate models"]["params"] += task_params(net, task, png.tasks)
        if shared_net is not None:
            rows.setdefault("shared model", {"params": sum(p.numel() for p in shared_net.parameters())})[task.name] = {
                "macs": 1.0, **score(lambda x, kw=task.forward: shared_net(x, **kw))}
    names = [t.name for t in png.tasks]
    cols = [(t, k) for t in names for k in rows["PnG (one model)"][t] if k != "macs"]
    print("| model | parameters | " + " | ".join(f"{t}: {k}" for t, k in cols) + " | MACs per task (% of dense) |")
    print("|---|---:|" + "---:|" * len(cols) + "---|")
    for label, r in rows.items():
        vals = " | ".join(f"{r[t][k]:.2f}" if t in r else "" for t, k in cols)
        macs = " / ".join(f"{100 * r[t]['macs']:.1f}" if t in r else "-" for t in names)
        print(f"| {label} | {r['params']:,} | {vals} | {macs} |")
    (Path(cfg.out_dir) / "eval.json").write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/png_dncnn.yaml")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--part", nargs="+", default=["run", "separate", "eval"])
    ap.add_argument("--separate", nargs="*", default=[], metavar="TASK=WEIGHTS",
                    help="one separate model per task (same architecture), e.g. sigma15=.../DnCNN-S-15/net.pth")
    ap.add_argument("--shared", help="one model for every task (e.g. DnCNN-B, the multi-scale CARN-M)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    cfg = load_config(args.config, sets=args.set)
    separate = dict(s.split("=", 1) for s in args.separate)
    for part in args.part:
        if part == "run":
            t0 = time.time()
            run_png(cfg, resume=True)
            print(f"PnG run in {time.time() - t0:.0f} s -> {cfg.out_dir}/png.pt")
        elif part == "separate":
            part_separate(cfg, separate)
        elif part == "eval":
            part_eval(cfg, args.data, separate, args.shared)


if __name__ == "__main__":
    main()
