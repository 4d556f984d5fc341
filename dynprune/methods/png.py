"""PnG: one model instance for several restoration tasks by micro-structured prune-and-grow (Jiang, Wang, Liu,
Li, "PNG: Micro-Structured Prune-and-Grow Networks for Flexible Image Restoration", CVPRW 2021).

The tasks (SR scales, noise levels, ...) come in a fixed order. Task t owns ``share_t`` weights of every group
of M along each converted layer's reduction axis; its branch runs the weights of tasks 1..t, N_t = share_1 +
... + share_t of every M, so the branches are dynprune's nested N:M branches and ``use_branch(t)`` is task t.
Per task:

1. **grow**: every weight no earlier task owns is trained on task t (on a dense branch), the owned ones are
   frozen: their gradient is zeroed and, after every optimizer step, they are written back bit for bit;
2. **prune**: ``criterion`` ranks the grown weights per group (magnitude: the largest |w|); the first
   ``share_t`` become task t's, pinned in the layer's ordering (:func:`dynprune.layers.pin_order`), so no
   later change of any weight can move a mask;
3. **fine-tune**: only task t's weights train, on branch t.

The paper publishes no code; the decisions it leaves open are made as follows (docs/concepts.md, "PnG"):

- Weights not owned after task t keep their grown values and start task t+1's growth from there.
- Variable norms are per task (each branch has its own); task t grows with the dense branch's norm and
  starts its fine-tune from it. Heads (``PnGTask.head``) are dense, owned by their task, frozen after it.
- Everything else (biases, layers N:M cannot convert, shared norms and their running statistics, the part of
  a reduction axis beyond the last whole group) is shared: trained with task 1, frozen afterwards.
- If the shares add up to less than M, a training-only dense branch serves the growth and is removed at the
  end (the weights no task owns are zeroed): the model has one branch per task.
- Optional output distillation (``distill``, off by default): each task also learns a frozen teacher's output
  (one teacher, or one per task, e.g. its separate model), as the main job's ``distill`` does per level.
- The result is a ClassPruning checkpoint (``out_dir/png.pt``) whose branches are the tasks; when the tasks
  are the levels of one degradation, ``stages.classifier`` trains the classifier on it (the restorer stays
  frozen, so no branch drifts), written to ``out_dir/classifier/last.pt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..branch import use_branch
from ..checkpoint import check_finite, load_file, save_atomic
from ..config import PnGTask, StageConfig, TrainConfig
from ..layers import dynamic_layers, pin_from_state, pin_order, variable_norms
from ..losses import distilled
from ..models import build_model, load_trained
from ..nm import grouped, grouped_to_weight
from ..registry import create
from ..train import Phase, Run, StepBatches
from ..train.validation import held_out, record_split
from .classpruning import Trainer, build_teachers, first_image

__all__ = ["PnG", "PnGModel", "task_ratios", "classpruning_config", "load", "run_png", "RUN_FILES"]

log = logging.getLogger(__name__)
RUN_FILES = ("last.pt", "png.pt", "log.jsonl", "validation.json")
PHASES = ("grow", "finetune")


def task_ratios(cfg: TrainConfig) -> list[str]:
    """The branch ratios of a PnG model, one per task in order: ``"N_t:M"`` with N_t = share_1 + ... + share_t."""
    out, n = [], 0
    for task in cfg.png.tasks:
        n += task.share
        out.append(f"{n}:{cfg.png.m}")
    return out


def _head_patterns(cfg: TrainConfig) -> list[str]:
    return [p for t in cfg.png.tasks if t.head for p in (t.head, f"{t.head}.*")]


def classpruning_config(cfg: TrainConfig, ratios: Sequence[str] | None = None) -> TrainConfig:
    """The ClassPruning config of a PnG run's model: branches ``ratios`` (default: one per task,
    :func:`task_ratios`), task heads kept out of N:M, plain masking (pinned orderings: no SR-STE decay), and
    every restorer stage off, so only the classifier can train on it."""
    data = cfg.model_dump(mode="json")
    data["convert"].update(ratios=list(ratios or task_ratios(cfg)), mask_grad="masked", srste_decay=0.0,
                           exclude=list(cfg.convert.exclude) + _head_patterns(cfg))
    for stage in ("base", "restoration", "joint"):
        data["stages"][stage]["epochs"] = 0
    data["init_from"] = None
    data["distill"] = {"weight": 0.0, "teachers": []}  # the restorer is trained: nothing left to distil
    data["validation"] = {"every": 0}  # only the classifier trains on it
    return TrainConfig.model_validate(data)


def _name(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _norm_module(norm: nn.Module, branch: int) -> nn.Module:
    return norm if branch == len(norm.nm_ratios) - 1 else norm.aux_norms[branch]


def _norm_state(norm: nn.Module, branch: int) -> dict[str, torch.Tensor]:
    """One branch's parameters and statistics of a variable norm (without the other branches' copies)."""
    return {k: v.clone() for k, v in _norm_module(norm, branch).state_dict().items() if not k.startswith("aux_norms.")}


class PnGModel(nn.Module):
    """A PnG restorer with its tasks: ``model(x, task)`` runs task ``task``'s branch with its forward arguments.

    Args:
        restorer: the converted network (branch t = task t; a training checkpoint's may have one more,
            dense, growth branch). tasks: the run's tasks, in order. trained: how many of them are trained.
    Input/output as the restorer's: (B, C, h, w) in [0, 1] -> the task's output (e.g. (B, C, s*h, s*w)).
    """

    def __init__(self, restorer: nn.Module, tasks: Sequence[PnGTask], trained: int):
        super().__init__()
        self.restorer, self.tasks, self.trained = restorer, list(tasks), int(trained)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_index(self, task: int | str) -> int:
        """Index of a trained task given by index (negative counts from the last trained) or name.

        Raises:
            IndexError: an index beyond the trained tasks (the trained ones named).
            ValueError: a name that is not a task; a task not trained yet.
        """
        names = self.task_names
        if isinstance(task, str):
            if task not in names:
                raise ValueError(f"task {task!r} is not one of this model's tasks {names}")
            i = names.index(task)
        elif isinstance(task, int) and not isinstance(task, bool):
            if not -self.trained <= task < self.trained:
                rest = f"; {names[self.trained:]} not trained yet" if self.trained < len(names) else ""
                raise IndexError(f"task index {task} is beyond the {self.trained} trained task(s) "
                                 f"{names[:self.trained]}{rest}")
            return task % self.trained
        else:
            raise TypeError(f"task must be an index or a task name, got {task!r}")
        if i >= self.trained:
            raise ValueError(f"task {task!r} is not trained yet: this model has trained {names[:self.trained]}")
        return i

    def forward(self, x: torch.Tensor, task: int | str = -1) -> torch.Tensor:
        i = self.task_index(task)
        with use_branch(i):
            return self.restorer(x, **self.tasks[i].forward)


class PnG:
    """Runs the PnG task sequence of ``cfg.png`` (see the module doc), resumable from ``out_dir/last.pt``
    (written atomically every ``checkpoint_every`` steps and after every phase).

    Args:
        resume: continue ``out_dir/last.pt``; its config must equal ``cfg`` up to run-only fields, and its
            task order must be the same. overwrite: replace another run's files (:data:`RUN_FILES`).
    Raises:
        ValueError: no tasks; a task whose data does not fit the model or its head (the task, shapes and
            forward arguments named); ``distill.teachers`` neither one nor one per task, or a teacher whose
            output does not fit a task; ``out_dir`` holding another run without resume/overwrite; a resumed
            checkpoint with another task order or config (the differences named).
        FloatingPointError (from :meth:`fit`): a non-finite loss (task, phase and step named; the last
            checkpoint is kept).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False):
        if not cfg.png.tasks:
            raise ValueError("png.tasks is empty: give the task sequence, e.g. tasks: [{name: sigma15, share: 1, "
                             "degradation: {name: gaussian_noise, kwargs: {sigmas: [15]}}}, ...]")
        self.cfg, self.tasks = cfg, list(cfg.png.tasks)
        self.run = Run(cfg, RUN_FILES, resume, overwrite)
        self.out, self.resume = self.run.out, resume
        self.data = [self._task_data(t) for t in self.tasks]
        self.val: list[tuple[list, dict | None]] = []  # per task: held-out (name, clean) and real degraded
        for t, (dataset, degrade, loss) in enumerate(self.data):
            dataset, images, degraded = held_out(cfg, dataset, None)
            self.data[t] = (dataset, degrade, loss)
            self.val.append((images, degraded))
        if cfg.validation.every and cfg.validation.dataset is None:
            record_split(self.out, cfg, {"tasks": {t.name: [n for n, _ in v[0]] for t, v in zip(self.tasks, self.val)}})
        self.n = [int(r.split(":")[0]) for r in task_ratios(cfg)]
        ratios = task_ratios(cfg) + ([] if self.n[-1] == cfg.png.m else [f"{cfg.png.m}:{cfg.png.m}"])
        channels = first_image(self.data[0][0]).shape[0]
        model = build_model(classpruning_config(cfg, ratios), in_channels=channels)
        self.restorer, self.arch = model.restorer.to(cfg.device), model.restorer.arch
        self.grow_branch = len(ratios) - 1
        for _, layer in dynamic_layers(self.restorer):
            pin_order(layer)
        self.heads = {t.head: i for i, t in enumerate(self.tasks) if t.head}
        for head in self.heads:
            try:
                self.restorer.get_submodule(head)
            except AttributeError:
                raise ValueError(f"png task head {head!r} is not a module of {cfg.model.name}") from None
        self.teachers = self._build_teachers()
        self._masks: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}
        self.run.track_ema(self.restorer)
        self.run.validate_with(self.validate, ["psnr_mean"] + [f"psnr_{t.name}" for t in self.tasks])
        self.run.restore(self)
        self._check_tasks()

    def _build_teachers(self) -> list[nn.Module | None]:
        """One frozen teacher per task (``distill.teachers``: one for all tasks or one per task, in task order),
        or ``None`` per task when ``distill.weight`` is 0."""
        d = self.cfg.distill
        if d.weight == 0:
            return [None] * len(self.tasks)
        if len(d.teachers) not in (1, len(self.tasks)):
            raise ValueError(f"distill.teachers has {len(d.teachers)} entries; a PnG run with distill.weight "
                             f"{d.weight} needs one teacher, or one per task ({len(self.tasks)}: "
                             f"{[t.name for t in self.tasks]}), e.g. each task's separate model")
        teachers = build_teachers(d.teachers, self.cfg.device)
        return teachers * len(self.tasks) if len(teachers) == 1 else teachers

    # ---- data -------------------------------------------------------------------------------
    def _task_data(self, task: PnGTask):
        cfg = self.cfg
        parts = [(kind, getattr(task, field) or getattr(cfg, field)) for kind, field in
                 (("datasets", "dataset"), ("degradations", "degradation"), ("losses", "loss"))]
        return tuple(create(kind, c.name, **c.kwargs) for kind, c in parts)

    @torch.no_grad()
    def _check_tasks(self) -> None:
        """Each task's data through the model once: its output must have its clean target's shape."""
        self.restorer.eval()
        for i, (task, (dataset, degrade, _)) in enumerate(zip(self.tasks, self.data)):
            item = dataset[0]
            if isinstance(item, (tuple, list)):  # real pairs
                degraded, clean = (t.unsqueeze(0) for t in item)
            else:
                clean = item.unsqueeze(0)
                degraded, _ = degrade(clean, generator=torch.Generator().manual_seed(0))
            where = f"png task {task.name!r} (forward {task.forward or '{}'}" + (f", head {task.head!r})" if task.head
                                                                                 else ")")
            try:
                with use_branch(self.grow_branch):
                    out = self.restorer(degraded.to(self.cfg.device), **task.forward)
            except (RuntimeError, TypeError, ValueError) as err:
                raise ValueError(f"{where}: the model cannot take this task's data ({tuple(degraded.shape)} from "
                                 f"{(task.degradation or self.cfg.degradation).name!r}): "
                                 f"{str(err).splitlines()[0]}") from err
            if tuple(out.shape) != tuple(clean.shape):
                raise ValueError(f"{where}: the model maps the degraded input {tuple(degraded.shape)} to "
                                 f"{tuple(out.shape)}, but the clean target is {tuple(clean.shape)}: the task's "
                                 f"degradation (channels, scale) does not fit its head")
            teacher = self.teachers[i]
            if teacher is not None:
                try:
                    got = tuple(teacher(degraded.to(self.cfg.device), **task.forward).shape)
                except (RuntimeError, TypeError, ValueError) as err:
                    got = str(err).splitlines()[0]
                if got != tuple(clean.shape):
                    raise ValueError(f"{where}: its distillation teacher {i} maps the degraded input "
                                     f"{tuple(degraded.shape)} to {got}, but the clean target is {tuple(clean.shape)}: "
                                     f"a teacher must restore the same task")

    # ---- what trains ------------------------------------------------------------------------
    def _trainable(self, t: int, phase: int) -> tuple[int, dict[str, bool | torch.Tensor]]:
        """(branch, {parameter name: True, False or a bool mask of its trainable entries}) of a phase."""
        branch = self.grow_branch if PHASES[phase] == "grow" else t
        lo, hi = (self.n[t - 1] if t else 0), (self.cfg.png.m if PHASES[phase] == "grow" else self.n[t])
        rule: dict[str, bool | torch.Tensor] = {}
        for name, _ in self.restorer.named_parameters():
            rule[name] = t == 0  # shared: task 1's
        for name, layer in dynamic_layers(self.restorer):
            rank = layer.nm_rank
            sel = (rank >= lo) & (rank < hi)
            rule[_name(name, "weight")] = grouped_to_weight(sel, layer.dense_weight.shape, layer.nm_axis, rest=t == 0)
        for name, norm in variable_norms(self.restorer):
            for pname, _ in norm.named_parameters():
                b = int(pname.split(".")[1]) if pname.startswith("aux_norms.") else len(norm.nm_ratios) - 1
                rule[_name(name, pname)] = b == branch
        for head, owner in self.heads.items():
            for pname, _ in self.restorer.get_submodule(head).named_parameters():
                rule[_name(head, pname)] = owner == t
        return branch, rule

    def _train_mode(self, t: int) -> None:
        """Train mode, except the statistics of shared norms after task 1 and of other tasks' heads."""
        self.restorer.train()
        if t == 0:
            return
        own = {id(m) for _, v in variable_norms(self.restorer) for m in v.modules()}
        for head, owner in self.heads.items():
            if owner == t:
                own |= {id(m) for m in self.restorer.get_submodule(head).modules()}
        for mod in self.restorer.modules():
            if isinstance(mod, (_BatchNorm, _InstanceNorm)) and id(mod) not in own:
                mod.eval()

    # ---- prune ------------------------------------------------------------------------------
    @torch.no_grad()
    def _prune(self, t: int) -> None:
        """Give task t the ``share_t`` best free weights of every group: ranks n_{t-1}..n_t-1 in order."""
        lo = self.n[t - 1] if t else 0
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + t)
        for _, layer in dynamic_layers(self.restorer):
            rank = layer.nm_rank
            m = rank.shape[2]
            if self.cfg.png.criterion == "magnitude":  # the layer's pattern: weights, or blocks' L2 norms
                score = grouped(layer.nm_scores(), layer.nm_axis, m).abs().float()
            else:
                score = torch.rand(rank.shape, generator=g).to(rank.device)
            free = rank.long() >= lo
            order = torch.argsort(torch.where(free, score, -torch.inf), dim=2, descending=True, stable=True)
            new = rank.clone()
            new.scatter_(2, order[:, :, : m - lo], torch.arange(lo, m, dtype=rank.dtype, device=rank.device)
                         .view(1, 1, m - lo, 1).expand(rank.shape[0], rank.shape[1], m - lo, rank.shape[3]))
            pin_order(layer, new)

    @torch.no_grad()
    def _start_finetune(self, t: int) -> None:
        """Task t's norms start from the dense growth branch's."""
        if t == self.grow_branch:
            return
        for _, norm in variable_norms(self.restorer):
            _norm_module(norm, t).load_state_dict(_norm_state(norm, self.grow_branch), strict=False)

    # ---- the run's phases ------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """grow and fine-tune per task, in task order."""
        out = []
        for t, task in enumerate(self.tasks):
            dataset, degrade, _ = self.data[t]
            for k, phase in enumerate(PHASES):
                sc = self._schedule(t, k)
                spe = sc.steps_per_epoch or max(1, len(dataset) // sc.batch_size)
                out.append(Phase(
                    name=f"{task.name}/{phase}", desc=f"task {t + 1} ({task.name}) {phase}", steps=spe * sc.epochs,
                    schedule=sc, params=lambda t=t, k=k: self._params(t, k),
                    batches=StepBatches(dataset, degrade, self.cfg.seed, 10 + 2 * t + k, sc.batch_size, spe),
                    loss=lambda batch, t=t, k=k: self._loss(t, k, batch), log={"task": task.name, "phase": phase},
                    start=lambda t=t: self._train_mode(t), before_update=self._mask_grads,
                    after_update=self._write_back, end=lambda t=t, k=k: self._end_phase(t, k), ema=True,
                    validate=True))
        return out

    def _schedule(self, t: int, phase: int) -> StageConfig:
        return getattr(self.tasks[t], PHASES[phase]) or getattr(self.cfg.png, PHASES[phase])

    def _params(self, t: int, phase: int) -> list[torch.Tensor]:
        """The parameters phase (t, phase) trains (``requires_grad`` set for all); the partly trained ones get a
        gradient mask and a copy of their frozen entries."""
        _, rule = self._trainable(t, phase)
        params, self._masks = [], {}
        for name, p in self.restorer.named_parameters():
            r = rule[name]
            on = bool(r.any()) if isinstance(r, torch.Tensor) else r
            p.requires_grad_(on)
            if on:
                params.append(p)
                if isinstance(r, torch.Tensor) and not bool(r.all()):
                    self._masks[p] = (r, p.detach().clone())
        return params

    def _loss(self, t: int, phase: int, batch) -> tuple[torch.Tensor, dict]:
        clean, degraded, _ = batch
        _, _, loss_fn = self.data[t]
        task, teacher = self.tasks[t], self.teachers[t]
        branch = self.grow_branch if PHASES[phase] == "grow" else t
        rec = loss_fn
        if teacher is not None:
            with torch.no_grad():
                rec = distilled(loss_fn, teacher(degraded, **task.forward), self.cfg.distill.weight)
        with use_branch(branch):
            return rec(self.restorer(degraded, **task.forward), clean).mean(), {}

    def _mask_grads(self) -> None:
        for p, (mask, _) in self._masks.items():
            if p.grad is not None:
                p.grad.mul_(mask)

    @torch.no_grad()
    def _write_back(self, step: int) -> None:
        """Frozen entries exactly as they were (Adam moves none, but no trust needed)."""
        for p, (mask, frozen) in self._masks.items():
            p.copy_(torch.where(mask, p, frozen))

    @torch.no_grad()
    def validate(self) -> dict:
        """PSNR (dB) of each task so far on its held-out images (degraded by its degradation with a seed per
        image, or its real pairs): ``psnr_<task>`` with the task's branch (the growth branch while the task
        grows), and ``psnr_mean`` over them (over the tasks so far: compare it within one task only; a
        ``validation.metric`` for ``best.pt`` is usually the last task's ``psnr_<task>``)."""
        from ..metrics import psnr

        current, phase = divmod(self.run.index, len(PHASES))
        out = {}
        was = self.restorer.training
        self.restorer.eval()
        for t in range(min(current + 1, len(self.tasks))):
            images, degraded = self.val[t]
            _, degrade, _ = self.data[t]
            task = self.tasks[t]
            branch = self.grow_branch if t == current and PHASES[phase] == "grow" else t
            scores = []
            for k, (name, clean) in enumerate(images):
                if degraded is not None:
                    y = degraded[name].unsqueeze(0)
                else:
                    y, _ = degrade(clean.unsqueeze(0), generator=torch.Generator().manual_seed(self.cfg.seed * 1009 + k))
                with use_branch(branch):
                    restored = self.restorer(y.to(self.cfg.device), **task.forward)
                scores.append(psnr(restored[0].cpu(), clean))
            out[f"psnr_{task.name}"] = sum(scores) / len(scores)
        self.restorer.train(was)
        out["psnr_mean"] = sum(out.values()) / len(out)
        return out

    def _end_phase(self, t: int, phase: int) -> None:
        for p in self.restorer.parameters():
            p.requires_grad_(True)
        self.restorer.eval()
        if PHASES[phase] == "grow":
            self._prune(t)
            self._start_finetune(t)

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        t, phase = divmod(self.run.index, len(PHASES))
        return {"png_run": 1, "model": self.restorer.state_dict(), "arch": self.arch, "task": t, "phase": phase,
                "step": self.run.step, "tasks": [task.name for task in self.tasks]}

    def check_resume(self, ckpt: dict, path: Path) -> None:
        """Refuse a checkpoint that is not a PnG run's, or one of another task order."""
        if "png_run" not in ckpt:
            raise ValueError(f"cannot resume from {str(path)!r}: not a PnG run checkpoint")
        names = [t.name for t in self.tasks]
        if ckpt["tasks"] != names:
            raise ValueError(f"cannot resume from {str(path)!r}: its task order is {ckpt['tasks']}, this config's is "
                             f"{names}; earlier tasks' weights are frozen in that order, so a changed order needs a "
                             f"new run (another out_dir, or --overwrite)")

    def load_checkpoint(self, ckpt: dict, path: Path) -> None:
        check_finite(ckpt["model"], f"checkpoint {str(path)!r}")
        self.restorer.load_state_dict(ckpt["model"])

    def legacy_position(self, ckpt: dict) -> tuple[int, int]:
        return ckpt["task"] * len(PHASES) + ckpt["phase"], ckpt["step"]

    # ---- training ---------------------------------------------------------------------------
    def fit(self) -> PnGModel:
        """Run the remaining tasks and phases; write ``png.pt`` (and train the classifier if
        ``stages.classifier`` asks). Returns the PnG model (eval mode)."""
        self.run.fit(self)
        model = self._finish()
        if self.cfg.stages.classifier.epochs > 0:
            self._train_classifier()
        return model

    # ---- result -----------------------------------------------------------------------------
    @torch.no_grad()
    def _finish(self) -> PnGModel:
        """The final ClassPruning model (one branch per task), written to ``png.pt``."""
        final_cfg = classpruning_config(self.cfg)
        channels = first_image(self.data[0][0]).shape[0]
        model = build_model(final_cfg, arch=self.arch, in_channels=channels).to(self.cfg.device)
        state = self.restorer.state_dict()
        if self.grow_branch == len(self.tasks):  # drop the growth branch: the last task's norms become the main ones
            last = len(self.tasks) - 1
            for name, _ in variable_norms(self.restorer):
                prefix = f"{name}." if name else ""
                src = f"{prefix}aux_norms.{last}."
                for k in [k for k in state if k.startswith(src)]:
                    state[prefix + k[len(src):]] = state.pop(k)
            for name, layer in dynamic_layers(self.restorer):  # weights no task owns are zero
                keep = grouped_to_weight(layer.nm_rank < self.n[-1], layer.dense_weight.shape, layer.nm_axis)
                state[_name(name, "weight")] = state[_name(name, "weight")] * keep
        state = {f"restorer.{k}": v for k, v in state.items()}
        pin_from_state(model, state)
        model.restorer.load_state_dict({k[len("restorer."):]: v for k, v in state.items()})
        save_atomic({"model": model.state_dict(), "config": final_cfg.model_dump(mode="json"), "arch": self.arch,
                     "stage": "classifier", "done": False, "step": 0,
                     "png": {"tasks": [t.name for t in self.tasks], "trained": len(self.tasks)}}, self.out / "png.pt")
        log.info("PnG model written to %s", self.out / "png.pt")
        return PnGModel(model.restorer.eval(), self.tasks, len(self.tasks))

    def _train_classifier(self) -> None:
        data = classpruning_config(self.cfg).model_dump(mode="json")
        data.update(init_from=str(self.out / "png.pt"), out_dir=str(self.out / "classifier"))
        Trainer(TrainConfig.model_validate(data), resume=self.resume, overwrite=not self.resume).fit()


def run_png(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> PnGModel:
    """``dynprune png``: run (or resume) the PnG sequence of ``cfg.png``; see :class:`PnG`."""
    return PnG(cfg, resume=resume, overwrite=overwrite).fit()


def load(path: str | Path) -> PnGModel:
    """The PnG model in ``path``: a finished run's ``png.pt`` or ``classifier/last.pt`` (every task), or a
    running one's ``last.pt`` (the tasks trained so far). Eval mode.

    Raises:
        FileNotFoundError: missing file. ValueError: not a PnG file, non-finite or mismatched weights.
    """
    ckpt = load_file(path)
    if isinstance(ckpt, dict) and "png_run" in ckpt:
        cfg = TrainConfig.model_validate(ckpt["config"])
        n = task_ratios(cfg)
        ratios = n + ([] if n[-1].split(":")[0] == str(cfg.png.m) else [f"{cfg.png.m}:{cfg.png.m}"])
        check_finite(ckpt["model"], f"checkpoint {str(path)!r}")
        restorer = build_model(classpruning_config(cfg, ratios), arch=ckpt.get("arch", {})).restorer
        pin_from_state(restorer, ckpt["model"])
        restorer.load_state_dict(ckpt["model"])
        return PnGModel(restorer.eval(), cfg.png.tasks, ckpt["task"]).eval()
    model, cfg, ckpt = load_trained(path, ckpt)
    if not cfg.png.tasks:
        raise ValueError(f"{str(path)!r} is a ClassPruning checkpoint without PnG tasks")
    return PnGModel(model.restorer, cfg.png.tasks, len(cfg.png.tasks)).eval()
