"""The three-stage ClassPruning trainer (paper 3.3-3.4), resumable from atomic checkpoints.

An optional stage 0 ("base", off by default) trains the dense network alone, for runs that start
without pretrained weights; stage 1 trains the classifier alone with cross-entropy on pseudo labels;
stage 2 freezes it and trains the restoration branches with L_W; stage 3 trains everything with L_F. Every batch is a pure
function of (seed, stage, step), so a resumed run continues exactly where the checkpoint left it.

Two additions to the paper's recipe, both off by default: ``lw_floor`` (every branch keeps a minimum L_W weight on
every image, so no branch forgets the other levels) and ``distill`` (every branch also learns the output of frozen
dense teachers: the starting network, or one per degradation level).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from . import losses as L
from .audit import audit
from .checkpoint import load_file, save_atomic
from .classpruning import ClassPruning
from .config import StageConfig, TrainConfig, check_device
from .models import build_model, load, load_trained
from .branch import each_branch, per_group
from .convert import export_branch
from .layers import pin_from_state, sync_variable_norms
from .outputs import RunLog, checkpoint_note, claim_run_dir
from .progress import progress
from .registry import create, get_host
from .schedule import cosine_lr

__all__ = ["Trainer", "build_model", "build_teachers", "load", "load_trained", "config_differences", "STAGES"]

STAGES = ("base", "classifier", "restoration", "joint")
log = logging.getLogger(__name__)


# The files a training run writes into its out_dir (another run there needs --resume or --overwrite).
RUN_FILES = ("last.pt", "base.pt", "log.jsonl")
# Config fields that do not change what a run computes; a resumed run may change them.
_RUN_ONLY = ("threads", "device", "checkpoint_every", "out_dir")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every (dotted) key whose value differs between two config dumps, except
    :data:`_RUN_ONLY` fields."""
    out = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in _RUN_ONLY:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def sample_batch(dataset, degrade, seed: int, stream: int, step: int, batch_size: int, steps_per_epoch: int):
    """Batch ``step`` of a seeded stream over ``dataset``: (clean (B, C, h, w), degraded, level int64 (B,)).

    Each epoch of ``steps_per_epoch`` steps draws a fresh permutation (seeded by ``seed``, ``stream`` and the
    epoch) and, for datasets with ``set_epoch``, fresh crops; the degradation is seeded per step, so a resumed
    run sees exactly the batches an uninterrupted one would.
    """
    epoch, k = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 7919 + stream * 104729 + epoch)
    perm = torch.randperm(len(dataset), generator=g)
    idx = perm[(k * batch_size) % len(perm):][: batch_size]
    if idx.numel() < batch_size:
        idx = torch.cat([idx, perm[: batch_size - idx.numel()]])
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(stream * 100_000 + epoch)
    clean = torch.stack([dataset[int(i)] for i in idx])
    g_noise = torch.Generator().manual_seed((seed * 31 + stream) * 1_000_003 + step)
    degraded, level = degrade(clean, generator=g_noise)
    return clean, degraded, level


def build_teachers(configs, device: str) -> list[nn.Module]:
    """Frozen dense distillation teachers (eval mode, no gradients) from ``ModelConfig`` entries, on ``device``.

    Raises:
        ValueError: an entry without weights (a teacher must be trained).
    """
    teachers = []
    for t in configs:
        if not t.weights:
            raise ValueError(f"distillation teacher {t.name!r} has no weights: a teacher must be trained")
        teachers.append(create("models", t.name, weights=t.weights, **t.kwargs).to(device).eval().requires_grad_(False))
    return teachers


