"""MACs audit on fvcore's ``FlopCountAnalysis``: per branch, per module, the classifier, and the
dataset average under a routing.

fvcore counts one multiply-add as one "flop"; this module calls it MACs. A converted layer on
branch N:M costs N/M of its dense MACs. Paper conventions are offered for side-by-side tables:

- ``"classpruning"``: 2 x (conv/linear MACs + one add per output element for a bias), on the paper's
  1 x C x 256 x 256 input; transposed convs counted on the output grid (thop-style).
- ``"classsr"``: 2 x conv/linear MACs without bias adds, transposed convs on the output grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch

with warnings.catch_warnings():  # fvcore imports torch.jit.script, deprecated in torch >= 2.10
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .branch import each_branch, use_branch
from .classpruning import ClassPruning
from .convert import conversion_report, model_ratios
from .layers import DynamicNMMixin, VariableNormMixin

__all__ = ["audit", "count_macs", "AuditReport", "BranchAudit", "ModuleCost", "CONVENTIONS"]

CONVENTIONS = ("macs", "classpruning", "classsr")
_AUDITS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # audit(reuse=True)


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
    unsupported_ops: dict[str, int] = field(default_factory=dict, compare=False)

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


def _attention_macs(inputs, outputs) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: q (..., L, E), k (..., S, E), v (..., S, Ev)
    cost L*S*E (Q K^T) + L*S*Ev (attention x V) MACs per batch-and-head."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _fused_mha_macs(inputs, outputs) -> int:
    """fvcore handle for ``aten::_native_multi_head_attention`` (nn.MultiheadAttention's fast path):
    in-projections, attention and out-projection; query (B, L, E), key/value (B, S, E)."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b, length, e = math.prod(q[:-2]), q[-2], q[-1]
    s = k[-2]
    return b * (length * e * e + 2 * s * e * e) + 2 * b * length * s * e + b * length * e * e


def _fvcore(model: nn.Module, inputs: tuple) -> FlopCountAnalysis:
    fca = FlopCountAnalysis(model, inputs)
    fca.set_op_handle("aten::scaled_dot_product_attention", _attention_macs,
                      "aten::_native_multi_head_attention", _fused_mha_macs)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca


@contextlib.contextmanager
def _traceable(model: nn.Module, index: int | None = None):
    """Audit context: nn.MultiheadAttention on its unfused path (its projections visible to fvcore),
    and, for branch ``index``, every dynamic layer's masked weight computed once so the jit trace
    sees a constant instead of the mask computation."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    layers = [m for m in model.modules() if isinstance(m, DynamicNMMixin)] if index is not None else []
    try:
        with use_branch(index if index is not None else -1):
            for m in layers:
                m._nm_frozen = (index, m.weight.detach())
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for m in layers:
            m._nm_frozen = None


def _run(model: nn.Module, inputs: tuple, doing: str):
    """``model(*inputs)``; an exception the model raises is re-raised with what the audit was doing."""
    try:
        return model(*inputs)
    except Exception as err:
        shapes = ", ".join(str(tuple(t.shape)) if torch.is_tensor(t) else type(t).__name__ for t in inputs)
        raise type(err)(f"audit: {doing} {type(model).__name__} on input {shapes} failed: {err}") from err


def count_macs(model: nn.Module, example_inputs) -> int:
    """Total fvcore MACs of a plain model on ``example_inputs`` (eval mode, no grad), attention included
    (``scaled_dot_product_attention`` and ``nn.MultiheadAttention``: L*S*(E + Ev) per batch and head).

    Raises:
        whatever the model raises on ``example_inputs``, prefixed with "audit: counting MACs of ...".
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), _traceable(model):
            _run(model, inputs, "counting MACs of")
            return int(_fvcore(model, inputs).total())
    finally:
        model.train(was)


