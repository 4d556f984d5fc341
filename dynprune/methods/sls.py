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
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils import parametrize

from ..checkpoint import save_atomic
from ..nm import nm_order
from ..plan import RatioPlan
from ..registry import create
from ..train import Phase, Run, StepBatches, sample_batch

__all__ = ["LayerGates", "SearchState", "Search", "searchable_layers", "attach", "detach", "run_search", "layer_macs"]

log = logging.getLogger(__name__)
_SEARCH_USES = ("model", "dataset", "degradation", "loss", "search", "seed")  # the rest is the fine-tune's


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
    from ..audit import count_macs, _fvcore  # fvcore setup shared with the audit

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


class Search:
    """SLS's search of a :class:`~dynprune.config.TrainConfig`'s ``search`` section on the shared run loop
    (:class:`dynprune.train.Run`): one phase whose loss is the task loss plus the regulariser weight times the
    soft MACs fraction, and whose per-step hook records the plans of the budgets reached and anneals the
    weight; it ends when every budget has a plan. See :func:`run_search` for the files it writes.

    Raises:
        ValueError: no searchable layer, ``out_dir`` holding another search, or a resumed checkpoint of
        another configuration (only the sections the search reads are compared).
    """

    def __init__(self, cfg, resume: bool = False, overwrite: bool = False):
        self.cfg, sc = cfg, cfg.search
        ignore = tuple(k for k in cfg.model_dump() if k not in _SEARCH_USES) + ("search.checkpoint_every",)
        self.run = Run(cfg, SEARCH_FILES, resume, overwrite, "search", "search.pt", "search_log.jsonl",
                       sc.checkpoint_every, ignore=ignore)
        self.out = self.run.out
        kwargs = dict(cfg.model.kwargs)
        model = create("models", cfg.model.name, **({"weights": cfg.model.weights} if cfg.model.weights else {}),
                       **kwargs)
        self.model = model.to(cfg.device)
        dataset = create("datasets", cfg.dataset.name, **cfg.dataset.kwargs)
        degrade = create("degradations", cfg.degradation.name, **cfg.degradation.kwargs)
        self.rec_loss = create("losses", cfg.loss.name, **cfg.loss.kwargs)
        self.layers = searchable_layers(model, sc.m, sc.exclude)
        if not self.layers:
            raise ValueError(f"nothing to search in {cfg.model.name}: no Conv/Linear layer with a reduction axis "
                             f"of length > 1 outside exclude={sc.exclude}")
        spe = max(1, len(dataset) // sc.batch_size)
        _, probe, _ = sample_batch(dataset, degrade, cfg.seed, 10, 0, 1, spe)
        self.macs, self.total = layer_macs(model, (probe.to(cfg.device),), self.layers)
        self.gates = attach(model, self.layers)
        self.batches = StepBatches(dataset, degrade, cfg.seed, 10, sc.batch_size, spe)
        self.state = SearchState(coeff=sc.reg_weight)
        self.run.restore(self)

    def _groups(self) -> list[dict]:
        sc = self.cfg.search
        scores = [g.scores for g in self.gates.values()]
        weights = [p for n, p in self.model.named_parameters() if not n.endswith(".scores")]
        if sc.lr == 0:
            for p in weights:
                p.requires_grad_(False)
        return [{"params": scores, "lr": sc.score_lr}] + ([{"params": weights, "lr": sc.lr}] if sc.lr > 0 else [])

    def phases(self):
        return [Phase(name="search", desc="SLS search", steps=self.cfg.search.steps, schedule=None,
                      params=self._groups, batches=self.batches, loss=self._loss, start=self.model.train,
                      after_update=self._after_update, checkpoint_every=self.cfg.search.checkpoint_every)]

    def _loss(self, batch) -> tuple[torch.Tensor, dict]:
        clean, degraded, _ = batch
        task = self.rec_loss(self.model(degraded), clean).mean()
        if not torch.isfinite(task):
            return task, {}
        frac = _fraction(self.gates, self.macs, self.total, hard=False)
        return task + self.state.coeff * frac, {"task": task.detach(), "coeff": self.state.coeff}

    @torch.no_grad()
    def _after_update(self, step: int) -> bool:
        """Record the plans of the budgets the hard fraction reached, anneal; True once every budget has one."""
        sc, state = self.cfg.search, self.state
        state.step = step + 1
        hard = float(_fraction(self.gates, self.macs, self.total, hard=True))
        pending = sc.budgets[len(state.plans):]
        if pending and hard <= pending[0] + 1e-12:
            plan = _plan(self.gates, self.macs, self.total, pending[0], type(self.model).__name__, state.step)
            state.plans.append(plan.to_dict())
            for g in self.gates.values():  # later plans nest inside this one
                g.bound.fill_(g.n())
            log.info("budget %.4g reached at step %d: %.4f of dense MACs", pending[0], state.step, plan.macs_fraction)
            save_atomic(  # the weights the search had adapted to this plan, for fine-tuning
                {"model": _plain_state(self.model), "arch": getattr(self.model, "arch", dict(self.cfg.model.kwargs)),
                         "name": self.cfg.model.name}, self.out / f"{plan.name}.weights.pt")
        if state.step % sc.anneal_every == 0:
            if state.last_check - hard < sc.anneal_min_drop:
                state.coeff *= sc.anneal_alpha
            state.last_check = hard
        state.history.append({"step": state.step, "fraction": hard, "coeff": state.coeff})
        return len(state.plans) == len(sc.budgets)

    def checkpoint(self) -> dict:
        return {"model": self.model.state_dict(), "state": dict(self.state.__dict__)}

    def load_checkpoint(self, ckpt: dict, path) -> None:
        if "state" not in ckpt:
            raise ValueError(f"cannot resume from {str(path)!r}: not an SLS search checkpoint")
        self.model.load_state_dict(ckpt["model"])
        self.state = SearchState(**ckpt["state"])

    def legacy_position(self, ckpt: dict) -> tuple[int, int]:
        if len(self.state.plans) == len(self.cfg.search.budgets):
            self.run.stopped.append("search")
            return 1, 0
        return 0, self.state.step

    def fit(self) -> list[RatioPlan]:
        """Run (the rest of) the search; write the plans. Returns them, largest budget first."""
        self.run.fit(self)
        plans = [RatioPlan.coerce(p) for p in self.state.plans]
        for plan in plans:
            plan.save(self.out / f"{plan.name}.yaml")
        missing = self.cfg.search.budgets[len(plans):]
        if missing:
            last = self.state.history[-1]["fraction"] if self.state.history else 1.0
            log.warning("the search ran %d steps and did not reach the budgets %s (MACs fraction %.4f): raise "
                        "search.steps or search.reg_weight", self.state.step, missing, last)
        return plans


def run_search(cfg, resume: bool = False, overwrite: bool = False) -> list[RatioPlan]:
    """``dynprune search``: the search of a :class:`~dynprune.config.TrainConfig`'s ``search`` section on its
    model (pretrained ``model.weights``), dataset, degradation and loss (:class:`Search`). Writes
    ``out_dir/search.pt`` (atomic, every ``search.checkpoint_every`` steps; ``resume`` continues it,
    bit-identically, and may give it more ``search.steps``; the sections the search does not read, such as
    ``convert`` and ``stages``, may change), ``out_dir/<plan>.yaml`` per budget with
    ``out_dir/<plan>.weights.pt`` (the dense weights the search had adapted when it fixed that plan, a
    ``model.weights`` file for fine-tuning from there) and ``out_dir/search_log.jsonl``.

    ``overwrite`` replaces another search's files in ``out_dir`` (:data:`SEARCH_FILES`); without it or
    ``resume`` such a folder is refused.

    Returns:
        The plans, largest budget first (fewer if the search ran out of steps before a budget: warned).
    Raises:
        ValueError: see :class:`Search`. FloatingPointError: a non-finite batch or loss (step named).
    """
    return Search(cfg, resume, overwrite).fit()
