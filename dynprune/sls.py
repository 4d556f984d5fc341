"""SLS: a searched N:M ratio per layer under a MACs budget (Oh, Kim, Nah, Hong, Choi, Lee, "Attentive
Fine-Grained Structured Sparsity for Image Restoration", CVPR 2022), several nested budgets from one run.

During the search every searched layer reads its weight through :class:`LayerGates` (a torch
parametrization): per group of M weights along the reduction axis, the weight ranked r by magnitude is
kept iff gate r is on; gate 0 is always on and gates 1..M-1 come from M-1 learnable priority scores s as
``p = cumprod(clamp(s, 0, 1.03))``, ``gate = 1[p > 0.5]`` trained straight through (``gate - p.detach()
+ p``), so a layer keeps N = 1 + (leading gates on) of every M. The loss is the task loss plus a weight
times the model's MACs as a fraction of dense, where each searched layer costs its dense MACs x N/M (its
fvcore count on the training input); the weight grows by ``anneal_alpha`` whenever the fraction fell by
less than ``anneal_min_drop`` over ``anneal_every`` steps (SLS's annealing).

Beyond SLS (one run per budget, static networks): the budgets are visited from the largest down; when the
hard MACs fraction first falls to a budget, the layer-wise N are recorded as that budget's plan and become
upper bounds for the rest of the search, so the plans are nested by construction and can serve as the
branches of one dynamic model (:func:`dynprune.convert` with plans). Pruned weights get no gradient
(plain masking, as SLS); the plans are then fine-tuned with SR-STE by the trainer.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils import parametrize

from .nm import nm_order
from .plan import RatioPlan

__all__ = ["LayerGates", "SearchState", "searchable_layers", "attach", "detach", "search_step", "run_search",
           "layer_macs"]

log = logging.getLogger(__name__)
_SAFE_TO_CHANGE = ("search.steps", "search.checkpoint_every", "threads")  # may differ on --resume (extend a search)
_SEARCH_USES = ("model.", "dataset.", "degradation.", "loss.", "search.", "seed:")  # the rest is the fine-tune's


class LayerGates(nn.Module):
    """The search parametrization of one layer's weight: ``W * gate[rank(W)]`` (see the module doc).

    Args:
        axis: the reduction axis (1, or 0 for transposed convolutions). m: the layer's group size M.
    Attributes:
        scores: (M-1,) float32 priority scores, initialised to 1 (N = M, dense).
        bound: int64 scalar buffer, the largest N allowed (M at the start; a recorded plan's N after).
    """

    def __init__(self, axis: int, m: int):
        super().__init__()
        self.axis, self.m = axis, m
        self.scores = nn.Parameter(torch.ones(m - 1))
        self.register_buffer("bound", torch.tensor(m, dtype=torch.int64))

    def gates(self) -> torch.Tensor:
        """(M,) gates: 1 for rank 0, then the straight-through cumulative-product gates, 0 beyond ``bound``."""
        p = torch.cumprod(self.scores.clamp(0.0, 1.03), 0)
        p = p * (torch.arange(1, self.m, device=p.device) < self.bound).to(p.dtype)
        hard = (p > 0.5).to(p.dtype)
        return torch.cat([p.new_ones(1), hard - p.detach() + p])

    def n(self) -> int:
        """The layer's current N (hard)."""
        return int(self.gates().detach().gt(0.5).sum())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rank = nm_order(w, self.axis, self.m).long()  # (pre, G, m, post), no gradient
        return w * self.gates()[rank].reshape(w.shape)


def _reduction(layer: nn.Module) -> tuple[int, int]:
    w = layer.weight
    if isinstance(layer, _ConvTransposeNd):
        return 0, w.shape[0] // layer.groups
    return 1, w.shape[1]


def _group_size(k: int, m: int) -> int:
    """The largest divisor of ``k`` that is at most ``m`` (1 when only 1 divides)."""
    return max(d for d in range(1, min(k, m) + 1) if k % d == 0)


def searchable_layers(model: nn.Module, m: int, exclude=()) -> dict[str, tuple[nn.Module, int, int]]:
    """{name: (layer, axis, M)} of the Conv/Linear layers the search covers: not excluded (fnmatch), a
    reduction axis K > 1 (not depthwise) with a divisor >= 2 that is at most ``m`` (that divisor is M)."""
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (_ConvNd, nn.Linear)) or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if not isinstance(mod._parameters.get("weight"), nn.Parameter):
            continue
        axis, k = _reduction(mod)
        gm = _group_size(k, m)
        if gm >= 2:
            out[name] = (mod, axis, gm)
    return out


def layer_macs(model: nn.Module, example_inputs: tuple, names) -> tuple[dict[str, int], int]:
    """({layer name: fvcore MACs over all its calls}, total MACs) of ``model`` on ``example_inputs``."""
    from .audit import count_macs, _fvcore  # fvcore setup shared with the audit

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = count_macs(model, example_inputs)
            by_mod = _fvcore(model, example_inputs).by_module()
    finally:
        model.train(was)
    return {n: int(by_mod.get(n, 0)) for n in names}, int(total)


