"""Evaluation of a ClassPruning model on clean images with seeded synthetic degradations:
PSNR/SSIM of the dense reference, each branch and the routed model; routing histogram; routed MACs
as a fraction of dense; ``report.json``, ``report.md`` and a PSNR-vs-MACs plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .audit import audit, count_macs
from .branch import each_branch
from .classpruning import ClassPruning
from .metrics import psnr, ssim
from .outputs import write_output, write_text
from .progress import progress

__all__ = ["Condition", "degraded_images", "evaluate", "write_report", "strict_json", "sigma_conditions", "level_conditions",
           "print_summary"]


@dataclass
class Condition:
    """One test condition: a label (e.g. "sigma=25") and either a degradation
    ``(clean (1,C,H,W), generator) -> degraded`` or real degraded images by image name (``degraded``).
    The generator is reseeded with ``seed`` per condition and drawn sequentially over the sorted images,
    so every model and every run sees the same degraded images."""

    label: str
    degrade: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    seed: int = 0
    degraded: dict[str, torch.Tensor] | None = None


def sigma_conditions(degradation: str, sigmas: Sequence[float], seed: int = 0) -> list[Condition]:
    """One condition per noise level ``sigma`` (on the 0-255 scale) of the registered degradation
    ``degradation``, built with ``sigmas=[sigma]`` (e.g. "gaussian_noise"), labelled "sigma=<s>".

    Raises:
        ValueError: the degradation takes no ``sigmas`` (it is named).
    """
    from .registry import create

    conds = []
    for s in sigmas:
        try:
            deg = create("degradations", degradation, sigmas=[s])
        except TypeError as err:
            raise ValueError(f"--sigma needs a degradation that takes sigmas; the run's degradation {degradation!r} "
                             f"does not ({err})") from err
        conds.append(Condition(f"sigma={s:g}", lambda x, g, deg=deg: deg(x, generator=g, level=0)[0], seed))
    return conds


def level_conditions(degradation: str, kwargs: dict, seed: int = 0) -> list[Condition]:
    """One condition per difficulty level of the registered ``degradation`` built with ``kwargs``
    (seeded, level fixed), labelled by the degradation's ``describe_level``."""
    from .registry import create

    deg = create("degradations", degradation, **kwargs)
    return [Condition(deg.describe_level(i), lambda x, g, i=i: deg(x, generator=g, level=i)[0], seed)
            for i in range(deg.levels)]


def print_summary(result: dict) -> None:
    """One line per condition: mean PSNR (dB) of each model, routed MACs (% of dense), routing histogram."""
    for label, c in result["conditions"].items():
        parts = [f"{n} {m['psnr']:.2f}" for n, m in c["models"].items()]
        print(f"{label}: " + ", ".join(parts) + f" dB | routed MACs {100 * c['routed_macs_fraction']:.1f}% of dense"
              f" | routing {c['histogram']}")


def degraded_images(images: Sequence[torch.Tensor], conditions: Sequence[Condition]) -> dict[str, list[torch.Tensor]]:
    """{condition label: the degraded (1, C, H, W) images}, drawn as :func:`evaluate` draws them (generator
    reseeded per condition, images in order). ``images``: clean (C, H, W). Synthetic conditions only."""
    out = {}
    for cond in conditions:
        g = torch.Generator().manual_seed(cond.seed)
        out[cond.label] = [cond.degrade(x.unsqueeze(0), g) for x in images]
    return out


def _score(out: torch.Tensor, clean: torch.Tensor, kw: dict) -> tuple[float, float]:
    return psnr(out[0], clean, **kw), ssim(out[0], clean, **kw)


