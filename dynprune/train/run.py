"""The run object every training method shares: one step loop, one checkpoint format, one resume rule.

A method (``dynprune/methods/``) describes its work as a list of :class:`Phase` objects (ClassPruning's
stages, PnG's grow and fine-tune per task, SLS's search) and keeps its own model; :class:`Run` owns the rest:

- device, threads, seeding and the plugin host; the run folder, claimed before any work, and the resolved
  config written into it when the training starts (``config.resolved.yaml``);
- per phase: the optimizer (``optim``: Adam/AdamW, clipping, EMA), the warm-up + cosine schedule
  (:class:`~dynprune.train.schedule.WarmupCosine`, state in the checkpoint), batches from a DataLoader
  (:mod:`dynprune.train.data`), the finite-batch and finite-loss checks, hooks around each update;
- logging every ``log_every`` steps (``log.jsonl``, TensorBoard), atomic checkpoints every
  ``checkpoint_every`` steps and at each phase end, validation every ``validation.every`` steps and
  ``best.pt`` by ``validation.metric``;
- resuming: the checkpoint's config must equal the run's except run-only fields (:data:`RUN_ONLY`) and
  schedule lengths (:data:`SCHEDULE_KEYS`): a run is extended by giving a phase more steps (the cosine
  stretches, :mod:`dynprune.train.schedule`), resuming at the first phase that has steps left; a phase
  cannot shrink below the steps it ran, and a finished phase cannot grow once a later one has run.

Checkpoints hold the method's entries (``Method.checkpoint``) plus ``config``, ``run`` (position, the
steps each finished phase ran, and ``processes``: the world size that wrote it, for the record),
``optimizer`` and ``scheduler`` (of the phase in progress, or the last one finished, so that an extended
phase keeps its Adam moments), ``ema`` and ``best``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import shutil
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
import yaml
from torch import nn

from ..checkpoint import load_file, save_atomic
from ..config import StageConfig, check_device, input_anchors
from .. import outputs
from ..outputs import LOCK_NAME, FolderLock, checkpoint_note, claim_run_dir, write_text
from ..progress import progress
from ..registry import get_host
from . import distributed
from .data import batch_loader
from .logger import RunLogger
from .optim import EMA, build_optimizer
from .schedule import WarmupCosine

__all__ = ["Phase", "Method", "Run", "config_differences", "RUN_ONLY", "SCHEDULE_KEYS"]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.resolved.yaml"
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Config fields that do not change what a run computes (dotted; a resumed run may change them).
RUN_ONLY = ("threads", "device", "precision", "channels_last", "checkpoint_every", "out_dir", "log_every",
            "tensorboard", "data", "validation.every", "validation.metric", "validation.mode", "search.checkpoint_every")
# Schedule lengths (fnmatch): a resumed run may change them within the rule of the module doc.
SCHEDULE_KEYS = ("stages.*.epochs", "png.grow.epochs", "png.finetune.epochs", "search.steps")


def _on_rank_zero(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 (everywhere outside a process group); its error, if any, is raised on every rank
    (the others would otherwise wait forever at the first all-reduce)."""
    result, error = None, None
    try:
        result = fn()
    except (ValueError, OSError) as err:
        error = str(err)
    errors = [e for e in distributed.gather_objects(error) if e]
    if errors:
        raise ValueError(error or errors[0])
    return result


def _same_config_on_every_rank(cfg) -> None:
    """Raise on every rank if the ranks were started with different configs (the differences named)."""
    dumps = distributed.gather_objects(cfg.model_dump(mode="json"))
    for rank, other in enumerate(dumps[1:], 1):
        diff = config_differences(dumps[0], other, ignore=())
        if diff:
            raise ValueError(f"rank {rank} was started with another config than rank 0: {'; '.join(diff)}")


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in patterns)