def attach(model: nn.Module, layers: dict[str, tuple[nn.Module, int, int]]) -> dict[str, LayerGates]:
    """Register a :class:`LayerGates` parametrization on each layer's weight; returns them by name."""
    gates = {}
    for name, (mod, axis, m) in layers.items():
        g = LayerGates(axis, m).to(mod.weight.device)
        parametrize.register_parametrization(mod, "weight", g)
        gates[name] = g
    return gates


def detach(model: nn.Module, layers: dict[str, tuple[nn.Module, int, int]]) -> None:
    """Remove the parametrizations, keeping the trained dense weights (not the masked ones)."""
    for mod, _, _ in layers.values():
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)


@dataclass
class SearchState:
    """Everything a search needs to resume: step, regulariser weight, recorded plans, fraction history."""

    step: int = 0
    coeff: float = 0.05
    plans: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    last_check: float = 1.0


def _fraction(gates: dict[str, LayerGates], macs: dict[str, int], total: int, hard: bool) -> torch.Tensor:
    """MACs of the model as a fraction of dense: searched layers at N/M, everything else dense."""
    frac = torch.tensor(float(total - sum(macs.values())))
    for name, g in gates.items():
        n = g.gates().detach().gt(0.5).sum().float() if hard else g.gates().sum()
        frac = frac + macs[name] * n / g.m
    return frac / total


