"""MACs audit on fvcore's ``FlopCountAnalysis``: per branch, per module, the classifier, and the
dataset average under a routing.

fvcore counts one multiply-add as one "flop"; this module calls it MACs. A converted layer on
branch N:M costs N/M of its dense MACs. Paper conventions are offered for side-by-side tables:

- ``"classpruning"``: 2 x (conv/linear MACs + one add per output element for a bias), on the paper's
  1 x C x 256 x 256 input; transposed convs counted on the output grid (thop-style).
- ``"classsr"``: 2 x conv/linear MACs without bias adds, transposed convs on the output grid.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

with warnings.catch_warnings():  # fvcore imports torch.jit.script, deprecated in torch >= 2.10
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .branch import use_branch
from .classpruning import ClassPruning
from .convert import conversion_report, model_ratios
from .layers import DynamicNMMixin, VariableNormMixin

__all__ = ["audit", "count_macs", "AuditReport", "BranchAudit", "ModuleCost", "CONVENTIONS"]

CONVENTIONS = ("macs", "classpruning", "classsr")


@dataclass
class ModuleCost:
    """MACs of one leaf module on one branch (ints). ``ratio`` is None for layers kept dense."""

    name: str
    type: str
    ratio: str | None
    dense_macs: int
    effective_macs: int
    bias_adds: int = 0
    grid_factor: int = 1

    @property
    def density(self) -> float:
        return self.effective_macs / self.dense_macs if self.dense_macs else 1.0


@dataclass
class BranchAudit:
    """Cost of one branch: ``dense_macs`` (fvcore total), ``effective_macs`` (N:M-discounted), modules."""

    index: int
    ratio: str
    dense_macs: int
    effective_macs: int
    modules: list[ModuleCost] = field(default_factory=list)

    def flops(self, convention: str = "macs") -> float:
        """The branch cost in a named convention (see module doc).

        Raises:
            ValueError: unknown convention.
        """
        if convention == "macs":
            return float(self.effective_macs)
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
        total = 0.0
        for m in self.modules:
            if m.type == "other" or m.bias_adds < 0:
                continue
            adds = m.bias_adds if convention == "classpruning" else 0
            total += (m.dense_macs * m.grid_factor + adds) * m.density
        return 2.0 * total


@dataclass
class AuditReport:
    """Result of :func:`audit`.

    Attributes:
        branches: one :class:`BranchAudit` per ratio, sparsest first.
        input_shape: the audited input's shape.
        params: parameters of the audited model (restorer + classifier, aux norms included).
        params_added: parameters the conversion added (per-branch norms).
        classifier_macs / classifier_params: the difficulty classifier's cost (0 without one).
        unsupported_ops: operators fvcore did not count, with their occurrence counts.
    """

    branches: list[BranchAudit]
    input_shape: tuple[int, ...]
    params: int
    params_added: int = 0
    classifier_macs: int = 0
    classifier_params: int = 0
    unsupported_ops: dict[str, int] = field(default_factory=dict)

    @property
    def dense_macs(self) -> int:
        return self.branches[-1].dense_macs

    def relative_costs(self) -> torch.Tensor:
        """C_i = effective MACs of branch i / dense MACs, float32 (L,): the costs of L_C (eq. 5)."""
        return torch.tensor([b.effective_macs / self.dense_macs for b in self.branches], dtype=torch.float32)

    def routed_macs(self, fractions: Sequence[float], convention: str = "macs") -> float:
        """Average cost per image given the fraction routed to each branch, plus the classifier.

        Raises:
            ValueError: fractions do not match the branches or do not sum to 1.
        """
        if len(fractions) != len(self.branches) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ValueError(f"fractions {list(fractions)} must give one value per branch "
                             f"({len(self.branches)}) and sum to 1")
        cls = self.classifier_macs * (2 if convention != "macs" else 1)
        return sum(f * b.flops(convention) for f, b in zip(fractions, self.branches)) + cls

    def table(self, convention: str = "macs") -> str:
        """Markdown table of the branches (G units)."""
        rows = ["| branch | dense GMACs | effective GMACs | % of dense | " + f"{convention} (G) |",
                "|---|---:|---:|---:|---:|"]
        for b in self.branches:
            rows.append(f"| {b.ratio} | {b.dense_macs / 1e9:.3f} | {b.effective_macs / 1e9:.3f} | "
                        f"{100 * b.effective_macs / self.dense_macs:.1f}% | {b.flops(convention) / 1e9:.3f} |")
        if self.classifier_macs:
            rows.append(f"| classifier | {self.classifier_macs / 1e9:.4f} | {self.classifier_macs / 1e9:.4f} | "
                        f"{100 * self.classifier_macs / self.dense_macs:.2f}% | |")
        return "\n".join(rows)


def _fvcore(model: nn.Module, inputs: tuple) -> FlopCountAnalysis:
    fca = FlopCountAnalysis(model, inputs)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca


def count_macs(model: nn.Module, example_inputs) -> int:
    """Total fvcore MACs of a plain model on ``example_inputs`` (eval mode, no grad)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(_fvcore(model, inputs).total())
    finally:
        model.train(was)