class Trainer:
    """Runs the three stages of a :class:`TrainConfig`, writing ``out_dir/last.pt`` atomically every
    ``checkpoint_every`` steps and at each stage end, and ``out_dir/log.jsonl``.

    Args:
        resume: continue ``out_dir/last.pt`` (its config must equal ``cfg`` except :data:`_RUN_ONLY` fields).
        overwrite: replace the run files (:data:`RUN_FILES`) another run left in ``out_dir``.
    Raises:
        ValueError: ``out_dir`` holds another run and neither ``resume`` nor ``overwrite`` was given; a resumed
            checkpoint of another config (the differences named); a device this machine lacks.
        FloatingPointError (from :meth:`fit`): a NaN/Inf batch or loss (stage and step named; the last
            checkpoint, if one was written, is kept).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        check_device(cfg.device)
        self.out = claim_run_dir(cfg.out_dir, RUN_FILES, resume, overwrite)
        self.log = RunLog(self.out / "log.jsonl")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        get_host()
        self.dataset = create("datasets", cfg.dataset.name, **cfg.dataset.kwargs)
        self.degrade = create("degradations", cfg.degradation.name, **cfg.degradation.kwargs)
        n = len(cfg.convert.ratios)
        self.labeler = create("labelers", cfg.labeler.name, num_classes=n, **cfg.labeler.kwargs)
        self.rec_loss = create("losses", cfg.loss.name, **cfg.loss.kwargs)
        if hasattr(self.labeler, "check_degradation"):
            self.labeler.check_degradation(self.degrade, cfg.degradation.name)
        if hasattr(self.labeler, "fit") and getattr(self.labeler, "edges", True) is None:
            self._fit_labeler()
        channels = self.dataset[0].shape[0]
        self.model = build_model(cfg, in_channels=channels).to(cfg.device)
        self.arch = self.model.restorer.arch
        self.stage, self.step, self.opt_state = 0, 0, None
        if cfg.init_from:
            state = load_file(cfg.init_from)
            state = state["model"] if "model" in state else state
            pin_from_state(self.model, state)
            try:
                self.model.load_state_dict(state)
            except (RuntimeError, KeyError) as err:
                raise ValueError(f"init_from {cfg.init_from!r} does not fit this model: {str(err).splitlines()[0]}") from err
        self.teachers = self._build_teachers()
        if resume and (self.out / "last.pt").is_file():
            self._load(self.out / "last.pt")
        with torch.no_grad():
            probe = self.dataset[0].unsqueeze(0).to(cfg.device)
            self.costs = audit(self.model, probe).relative_costs().to(cfg.device)
            self._check_teachers(probe)

    # ---- distillation -----------------------------------------------------------------------
    def _build_teachers(self) -> list[nn.Module]:
        """Frozen dense teachers (eval mode, no gradients); [] when distillation is off."""
        d = self.cfg.distill
        if d.weight == 0:
            return []
        if not d.teachers:
            if not (self.cfg.model.weights or self.cfg.init_from):
                raise ValueError("distill.weight > 0 with no distill.teachers distils from the starting network, "
                                 "but it is untrained here (no model.weights, no init_from): give distill.teachers")
            return [export_branch(self.model.restorer, -1).to(self.cfg.device).eval().requires_grad_(False)]
        levels = getattr(self.degrade, "levels", None)
        if len(d.teachers) > 1 and len(d.teachers) != levels:
            raise ValueError(f"distill.teachers has {len(d.teachers)} entries; give one, or one per degradation "
                             f"level ({levels} for {self.cfg.degradation.name!r})")
        return build_teachers(d.teachers, self.cfg.device)

    def _check_teachers(self, probe: torch.Tensor) -> None:
        want = tuple(self.model.restorer.eval()(probe).shape)
        for i, t in enumerate(self.teachers):
            got = tuple(t(probe).shape)
            if got != want:
                name = (self.cfg.distill.teachers[i].name if self.cfg.distill.teachers else "the starting network")
                raise ValueError(f"distillation teacher {i} ({name}) maps a {tuple(probe.shape)} input to {got}, "
                                 f"but the student's output is {want}: a teacher must restore the same task")

    @torch.no_grad()
    def _teach(self, degraded: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Teacher restoration (B, C, H, W) of a degraded batch; with one teacher per level, per sample."""
        if len(self.teachers) == 1:
            return self.teachers[0](degraded)
        return per_group(lambda k, xb: self.teachers[k](xb), degraded, level)

    def _sample_loss(self, degraded: torch.Tensor, level: torch.Tensor):
        """The per-sample reconstruction loss of this run: the configured loss, distilled if asked."""
        if not self.teachers:
            return self.rec_loss
        return L.distilled(self.rec_loss, self._teach(degraded, level), self.cfg.distill.weight)

    # ---- data -------------------------------------------------------------------------------
    def _steps(self, sc: StageConfig) -> tuple[int, int]:
        spe = sc.steps_per_epoch or max(1, len(self.dataset) // sc.batch_size)
        return spe, spe * sc.epochs

    def _batch(self, stage: int, step: int, sc: StageConfig, spe: int):
        clean, degraded, level = sample_batch(self.dataset, self.degrade, self.cfg.seed, stage, step, sc.batch_size, spe)
        degraded, labels = self.labeler(clean, degraded, level)
        dev = self.cfg.device
        return clean.to(dev), degraded.to(dev), labels.to(dev), level.to(dev)

    def _fit_labeler(self, samples: int = 512) -> None:
        """Fit a data-driven labeler (residual-variance bins, eq. 2-3) on seeded degraded training patches."""
        g = torch.Generator().manual_seed(self.cfg.seed * 7 + 12345)
        idx = torch.randint(0, len(self.dataset), (samples,), generator=g)
        clean = torch.stack([self.dataset[int(i)] for i in idx])
        degraded, _ = self.degrade(clean, generator=g)
        self.labeler.fit(self.labeler.variance(clean, degraded))
        log.info("fitted %s on %d patches", type(self.labeler).__name__, samples)

    # ---- checkpoints ------------------------------------------------------------------------
    def _save(self, opt) -> None:
        save_atomic({"model": self.model.state_dict(), "config": self.cfg.model_dump(mode="json"),
                     "arch": self.arch, "stage": STAGES[min(self.stage, len(STAGES) - 1)],
                     "done": self.stage >= len(STAGES), "step": self.step,
                     "optimizer": opt.state_dict() if opt is not None else None}, self.out / "last.pt")

    def _load(self, path: Path) -> None:
        ckpt = load_file(path)
        if not isinstance(ckpt, dict) or "config" not in ckpt:
            raise ValueError(f"cannot resume from {str(path)!r}: not a dynprune training checkpoint")
        try:
            old = TrainConfig.model_validate(ckpt["config"]).model_dump(mode="json")
        except ValueError:
            old = ckpt["config"]
        diff = config_differences(old, self.cfg.model_dump(mode="json"))
        if diff:
            raise ValueError(f"cannot resume from {str(path)!r}: it belongs to another run; its config differs from "
                             f"this one in " + "; ".join(diff) + ". Use another out_dir, or the same config")
        try:
            pin_from_state(self.model, ckpt["model"])
            self.model.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"cannot resume from {str(path)!r}: {str(err).splitlines()[0]}") from err
        if ckpt.get("stage") not in STAGES:
            raise ValueError(f"cannot resume from {str(path)!r}: unknown stage {ckpt.get('stage')!r}")
        self.stage = len(STAGES) if ckpt.get("done") else STAGES.index(ckpt["stage"])
        self.step, self.opt_state = ckpt["step"], ckpt.get("optimizer")
        at = (self.stage, self.step)
        self.log.rewind(lambda r: (STAGES.index(r["stage"]), r["step"]) < at)
        log.info("resumed from %s at stage %s step %s", path, ckpt["stage"], self.step)

    # ---- training ---------------------------------------------------------------------------
    def fit(self) -> ClassPruning:
        """Run the remaining stages; returns the trained model (eval mode)."""
        self.out.mkdir(parents=True, exist_ok=True)
        while self.stage < len(STAGES):
            self._run_stage(self.stage)
            if STAGES[self.stage] == "base" and self._steps(self.cfg.stages.base)[1] > 0:
                sync_variable_norms(self.model.restorer)
                self.save_dense(self.out / "base.pt")
            self.stage, self.step, self.opt_state = self.stage + 1, 0, None
            self._save(None)
        self.model.eval()
        return self.model

    def save_dense(self, path: Path) -> None:
        """The densest branch as a plain model state_dict (``{"model", "arch", "name"}``)."""
        dense = export_branch(self.model.restorer, -1)
        save_atomic({"model": dense.state_dict(), "arch": self.arch, "name": self.cfg.model.name}, path)

    def _params(self, stage: int):
        if STAGES[stage] == "classifier":
            return self.model.classifier.parameters()
        if STAGES[stage] in ("base", "restoration"):
            return self.model.restorer.parameters()
        return self.model.parameters()

    def _run_stage(self, stage: int) -> None:
        name = STAGES[stage]
        sc = getattr(self.cfg.stages, name)
        spe, total = self._steps(sc)
        if total == 0:
            return
        model = self.model
        opt = torch.optim.Adam(self._params(stage), lr=sc.lr_start)
        if self.opt_state is not None:
            opt.load_state_dict(self.opt_state)
        bar = progress(range(self.step, total), f"stage {stage + 1} ({name})", total=total, initial=self.step)
        for step in bar:
            self.step = step
            clean, degraded, labels, level = self._batch(stage, step, sc, spe)
            if not (torch.isfinite(clean).all() and torch.isfinite(degraded).all()):
                raise FloatingPointError(f"non-finite values in the training batch at stage {stage + 1} ({name}), "
                                         f"step {step}; {checkpoint_note(self.out)}")
            lr = cosine_lr(step, total - 1, sc.lr_start, sc.lr_end)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, parts = self._loss(stage, clean, degraded, labels, level, sc)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at stage {stage + 1} ({name}), step {step}; "
                                         f"{checkpoint_note(self.out)}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.4g}", lr=f"{lr:.2g}")
            if step % 25 == 0 or step == total - 1:
                self.log.append({"stage": name, "step": step, "lr": lr, "loss": loss.item(), **parts})
            if (step + 1) % self.cfg.checkpoint_every == 0:
                self.step = step + 1
                self._save(opt)
        model.eval()

    def _loss(self, stage: int, clean, degraded, labels, level, sc) -> tuple[torch.Tensor, dict[str, float]]:
        model = self.model
        if STAGES[stage] == "base":
            model.restorer.train()
            loss = self.rec_loss(model.restorer(degraded), clean).mean()
            return loss, {}
        if STAGES[stage] == "classifier":
            model.classifier.train()
            model.restorer.eval()
            logits = model.classifier(degraded)
            acc = (logits.argmax(1) == labels).float().mean().item()
            return L.classifier_loss(logits, labels), {"acc": acc}
        if STAGES[stage] == "restoration":
            model.classifier.eval()
            model.restorer.train()
            with torch.no_grad():
                probs = model.classifier(degraded).softmax(1)
            outputs = each_branch(lambda i: model.restorer(degraded), model.num_branches)
            lw = L.weighted_reconstruction(probs, outputs, clean, self._sample_loss(degraded, level),
                                            self.cfg.lw_floor, self.cfg.lw_floor_to)
            return lw, {"L_W": lw.item()}
        model.train()
        out = model(degraded)
        total, parts = L.final_loss(out.probs, out.outputs, clean, self.costs, self._sample_loss(degraded, level),
                                    sc.loss_weights, self.cfg.lw_floor, self.cfg.lw_floor_to)
        parts["hist"] = torch.bincount(out.probs.argmax(1), minlength=model.num_branches).tolist()
        return total, parts