def config_differences(old: dict, new: dict, prefix: str = "", ignore: Sequence[str] = RUN_ONLY) -> list[str]:
    """``"key: old -> new"`` for every (dotted) key whose value differs between two config dumps, except
    the keys under ``ignore`` (dotted prefixes or fnmatch patterns; default :data:`RUN_ONLY`) and paths
    spelled differently that name the same file (``../data/x`` and ``/abs/data/x``)."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if _matches(key, ignore):
            continue
        out += _differences(old.get(k), new.get(k), key, ignore)
    return out


def _differences(a, b, key: str, ignore: Sequence[str]) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return config_differences(a, b, f"{key}.", ignore)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{key}[{i}]", ignore)]
    return [f"{key}: {a!r} -> {b!r}"] if a != b and not _same_path(a, b) else []


def _same_path(a, b) -> bool:
    """Two spellings of one file or folder (relative to the working folder, or absolute): a resumed run is not
    refused over how a path is written."""
    if not (isinstance(a, str) and isinstance(b, str)) or "/" not in a + b:
        return False
    return os.path.realpath(a) == os.path.realpath(b)


@dataclass
class Phase:
    """One phase of a method: ``steps`` optimizer updates of ``params`` on ``loss``.

    Args:
        name: unique within the run (e.g. ``"restoration"``, ``"sigma25/grow"``); keys ``run.totals``.
        desc: the progress label (e.g. ``"stage 3 (restoration)"``), also used in error messages.
        steps: number of updates (0: the phase is skipped, its ``end`` still runs).
        schedule: ``lr_start``, ``lr_end``, ``warmup_steps`` (a :class:`~dynprune.config.StageConfig`), or
            None for constant rates (each parameter group then gives its ``lr``).
        params: () -> the parameters (or parameter groups) trained, called at the phase start.
        batches: a map-style dataset whose item ``s`` is step s's batch (tensors, or tuples of them, moved
            to the device; None entries kept), e.g. :class:`~dynprune.train.data.StepBatches`.
        loss: (batch) -> (scalar loss, {name: float or list} logged with it).
        log: fields written into every log row of the phase (e.g. ``{"stage": "joint"}``).
        start: () -> None, sets the train/eval modes (and freezing) of the phase; called at its start and
            after each validation.
        before_update: () -> None, after ``backward`` and before clipping and the optimizer step (e.g.
            PnG's gradient masks).
        after_update: (step) -> True to end the phase early, after the optimizer step (e.g. PnG's frozen
            weight write-back, SLS's plan recording and annealing).
        end: () -> None once the phase is over (e.g. PnG's prune, the dense ``base.pt``).
        validate: validation runs in this phase. ema: the EMA (if on) is updated after each step.
        checkpoint_every: overrides the run's cadence for this phase.
    """

    name: str
    desc: str
    steps: int
    schedule: StageConfig | None
    params: Callable[[], Iterable]
    batches: Any
    loss: Callable[[Any], tuple[torch.Tensor, dict]]
    log: dict = field(default_factory=dict)
    start: Callable[[], None] | None = None
    before_update: Callable[[], None] | None = None
    after_update: Callable[[int], bool | None] | None = None
    end: Callable[[], None] | None = None
    validate: bool = False
    ema: bool = False
    checkpoint_every: int | None = None


class Method(Protocol):
    """What a training method gives :class:`Run` (see ``docs/concepts.md``, "Adding a training method").
    Optional: ``check_resume(ckpt, path)``, the method's own refusals of a checkpoint before the config is
    compared (e.g. PnG's task order), and ``legacy_position`` for checkpoints older than the run loop."""

    def phases(self) -> list[Phase]:
        """Every phase of the run, in order (finished ones included: the list is the same on resume)."""

    def checkpoint(self) -> dict:
        """The method's entries of a checkpoint (at least ``"model"``)."""

    def load_checkpoint(self, ckpt: dict, path: Path) -> None:
        """Restore the method's state from a checkpoint of this run (raise ValueError if it is not one)."""

    def legacy_position(self, ckpt: dict) -> tuple[int, int]:
        """(phase index, step) of a checkpoint written before the shared run loop (no ``run`` entry)."""


def _on_host(parts: dict) -> dict:
    """A phase's logged values as Python numbers: 0-dim tensors as floats (ints for integer tensors), others as
    lists. Phases return tensors so that the host reads them (a sync on a GPU) only at logging steps."""
    return {k: (v.item() if v.dim() == 0 else v.tolist()) if isinstance(v, torch.Tensor) else v
            for k, v in parts.items()}


def _to(batch, device: torch.device, non_blocking: bool, channels_last: bool = False):
    """``batch`` (a tensor, or tuples/lists of them) on ``device``; 4-d float tensors in channels-last memory
    when asked (other entries, e.g. int64 labels, as they are)."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device, non_blocking, channels_last) for b in batch)
    return batch


def _finite(batch) -> bool:
    if isinstance(batch, torch.Tensor):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, (tuple, list)):
        return all(_finite(b) for b in batch)
    return True


class Run:
    """The machinery of one training run in ``cfg.out_dir`` (module doc).

    Args:
        cfg: the run's :class:`~dynprune.config.TrainConfig`.
        files: glob patterns of the files this kind of run writes (another run's are refused without
            ``resume`` or ``overwrite``; ``overwrite`` deletes them).
        resume: continue ``checkpoint`` if it exists. overwrite: replace another run's files.
        what: "run" or "search", for messages. checkpoint, log_name: file names in the run folder.
        checkpoint_every: the cadence (default ``cfg.checkpoint_every``).
        ignore: more config keys (dotted prefixes or fnmatch patterns) a resumed run may change, e.g. the
            sections a search does not read.
        folder: False for an in-memory run (a library loop such as ClassSR's branch training): no run
            folder, no log, no checkpoints, the same step loop.
    Raises:
        ValueError: a device this machine lacks; the folder is a file or holds another run (see
            :func:`~dynprune.outputs.claim_run_dir`).
    """

    def __init__(self, cfg, files: Sequence[str], resume: bool = False, overwrite: bool = False, what: str = "run",
                 checkpoint: str = "last.pt", log_name: str = "log.jsonl", checkpoint_every: int | None = None,
                 ignore: Sequence[str] = (), folder: bool = True):
        self.cfg, self.ignore = cfg, tuple(ignore)
        check_device(cfg.device)  # before the process group: NCCL without a GPU fails there, unclearly
        self.rank, self.world, device = distributed.setup(cfg.device)
        check_device(device)
        self.device = torch.device(device)
        _same_config_on_every_rank(cfg)
        writer = folder and self.rank == 0  # under torchrun, rank 0 alone claims and writes the run folder
        claimed = _on_rank_zero(lambda: claim_run_dir(cfg.out_dir, tuple(files) + ("best.pt", CONFIG_FILE), resume,
                                                      overwrite, what) if writer else (None, None))
        self.out, self._replaced = claimed if writer else (Path(cfg.out_dir) if folder else None, None)
        if writer:  # the folder's lock is this run's until it ends (or the process does)
            weakref.finalize(self, FolderLock.release, self.out / LOCK_NAME)
        outputs.set_writer(self.rank == 0)
        self._overwrite = overwrite
        self.path = self.out / checkpoint if folder else None
        self.resuming = folder and resume and self.path.is_file()
        self.log = RunLogger(self.out / log_name if writer else None, cfg.tensorboard)
        self.checkpoint_every = checkpoint_every or cfg.checkpoint_every
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        get_host()
        self.index, self.step = 0, 0       # position: the phase in progress and its next step
        self.totals: dict[str, int] = {}   # steps each finished phase ran
        self.opt_state: dict | None = None
        self.opt_phase: str | None = None  # the phase opt_state belongs to
        self._scaler_state: dict | None = None  # fp16's GradScaler (loss scale, growth tracker)
        self.best: dict | None = None
        self.stopped: list[str] = []       # phases that ended early (after_update said so): never extended
        self._sched_state: dict | None = None
        self.ema: EMA | None = None
        self._ema_state: dict | None = None
        self._validator: Callable[[], dict] | None = None

    # ---- set-up -----------------------------------------------------------------------------
    def track_ema(self, module: nn.Module) -> None:
        """Average ``module``'s parameters when ``optim.ema_decay`` > 0 (call before :meth:`restore`)."""
        if self.cfg.optim.ema_decay > 0:
            self.ema = EMA(module, self.cfg.optim.ema_decay)

    def validate_with(self, fn: Callable[[], dict], metrics: Sequence[str]) -> None:
        """Validation of this run: ``fn() -> {metric: float or list}`` (eval mode inside; the phase's modes
        are set again after it). ``metrics``: the names ``fn`` computes.

        Raises:
            ValueError: validation is on and ``validation.metric`` is not among ``metrics`` (they are named).
        """
        v = self.cfg.validation
        if v.every and v.metric not in metrics:
            raise ValueError(f"validation.metric {v.metric!r} is not computed by this run; it computes "
                             f"{', '.join(metrics)}")
        self._validator = fn

    def restore(self, method: Method) -> bool:
        """Load the run's checkpoint into ``method`` and this run when resuming; returns whether it did.

        Raises:
            ValueError: a checkpoint of another run (the config differences named), one the method refuses,
                or a schedule change the resume rule forbids (module doc).
        """
        if not self.resuming:
            return False
        ckpt = load_file(self.path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
            raise ValueError(f"cannot resume from {str(self.path)!r}: not a dynprune training checkpoint")
        check = getattr(method, "check_resume", None)
        if check is not None:  # the method's own, more specific refusals first (e.g. PnG's task order)
            check(ckpt, self.path)
        old = ckpt["config"]
        try:
            old = type(self.cfg).model_validate(old).model_dump(mode="json")
        except ValueError:
            pass
        new = self.cfg.model_dump(mode="json")
        legacy = "run" not in ckpt
        diff = config_differences(old, new, ignore=RUN_ONLY + self.ignore + (() if legacy else SCHEDULE_KEYS))
        if diff:
            raise ValueError(f"cannot resume from {str(self.path)!r}: it belongs to another run; its config differs "
                             f"from this one in " + "; ".join(diff) + ". Use another out_dir, or the same config"
                             + (" (this checkpoint predates run extension: its schedule cannot change)"
                                if legacy and any(_matches(d.split(":")[0], SCHEDULE_KEYS) for d in diff) else ""))
        method.load_checkpoint(ckpt, self.path)
        phases = method.phases()
        names = [p.name for p in phases]
        if legacy:
            index, step = method.legacy_position(ckpt)
            totals, stopped = {p.name: p.steps for p in phases[:index]}, list(self.stopped)
            opt_phase = names[index] if index < len(names) and ckpt.get("optimizer") else None
        else:
            r = ckpt["run"]
            if r.get("phases") != names:
                raise ValueError(f"cannot resume from {str(self.path)!r}: its phases {r.get('phases')} are not this "
                                 f"run's {names}")
            index, step, totals, opt_phase = r["index"], r["step"], dict(r["totals"]), r.get("opt_phase")
            stopped = list(r.get("stopped", []))
        self.stopped = stopped
        self.index, self.step = self._extend(phases, index, step, totals)
        self.totals = {k: v for k, v in totals.items() if names.index(k) < self.index}
        current = names[self.index] if self.index < len(names) else None
        self.opt_state = ckpt.get("optimizer") if opt_phase is not None and opt_phase == current else None
        self.opt_phase = current if self.opt_state is not None else None
        self._sched_state = ckpt.get("scheduler") if self.opt_state is not None else None
        self._scaler_state = ckpt.get("scaler")
        self.best = ckpt.get("best")
        self._ema_state = ckpt.get("ema")
        if self.ema is not None and self._ema_state is not None:
            self.ema.load_state_dict(self._ema_state)
        if self.log.jsonl is not None:  # rank 0's
            self.log.jsonl.rewind(lambda row: self._row_held(row, phases))
        self.log.purge_step = self.global_step(phases)
        where = names[self.index] if self.index < len(names) else "the end"
        log.info("resumed from %s at %s, step %d", self.path, where, self.step)
        return True

    def _row_held(self, row: dict, phases: list[Phase]) -> bool:
        """Whether the checkpoint holds a log row (rows of later steps are dropped on resume). A row belongs
        to the first phase whose ``log`` fields it carries."""
        for i, p in enumerate(phases):
            if all(row.get(k) == v for k, v in p.log.items()):
                return i < self.index or (i == self.index and row.get("step", 0) < self.step)
        return True

    def _extend(self, phases: list[Phase], index: int, step: int, totals: dict) -> tuple[int, int]:
        """The position to resume at under this config's phase lengths (the module doc's rule)."""
        done = [totals.get(p.name, 0) if i < index else (step if i == index else 0) for i, p in enumerate(phases)]
        for p, d in zip(phases, done):
            if p.steps < d:
                raise ValueError(f"cannot resume from {str(self.path)!r}: {p.desc} has already run {d} steps, and "
                                 f"this config gives it {p.steps}; a resumed run can extend a schedule, not shrink "
                                 f"it below the steps run (use the old length, or a new out_dir)")
        for i in range(min(index, len(phases))):
            if phases[i].steps > done[i] and phases[i].name not in self.stopped:
                later = [p.desc for p, d in zip(phases[i + 1:], done[i + 1:]) if d > 0]
                if later:
                    raise ValueError(f"cannot resume from {str(self.path)!r}: {phases[i].desc} gets "
                                     f"{phases[i].steps} steps instead of {done[i]}, but {', '.join(later)} already "
                                     f"ran after it; extend only the phase in progress or later ones")
                return i, done[i]
        return index, step

    def global_step(self, phases: list[Phase]) -> int:
        """Steps run over all phases up to the current position (TensorBoard's step axis)."""
        return sum(self.totals.get(p.name, 0) for p in phases[:self.index]) + self.step

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, method: Method, phases: list[Phase], path: Path | None = None, optimizer=None,
             scheduler=None, state: bool = True, scaler=None) -> None:
        """Write a checkpoint atomically (``path`` default the run's); ``state`` False leaves out the
        optimizer, scheduler and EMA (a model file such as ``best.pt``). In-memory runs write nothing."""
        if self.out is None or self.rank:
            return
        ckpt = method.checkpoint()
        ckpt["config"] = self.cfg.model_dump(mode="json")
        ckpt["run"] = {"phases": [p.name for p in phases], "index": self.index, "step": self.step,
                       "totals": self.totals, "stopped": self.stopped,
                       "opt_phase": self.opt_phase if state else None, "processes": self.world, **input_anchors()}
        ckpt["best"] = self.best
        if state:
            ckpt["scaler"] = scaler.state_dict() if scaler is not None else self._scaler_state
            ckpt["optimizer"] = optimizer.state_dict() if optimizer is not None else self.opt_state
            ckpt["scheduler"] = scheduler.state_dict() if scheduler is not None else (
                None if optimizer is not None else self._sched_state)
            ckpt["ema"] = self.ema.state_dict() if self.ema is not None else None
        save_atomic(ckpt, path or self.path)
        self.log.flush()

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self, method: Method, until: int | None = None) -> None:
        """Run the remaining phases of ``method`` (those before index ``until`` only, if given: a later call
        continues), checkpointing as the module doc says."""
        phases = method.phases()
        stop = len(phases) if until is None else min(until, len(phases))
        if self._replaced is not None:  # every start-up check has passed: now the replaced run goes
            self._replaced.remove()
            if self._overwrite and (self.out / "tensorboard").is_dir():  # with its event files
                shutil.rmtree(self.out / "tensorboard")
            self._replaced = None
        if self.out is not None:  # the config as resolved (defaults filled in, paths expanded), for the record
            write_text(self.out / CONFIG_FILE, yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        ran = self.index < len(phases)
        try:
            while self.index < stop:
                ph = phases[self.index]
                if self.step < ph.steps:
                    self._run_phase(method, phases, ph)
                self.totals[ph.name] = self.step
                if ph.end is not None:
                    ph.end()
                self.index, self.step = self.index + 1, 0
                self.save(method, phases)
            if self.ema is not None and ran and self.index == len(phases):
                self.ema.copy_to()  # a finished run's model is the average
                self.save(method, phases)
        finally:
            self.log.close()

    def _run_phase(self, method: Method, phases: list[Phase], ph: Phase) -> None:
        cfg = self.cfg
        params = list(ph.params())
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        sc = ph.schedule
        opt = build_optimizer(params, cfg.optim, sc.lr_start if sc is not None else params[0]["lr"])
        sched = WarmupCosine(opt, ph.steps, sc.lr_end, sc.warmup_steps) if sc is not None else None
        if self.opt_state is not None and self.opt_phase == ph.name:
            opt.load_state_dict(self.opt_state)
            if sched is not None and self._sched_state is not None:
                sched.load_state_dict(self._sched_state)
            elif sched is not None:  # a checkpoint without scheduler state: the closed form at this step
                sched.at(self.step)
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        if scaler.is_enabled() and self._scaler_state:  # fp16 only: the loss scale reached
            scaler.load_state_dict(self._scaler_state)
        autocast = (torch.autocast(self.device.type, dtype=_AUTOCAST[cfg.precision])
                    if cfg.precision in _AUTOCAST else nullcontext())
        self.opt_phase, self.opt_state, self._sched_state = ph.name, None, None
        if ph.start is not None:
            ph.start()
        loader = batch_loader(ph.batches, self.step, ph.steps, cfg.data.workers, cfg.data.prefetch,
                              pin_memory=self.device.type == "cuda")
        bar = progress(range(self.step, ph.steps), ph.desc, total=ph.steps, initial=self.step, quiet=self.rank > 0)
        every = ph.checkpoint_every or self.checkpoint_every
        offset = self.global_step(phases) - self.step
        sync_every_step = self.device.type == "cpu"  # reading a CPU flag costs nothing
        bad, first = None, self.step  # non-finite losses since step `first`, kept on the device
        for step, batch in zip(bar, loader):
            self.step = step
            if not _finite(batch):
                raise FloatingPointError(f"non-finite values in the training batch at {ph.desc}, step {step}; "
                                         f"{self._kept()}")
            batch = _to(distributed.shard(batch, self.rank, self.world), self.device,
                        non_blocking=self.device.type == "cuda", channels_last=cfg.channels_last)
            lr = opt.param_groups[0]["lr"]
            with autocast, distributed.synced_batch_norm(cfg.sync_norms):
                loss, parts = ph.loss(batch)
            bad = ~torch.isfinite(loss.detach()) if bad is None else bad | ~torch.isfinite(loss.detach())
            if sync_every_step:  # on a GPU the flag is read (a host sync) only where the run logs or saves
                self._check_finite(bad, loss, ph, first, step)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            distributed.average_gradients(flat)  # the global batch's gradient (a no-op in one process)
            scaler.unscale_(opt)  # hooks, clipping and SR-STE's decay see true gradients (no-op unless fp16)
            if ph.before_update is not None:
                ph.before_update()
            if cfg.optim.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(flat, cfg.optim.clip_grad_norm)
            scaler.step(opt)  # skips the update (and the decay) when fp16 gradients overflowed
            scaler.update()
            if sched is not None:
                sched.step()
            if self.ema is not None and ph.ema:
                self.ema.update()
            stop = bool(ph.after_update(step)) if ph.after_update is not None else False
            last = stop or step == ph.steps - 1
            saving = (step + 1) % every == 0 or stop
            validating = ph.validate and self._validator is not None and cfg.validation.every and \
                ((step + 1) % cfg.validation.every == 0 or last)
            if step % cfg.log_every == 0 or last or saving or validating:
                self._check_finite(bad, loss, ph, first, step)
                first, bad = step + 1, None
            if step % cfg.log_every == 0 or last:
                value = distributed.mean_over_ranks(loss).item()
                bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2g}")
                parts = _on_host(distributed.over_ranks(parts))  # the global batch's, as the loss
                self.log.append({**ph.log, "step": step, "lr": lr, "loss": value, **parts}, ph.name, offset + step)
            if validating and self.rank == 0:  # the other ranks go on to the next step's all-reduce and wait
                self.step = step + 1
                self._validate(method, phases, ph, offset + step)
            if saving:
                self.step = step + 1
                self.save(method, phases, optimizer=opt, scheduler=sched,
                          scaler=scaler if scaler.is_enabled() else None)
            if stop:
                self.stopped.append(ph.name)
                break
        bar.close()
        self.step = step + 1
        self.opt_state, self._sched_state = opt.state_dict(), sched.state_dict() if sched is not None else None
        self._scaler_state = scaler.state_dict() if scaler.is_enabled() else None

    def _check_finite(self, bad, loss, ph: Phase, first: int, step: int) -> None:
        """Raise if a loss since step ``first`` was not finite (before anything is logged or saved).

        Raises:
            FloatingPointError: the phase and the steps named, and the last checkpoint kept.
        """
        if distributed.any_rank(bad is not None and bool(bad)):  # every rank stops together
            where = f"step {step}" if first >= step else f"one of steps {first}-{step}"
            value = loss.item()
            who = "" if self.world == 1 else f" on rank {self.rank}" if not math.isfinite(value) else " on another rank"
            raise FloatingPointError(f"non-finite loss ({value} at step {step}{who}) at {ph.desc}, {where}; "
                                     f"{self._kept()}")

    def _kept(self) -> str:
        return checkpoint_note(self.out, self.path.name) if self.out is not None else "an in-memory run keeps nothing"

    def _validate(self, method: Method, phases: list[Phase], ph: Phase, global_step: int) -> None:
        v = self.cfg.validation
        with self.ema.applied() if self.ema is not None else nullcontext():
            metrics = self._validator()
            value = metrics.get(v.metric)
            better = value is not None and math.isfinite(value) and (
                self.best is None or (value > self.best["value"] if v.mode == "max" else value < self.best["value"]))
            if better:
                self.best = {"metric": v.metric, "value": value, "phase": ph.name, "step": self.step}
                self.save(method, phases, path=self.out / "best.pt", state=False)
        self.log.append({**ph.log, "step": self.step - 1, "validation": metrics, **({"best": True} if better else {})},
                        "validation", global_step, scalars=metrics)
        log.info("validation at %s step %d: %s", ph.desc, self.step, json.dumps(metrics))
        if ph.start is not None:
            ph.start()