def _leaf_outputs(model: nn.Module, inputs: tuple) -> dict[str, tuple[int, int]]:
    """One forward with hooks: (bias adds over all calls, transposed-conv grid factor) per conv/linear leaf;
    for the ``out_proj`` of an ``nn.MultiheadAttention`` (called functionally by its parent) its MACs."""
    found: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (_ConvNd, nn.Linear)):
            def hook(m, inp, out, name=name):  # summed over calls: recurrent nets reuse modules
                adds = out.numel() if m.bias is not None else 0
                grid = math.prod(m.stride) if isinstance(m, _ConvTransposeNd) else 1
                found[name] = (found.get(name, (0, 1))[0] + adds, grid)
            hooks.append(mod.register_forward_hook(hook))
        if isinstance(mod, nn.MultiheadAttention):
            def mha_hook(m, inp, out, name=f"{name}.out_proj" if name else "out_proj"):
                attn = out[0]
                proj = m.out_proj._parameters["weight"]
                macs = attn.numel() // attn.shape[-1] * proj.shape[0] * proj.shape[1]
                adds = attn.numel() if m.out_proj.bias is not None else 0
                prev = found.get("@" + name, (0, 0))
                found["@" + name] = (prev[0] + macs, prev[1] + adds)
            hooks.append(mod.register_forward_hook(mha_hook))
    try:
        _run(model, inputs, "tracing")
    finally:
        for h in hooks:
            h.remove()
    return found


def _effective(mod: nn.Module, index: int, dense: int) -> int:
    num, den = mod.branch_density(index)
    return dense * num // den


def _branch_cost(net: nn.Module, inputs: tuple, index: int, label: str, discount: bool) -> BranchAudit:
    """fvcore MACs of ``net`` under the current branch context; N:M layers discounted if ``discount``."""
    extra = _leaf_outputs(net, inputs)
    fca = _fvcore(net, inputs)
    total = int(fca.total())
    by_mod = fca.by_module()
    modules, leaf_sum = [], 0
    for name, mod in net.named_modules():
        leaf = next(mod.children(), None) is None or isinstance(mod, VariableNormMixin)
        if not leaf or ".aux_norms." in name + ".":
            continue
        dense = int(by_mod.get(name, 0))
        functional = extra.get("@" + name)
        if functional is not None and dense == 0:  # out_proj, run by its MultiheadAttention parent
            dense = functional[0]
            extra[name] = (functional[1], 1)
        if name not in by_mod and functional is None or dense == 0 and name not in extra:
            continue
        leaf_sum += dense
        dynamic = discount and isinstance(mod, DynamicNMMixin)
        eff = _effective(mod, index, dense) if dynamic else dense
        adds, grid = extra.get(name, (-1, 1))
        modules.append(ModuleCost(name, type(mod).__name__, str(mod.nm_ratios[index]) if dynamic else None,
                                  dense, eff, adds, grid))
    if total > leaf_sum:
        modules.append(ModuleCost("(functional)", "other", None, total - leaf_sum, total - leaf_sum, -1))
    return BranchAudit(index, label, total, sum(m.effective_macs for m in modules), modules,
                       dict(fca.unsupported_ops()))


def _pixels(inputs: tuple) -> int:
    return math.prod(inputs[0].shape[-2:]) if inputs[0].dim() >= 3 else 0


def _affine(va: int, vb: int, pa: int, pb: int, p: int) -> int | None:
    """v(p) on the line through (pa, va) and (pb, vb), or None if it is not an integer."""
    num = (vb - va) * (p - pa)
    return va + num // (pb - pa) if num % (pb - pa) == 0 else None


def _scaled_branches(a: list[BranchAudit], b: list[BranchAudit], pa: int, pb: int, p: int) -> list[BranchAudit] | None:
    """Branch audits at ``p`` pixels from those at ``pa`` and ``pb``, every count affine in pixels, or None."""
    out = []
    for ba, bb in zip(a, b):
        if [m.name for m in ba.modules] != [m.name for m in bb.modules]:
            return None
        mods = []
        for ma, mb in zip(ba.modules, bb.modules):
            vals = [_affine(x, y, pa, pb, p) for x, y in ((ma.dense_macs, mb.dense_macs),
                                                            (ma.effective_macs, mb.effective_macs),
                                                            (ma.bias_adds, mb.bias_adds))]
            if None in vals:
                return None
            mods.append(dataclasses.replace(ma, dense_macs=vals[0], effective_macs=vals[1], bias_adds=vals[2]))
        dense = _affine(ba.dense_macs, bb.dense_macs, pa, pb, p)
        if dense is None:
            return None
        out.append(BranchAudit(ba.index, ba.ratio, dense, sum(m.effective_macs for m in mods), mods))
    return out