def evaluate(model: ClassPruning, images: Sequence[tuple[str, torch.Tensor]], conditions: Sequence[Condition],
             dense: nn.Module | None = None, metric_kwargs: dict | None = None, device: str = "cpu",
             audit_model: nn.Module | None = None, progress_every: int | None = None, report=None) -> dict:
    """Evaluate ``model`` (and the dense reference ``dense``, if given) on every condition.

    Args:
        images: (name, clean (C, H, W) float32 in [0, 1]) pairs.
        dense: the original dense network, for the comparison rows.
        metric_kwargs: passed to :func:`psnr` / :func:`ssim` (crop_border, y_channel, quantize).
        audit_model: the model whose MACs are audited (default ``model``; a deployed model passes its
            dynamic original, which fvcore can trace and which has the same MACs).
        progress_every: a progress line every this many images off a terminal (1: each image).
        report: an :class:`~dynprune.audit.AuditReport` of this model on these images' size, reused instead of
            auditing again (validation during training audits once per run).
    Returns:
        A JSON-ready dict: per condition, mean PSNR (dB) / SSIM of the degraded input and of each model,
        routing histogram, routed MACs
        as a fraction of the dense model's, and per-image rows.
    Raises:
        ValueError: no images, or an image whose channel count does not fit the model.
    """
    if not images:
        raise ValueError("evaluate() needs at least one image")
    kw = metric_kwargs or {}
    model.eval().to(device)
    if dense is not None:
        dense.eval().to(device)
    L = model.num_branches
    ratios = [str(r) for r in model.ratios]
    first = images[0][1]
    model.check_channels(images)
    rep = report if report is not None else audit(audit_model if audit_model is not None else model,
                                                  first.unsqueeze(0).to(device))
    px0 = first.shape[-1] * first.shape[-2]
    dense_macs = count_macs(dense, first.unsqueeze(0).to(device)) if dense is not None else rep.dense_macs
    result = {"ratios": ratios, "branch_macs_fraction": rep.relative_costs().tolist(),
              "classifier_macs_fraction": rep.classifier_macs / rep.dense_macs,
              "audit_input": list(rep.input_shape), "conditions": {}}
    names = ["degraded input"] + (["dense"] if dense is not None else []) + [f"branch {r}" for r in ratios] + ["routed"]
    with torch.no_grad():
        for cond in conditions:
            g = torch.Generator().manual_seed(cond.seed)
            rows, hist, macs_routed, macs_dense = [], [0] * L, 0.0, 0.0
            for name, clean in progress(images, cond.label, every=progress_every):
                y = (cond.degraded[name].unsqueeze(0) if cond.degraded is not None
                     else cond.degrade(clean.unsqueeze(0), g)).to(device)
                row = {"image": name, "degraded input": _score(y, clean, kw)}
                if dense is not None:
                    row["dense"] = _score(dense(y), clean, kw)
                scores = each_branch(lambda i: _score(model.restorer(y), clean, kw), L)
                row.update({f"branch {r}": sc for r, sc in zip(ratios, scores)})
                routed, chosen = model.route(y)  # the deployed path: classifier, then the chosen branch
                branch = int(chosen[0])
                row["routed"] = _score(routed, clean, kw)
                row["branch"] = ratios[branch]
                hist[branch] += 1
                scale = clean.shape[-1] * clean.shape[-2] / px0
                macs_routed += scale * (rep.branches[branch].effective_macs + rep.classifier_macs)
                macs_dense += scale * dense_macs
                rows.append(row)
            summary = {n: {"psnr": sum(r[n][0] for r in rows) / len(rows),
                           "ssim": sum(r[n][1] for r in rows) / len(rows)} for n in names}
            result["conditions"][cond.label] = {
                "models": summary, "histogram": dict(zip(ratios, hist)),
                "routed_macs_fraction": macs_routed / macs_dense, "images": rows}
    return result


def strict_json(obj):
    """``obj`` with every non-finite float replaced by None, so it serialises as strict JSON (RFC 8259 has no
    NaN or Infinity): the PSNR of an image identical to its reference is +inf dB and is written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_report(result: dict, out_dir: str | Path, title: str = "dynprune evaluation",
                 paper_rows: dict | None = None) -> Path:
    """Write ``report.json``, ``report.md`` (a table per condition) and ``psnr_vs_macs.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(strict_json(result), indent=1, allow_nan=False))
    fr = dict(zip((f"branch {r}" for r in result["ratios"]), result["branch_macs_fraction"]))
    lines = [f"# {title}", "", "| condition | model | PSNR (dB) | SSIM | MACs % of dense | routing |",
             "|---|---|---:|---:|---:|---|"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, (label, c) in enumerate(result["conditions"].items()):
        hist = " / ".join(f"{key}: {v}" for key, v in c["histogram"].items())
        color = f"C{k}"
        for name, m in c["models"].items():
            frac = (0.0 if name == "degraded input" else 1.0 if name == "dense"
                    else c["routed_macs_fraction"] if name == "routed" else fr[name])
            lines.append(f"| {label} | {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {100 * frac:.1f}% | "
                         f"{hist if name == 'routed' else ''} |")
        branch = sorted((100 * fr[n], m["psnr"]) for n, m in c["models"].items() if n in fr)
        ax.plot(*zip(*branch), "o-", color=color, alpha=0.6, label=f"{label}: branches")
        if "dense" in c["models"]:
            ax.plot([100.0], [c["models"]["dense"]["psnr"]], "s", color=color, mfc="none", ms=9)
        if "degraded input" in c["models"]:
            ax.axhline(c["models"]["degraded input"]["psnr"], color=color, ls=":", lw=0.8)
        ax.plot([100 * c["routed_macs_fraction"]], [c["models"]["routed"]["psnr"]], "*", color=color, ms=15,
                mec="k", label=f"{label}: routed")
    ax.set_title("branches (o), dense reference (square), routed (star), degraded input (dotted)", fontsize=9)
    for label, rows in (paper_rows or {}).items():
        lines.append(f"| {label} | {rows} | | | | |")
    ax.set_xlabel("MACs (% of dense)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_output(out / "psnr_vs_macs.png", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return out