def _leaf_outputs(model: nn.Module, inputs: tuple) -> dict[str, tuple[int, int]]:
    """One forward with hooks: (bias adds over all calls, transposed-conv grid factor) per conv/linear leaf."""
    found: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (_ConvNd, nn.Linear)):
            def hook(m, inp, out, name=name):  # summed over calls: recurrent nets reuse modules
                adds = out.numel() if m.bias is not None else 0
                grid = math.prod(m.stride) if isinstance(m, _ConvTransposeNd) else 1
                found[name] = (found.get(name, (0, 1))[0] + adds, grid)
            hooks.append(mod.register_forward_hook(hook))
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return found


def _branch_cost(net: nn.Module, inputs: tuple, index: int, label: str, discount: bool,
                 unsupported: dict) -> BranchAudit:
    """fvcore MACs of ``net`` under the current branch context; N:M layers discounted if ``discount``."""
    extra = _leaf_outputs(net, inputs)
    fca = _fvcore(net, inputs)
    total = int(fca.total())
    by_mod = fca.by_module()
    unsupported.update(fca.unsupported_ops())
    modules, leaf_sum = [], 0
    for name, mod in net.named_modules():
        leaf = next(mod.children(), None) is None or isinstance(mod, VariableNormMixin)
        if not leaf or name not in by_mod or ".aux_norms." in name + ".":
            continue
        dense = int(by_mod[name])
        if dense == 0 and name not in extra:
            continue
        leaf_sum += dense
        r = mod.nm_ratios[index] if discount and isinstance(mod, DynamicNMMixin) else None
        eff = dense * r.n // r.m if r is not None else dense
        adds, grid = extra.get(name, (-1, 1))
        modules.append(ModuleCost(name, type(mod).__name__, str(r) if r else None, dense, eff, adds, grid))
    if total > leaf_sum:
        modules.append(ModuleCost("(functional)", "other", None, total - leaf_sum, total - leaf_sum, -1))
    return BranchAudit(index, label, total, sum(m.effective_macs for m in modules), modules)


def audit(model: nn.Module, example_inputs) -> AuditReport:
    """Audit a converted model, a :class:`~dynprune.classsr.SeparateBranches`, or a :class:`ClassPruning`
    built on either, branch by branch with fvcore.

    Each branch of a converted model is first run once normally (eval mode, no grad) so its masks are
    cached, then traced; a converted layer on branch N:M costs N/M of its dense MACs. For separate
    networks each branch costs what its network costs, and the last (widest) one is "dense".

    Args:
        model: see above.
        example_inputs: a tensor or tuple of tensors, e.g. ``torch.zeros(1, 1, 256, 256)``.
    Returns:
        :class:`AuditReport` with per-branch and per-module MACs (ints).
    Raises:
        ValueError: ``model`` has no branches (not converted).
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    classifier, restorer = None, model
    if isinstance(model, ClassPruning):
        restorer, classifier = model.restorer, model.classifier
    separate = getattr(restorer, "branch_labels", None)
    params_added = 0 if separate is not None else conversion_report(restorer).params_added
    was = model.training
    model.eval()
    branches, unsupported = [], {}
    try:
        with torch.no_grad():
            if separate is not None:
                for i, (label, net) in enumerate(zip(separate, restorer.nets)):
                    branches.append(_branch_cost(net, inputs, i, label, False, unsupported))
            else:
                ratios = model_ratios(restorer)
                for i, ratio in enumerate(ratios):
                    with use_branch(i):
                        branches.append(_branch_cost(restorer, inputs, i, str(ratio), True, unsupported))
            cls_macs = count_macs(classifier, inputs) if classifier is not None else 0
    finally:
        model.train(was)
    return AuditReport(branches, tuple(inputs[0].shape), sum(p.numel() for p in model.parameters()),
                       params_added, cls_macs,
                       sum(p.numel() for p in classifier.parameters()) if classifier is not None else 0,
                       dict(unsupported))