def _plan(gates: dict[str, LayerGates], macs: dict[str, int], total: int, budget: float, model_name: str,
          step: int) -> RatioPlan:
    ratios = {name: f"{g.n()}:{g.m}" for name, g in gates.items()}
    kept = sum(macs[n] * g.n() // g.m for n, g in gates.items()) + total - sum(macs.values())
    return RatioPlan(ratios, name=f"sls-{100 * budget:g}", macs_fraction=kept / total, budget=budget,
                     model=model_name, meta={"search_step": step})


def search_step(model: nn.Module, gates: dict[str, LayerGates], macs: dict[str, int], total: int, budgets: list[float],
                state: SearchState, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor], model_name: str,
                anneal_every: int, anneal_alpha: float, anneal_min_drop: float) -> dict[str, float]:
    """One optimisation step of the search; records the plans of the budgets the hard fraction reached."""
    task = loss_fn()
    frac = _fraction(gates, macs, total, hard=False)
    loss = task + state.coeff * frac
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    state.step += 1
    with torch.no_grad():
        hard = float(_fraction(gates, macs, total, hard=True))
        pending = budgets[len(state.plans):]
        if pending and hard <= pending[0] + 1e-12:
            plan = _plan(gates, macs, total, pending[0], model_name, state.step)
            state.plans.append(plan.to_dict())
            for g in gates.values():  # later plans nest inside this one
                g.bound.fill_(g.n())
            log.info("budget %.4g reached at step %d: %.4f of dense MACs", pending[0], state.step, plan.macs_fraction)
        if state.step % anneal_every == 0:
            if state.last_check - hard < anneal_min_drop:
                state.coeff *= anneal_alpha
            state.last_check = hard
    rec = {"step": state.step, "task": task.item(), "fraction": hard, "coeff": state.coeff}
    state.history.append(rec)
    return rec


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without the search parametrizations: each layer's dense weight under its
    own name (the weights the search trained, unmasked), no scores."""
    out = {}
    for k, v in model.state_dict().items():
        if ".parametrizations.weight.original" in k:
            out[k.replace(".parametrizations.weight.original", ".weight")] = v.clone()
        elif ".parametrizations.weight." not in k:
            out[k] = v.clone()
    return out


SEARCH_FILES = ("search.pt", "search_log.jsonl", "sls-*.yaml", "sls-*.weights.pt")  # what a search writes


def run_search(cfg, resume: bool = False, overwrite: bool = False) -> list[RatioPlan]:
    """``dynprune search``: the search of a :class:`~dynprune.config.TrainConfig`'s ``search`` section on its
    model (pretrained ``model.weights``), dataset, degradation and loss. Writes ``out_dir/search.pt``
    (atomic, every ``checkpoint_every`` steps; ``resume`` continues it, bit-identically, and may change only
    ``search.steps``, ``search.checkpoint_every``, ``threads`` and the sections the search does not read:
    ``convert``, ``stages``, ``classifier``...), ``out_dir/<plan>.yaml`` per budget with
    ``out_dir/<plan>.weights.pt`` (the dense weights the search had adapted when it fixed that plan, a
    ``model.weights`` file for fine-tuning from there) and ``out_dir/search_log.jsonl``.

    ``overwrite`` replaces another search's files in ``out_dir`` (:data:`SEARCH_FILES`); without it or
    ``resume`` such a folder is refused.

    Returns:
        The plans, largest budget first (fewer if the search ran out of steps before a budget: warned).
    Raises:
        ValueError: no searchable layer, ``out_dir`` holding another search, or a resumed checkpoint of
        another configuration.
    """
    from .checkpoint import load_file, save_atomic
    from .config import check_device
    from .outputs import RunLog, checkpoint_note, claim_run_dir
    from .progress import progress
    from .registry import create
    from .trainer import config_differences, sample_batch

    sc = cfg.search
    check_device(cfg.device)
    out = claim_run_dir(cfg.out_dir, SEARCH_FILES, resume, overwrite, "search")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    kwargs = dict(cfg.model.kwargs)
    model = create("models", cfg.model.name, **({"weights": cfg.model.weights} if cfg.model.weights else {}), **kwargs)
    model.to(cfg.device)
    dataset = create("datasets", cfg.dataset.name, **cfg.dataset.kwargs)
    degrade = create("degradations", cfg.degradation.name, **cfg.degradation.kwargs)
    rec_loss = create("losses", cfg.loss.name, **cfg.loss.kwargs)
    layers = searchable_layers(model, sc.m, sc.exclude)
    if not layers:
        raise ValueError(f"nothing to search in {cfg.model.name}: no Conv/Linear layer with a reduction axis of "
                         f"length > 1 outside exclude={sc.exclude}")
    spe = max(1, len(dataset) // sc.batch_size)
    _, probe, _ = sample_batch(dataset, degrade, cfg.seed, 10, 0, 1, spe)
    macs, total = layer_macs(model, (probe.to(cfg.device),), layers)
    gates = attach(model, layers)
    scores = [g.scores for g in gates.values()]
    weights = [p for n, p in model.named_parameters() if not n.endswith(".scores")]
    groups = [{"params": scores, "lr": sc.score_lr}] + ([{"params": weights, "lr": sc.lr}] if sc.lr > 0 else [])
    if sc.lr == 0:
        for p in weights:
            p.requires_grad_(False)
    opt = torch.optim.Adam(groups)
    state = SearchState(coeff=sc.reg_weight)
    ckpt_path = out / "search.pt"
    runlog = RunLog(out / "search_log.jsonl")
    dump = cfg.model_dump(mode="json")
    if resume and ckpt_path.is_file():
        ckpt = load_file(ckpt_path)
        diff = [d for d in config_differences(ckpt["config"], dump)
                if d.startswith(_SEARCH_USES) and not d.startswith(_SAFE_TO_CHANGE)]
        if diff:
            raise ValueError(f"cannot resume from {str(ckpt_path)!r}: its config differs in " + "; ".join(diff))
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = SearchState(**ckpt["state"])
        runlog.rewind(lambda r: r["step"] <= state.step)
        log.info("resumed the search from %s at step %d", ckpt_path, state.step)

    def save() -> None:
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state.__dict__,
                     "config": dump}, ckpt_path)

    def loss_fn() -> torch.Tensor:
        clean, degraded, _ = sample_batch(dataset, degrade, cfg.seed, 10, state.step, sc.batch_size, spe)
        clean, degraded = clean.to(cfg.device), degraded.to(cfg.device)
        return rec_loss(model(degraded), clean).mean()

    out.mkdir(parents=True, exist_ok=True)
    model.train()
    bar = progress(range(state.step, sc.steps), "SLS search", total=sc.steps, initial=state.step)
    for _ in bar:
        if len(state.plans) == len(sc.budgets):  # a resumed search that had finished
            break
        recorded = len(state.plans)
        rec = search_step(model, gates, macs, total, sc.budgets, state, opt, loss_fn, type(model).__name__,
                          sc.anneal_every, sc.anneal_alpha, sc.anneal_min_drop)
        if len(state.plans) > recorded:  # the weights the search had adapted to this plan, for fine-tuning
            save_atomic({"model": _plain_state(model), "arch": getattr(model, "arch", dict(cfg.model.kwargs)),
                         "name": cfg.model.name}, out / f"{state.plans[-1]['name']}.weights.pt")
        if not math.isfinite(rec["task"]):
            raise FloatingPointError(f"non-finite search loss at step {state.step}; "
                                     f"{checkpoint_note(out, ckpt_path.name)}")
        bar.set_postfix(loss=f"{rec['task']:.4g}", macs=f"{rec['fraction']:.3f}", plans=len(state.plans))
        if state.step % 25 == 0:
            runlog.append(rec)
        if state.step % sc.checkpoint_every == 0:
            save()
    bar.close()
    save()
    plans = [RatioPlan.coerce(p) for p in state.plans]
    for plan in plans:
        plan.save(out / f"{plan.name}.yaml")
    missing = sc.budgets[len(plans):]
    if missing:
        last = state.history[-1]["fraction"] if state.history else 1.0
        log.warning("the search ran %d steps and did not reach the budgets %s (MACs fraction %.4f): raise "
                    "search.steps or search.reg_weight", state.step, missing, last)
    return plans