def _reusing(owner: nn.Module, inputs: tuple, reuse: bool, compute, scale):
    """``compute()`` for this input size, or a prediction from earlier sizes of the same ``owner``: after two
    sizes, a third is predicted with ``scale(a, b, pa, pb, p)`` (affine in the pixel count p) and checked
    against its ``compute()``; once exact, later sizes are predicted without computing."""
    shape, pixels = tuple(inputs[0].shape), _pixels(inputs)
    if not reuse or not pixels:
        return compute()
    entry = _AUDITS.setdefault(owner, {}).setdefault((shape[:-2], str(inputs[0].dtype), len(inputs)),
                                                     {"samples": {}, "affine": None})
    samples = entry["samples"]
    if shape in samples:
        return samples[shape][1]
    (pa, a), (pb, b) = list(samples.values())[:2] if len(samples) >= 2 else ((0, None), (0, None))
    if entry["affine"]:
        predicted = scale(a, b, pa, pb, pixels)
        if predicted is not None:
            return predicted
    value = compute()
    if len(samples) == 2 and entry["affine"] is None:
        entry["affine"] = scale(a, b, pa, pb, pixels) == value
    if len(samples) < 2 and all(p != pixels for p, _ in samples.values()):
        samples[shape] = (pixels, value)
    return value


def audit(model: nn.Module, example_inputs, reuse: bool = True) -> AuditReport:
    """Audit a converted model, a :class:`~dynprune.classsr.SeparateBranches`, or a :class:`ClassPruning`
    built on either, branch by branch with fvcore.

    Each branch is traced with its masked weights computed once; a converted layer on branch N:M costs
    N/M of its dense MACs (of the covered share of a partly converted layer). Attention counts
    L*S*(E + Ev) MACs per batch and head; the ``out_proj`` of an ``nn.MultiheadAttention`` is counted
    (and discounted) as its own layer. For separate networks each branch costs what its network costs,
    and the last (widest) one is "dense".

    Args:
        model: see above.
        example_inputs: a tensor or tuple of tensors, e.g. ``torch.zeros(1, 1, 256, 256)``.
        reuse: audits of the same model at new image sizes reuse earlier traces: after two sizes, a
            third is predicted with every count affine in the pixel count and checked against its
            trace; once a prediction was exact, further sizes are predicted without tracing (as for
            fully convolutional networks with stride-1 "same" convolutions); otherwise every size
            is traced.
    Returns:
        :class:`AuditReport` with per-branch and per-module MACs (ints).
    Raises:
        ValueError: ``model`` has no branches (not converted).
        Whatever the model raises on ``example_inputs``, prefixed with what the audit was doing.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    classifier, restorer = None, model
    if isinstance(model, ClassPruning):
        restorer, classifier = model.restorer, model.classifier
    separate = getattr(restorer, "branch_labels", None)
    params_added = 0 if separate is not None else conversion_report(restorer).params_added
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            branches = _reusing(restorer, inputs, reuse, lambda: _branches(restorer, inputs, separate),
                                _scaled_branches)
            cls_macs = _reusing(classifier, inputs, reuse, lambda: count_macs(classifier, inputs),
                                _affine) if classifier is not None else 0
    finally:
        model.train(was)
    unsupported: dict[str, int] = {}
    for b in branches:
        for op, n in b.unsupported_ops.items():
            unsupported[op] = max(unsupported.get(op, 0), n)
    return AuditReport(branches, tuple(inputs[0].shape), sum(p.numel() for p in model.parameters()),
                       params_added, cls_macs,
                       sum(p.numel() for p in classifier.parameters()) if classifier is not None else 0,
                       unsupported)


def _branches(restorer: nn.Module, inputs: tuple, separate) -> list[BranchAudit]:
    if separate is not None:
        out = []
        for i, (label, net) in enumerate(zip(separate, restorer.nets)):
            with _traceable(net):
                out.append(_branch_cost(net, inputs, i, label, False))
        return out
    ratios = model_ratios(restorer)

    def one(i: int) -> BranchAudit:
        with _traceable(restorer, i):
            return _branch_cost(restorer, inputs, i, str(ratios[i]), True)

    return each_branch(one, len(ratios))
