"""ClassPruning's three training stages (paper 3.3-3.4) on the shared run loop (:class:`dynprune.train.Run`).

An optional stage 0 ("base", off by default) trains the dense network alone, for runs that start without
pretrained weights; stage 1 trains the classifier alone with cross-entropy on pseudo labels; stage 2 freezes it
and trains the restoration branches with L_W; stage 3 trains everything with L_F. Every batch is a pure
function of (seed, stage, step), so a resumed run continues exactly where the checkpoint left it.

Three additions to the paper's recipe, all off by default: ``lw_floor`` (every branch keeps a minimum L_W weight on
every image, so no branch forgets the other levels), ``distill`` (every branch also learns the output of frozen
dense teachers: the starting network, or one per degradation level) and ``frozen_bn`` (stages 2-3 normalize with
the running statistics, so the trained network is the one evaluated).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import losses as L
from ..audit import audit
from ..branch import each_branch, per_group
from ..checkpoint import load_file, save_atomic
from ..classpruning import ClassPruning
from ..config import TrainConfig
from ..convert import export_branch
from ..layers import dynamic_layers, freeze_norm_stats, pin_from_state, pin_order, pinned_order, sync_variable_norms
from ..models import build_model
from ..registry import create
from ..train import Phase, Run, StepBatches
from ..train.validation import held_out, routed_metric_names, routed_metrics

__all__ = ["Trainer", "build_teachers", "STAGES", "RUN_FILES"]

STAGES = ("base", "classifier", "restoration", "joint")
log = logging.getLogger(__name__)

# The files a training run writes into its out_dir (another run there needs --resume or --overwrite).
RUN_FILES = ("last.pt", "base.pt", "log.jsonl", "validation.json")


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


def first_image(dataset) -> torch.Tensor:
    """The model input (C, h, w) of a dataset's first item: the patch, or the degraded half of a pair."""
    item = dataset[0]
    return item[0] if isinstance(item, (tuple, list)) else item


class Trainer:
    """Runs the stages of a :class:`TrainConfig` on :class:`~dynprune.train.Run`, writing ``out_dir/last.pt``
    (atomically, every ``checkpoint_every`` steps and at each stage end), ``base.pt`` after a dense stage 0,
    ``log.jsonl`` (and TensorBoard), and with ``validation`` on, ``best.pt``.

    Args:
        resume: continue ``out_dir/last.pt`` (its config must equal ``cfg`` except run-only fields; more
            epochs extend it, see :mod:`dynprune.train.run`).
        overwrite: replace the run files (:data:`RUN_FILES`) another run left in ``out_dir``.
    Raises:
        ValueError: ``out_dir`` holds another run and neither ``resume`` nor ``overwrite`` was given; a resumed
            checkpoint of another config (the differences named); a device this machine lacks; validation
            settings that do not fit (see :class:`~dynprune.config.ValidationConfig`).
        FloatingPointError (from :meth:`fit`): a NaN/Inf batch or loss (stage and step named; the last
            checkpoint, if one was written, is kept).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.run = Run(cfg, RUN_FILES, resume, overwrite)
        self.out = self.run.out
        dataset = create("datasets", cfg.dataset.name, **cfg.dataset.kwargs)
        self.dataset, self.val_images, self.val_degraded = held_out(cfg, dataset, self.out)
        self.degrade = create("degradations", cfg.degradation.name, **cfg.degradation.kwargs)
        n = len(cfg.convert.ratios)
        self.labeler = create("labelers", cfg.labeler.name, num_classes=n, **cfg.labeler.kwargs)
        self.rec_loss = create("losses", cfg.loss.name, **cfg.loss.kwargs)
        self.paired = isinstance(self.dataset[0], (tuple, list))
        if self.paired and getattr(self.labeler, "needs_level", False):
            raise ValueError(f"dataset {cfg.dataset.name!r} gives real degraded/clean pairs, which have no degradation "
                             f"level for labeler {cfg.labeler.name!r}: use labeler input_psnr (bins of the input's PSNR) "
                             "or residual_variance with rescale: false")
        if hasattr(self.labeler, "check_degradation") and not self.paired:
            self.labeler.check_degradation(self.degrade, cfg.degradation.name)
        if hasattr(self.labeler, "fit") and getattr(self.labeler, "edges", True) is None:
            self._fit_labeler()
        probe = first_image(self.dataset).unsqueeze(0)
        self.model = build_model(cfg, in_channels=probe.shape[1]).to(cfg.device)
        self.arch = self.model.restorer.arch
        if cfg.init_from:
            state = load_file(cfg.init_from)
            state = state["model"] if "model" in state else state
            pin_from_state(self.model, state)
            try:
                self.model.load_state_dict(state)
            except (RuntimeError, KeyError) as err:
                why = " ".join(line.strip() for line in str(err).splitlines()[:2])
                raise ValueError(f"init_from {cfg.init_from!r} does not fit this model: {why[:400]}") from err
        self.teachers = self._build_teachers()
        self.qat = self._attach_qat(probe.shape[1]) if cfg.qat.enabled else None
        self._val_audit = None
        self.run.track_ema(self.model.restorer)
        self.run.validate_with(self.validate, routed_metric_names(self.model.ratios))
        self.run.restore(self)
        with torch.no_grad():
            probe = probe.to(cfg.device)
            self.costs = audit(self.model, probe).relative_costs().to(cfg.device)
            self._check_teachers(probe)

    @property
    def step(self) -> int:
        """The step in progress of the current stage."""
        return self.run.step

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

    def _attach_qat(self, channels: int):
        """Int8 fake quantization (:mod:`dynprune.qat`) on what ``deploy(precision="int8")`` quantizes, its
        activation ranges calibrated on the weights the run starts with (before a resume loads its own)."""
        from .. import qat
        from ..deploy.calibration import run_calibration_images

        q = self.cfg.qat
        try:
            images = run_calibration_images(self.cfg, q.calibration, q.calibration_count, channels)
        except ValueError as err:
            raise ValueError(f"qat: {err} as qat.calibration") from None
        plan = qat.int8_plan(self.model.restorer, images)
        pinned = 0
        if q.pin_masks:
            for _, layer in dynamic_layers(self.model.restorer):
                if pinned_order(layer) is None:
                    pin_order(layer)
                    pinned += 1
        log.info("QAT: int8 fake quantization on %d layers (calibrated on %d images), %d orderings pinned", len(plan),
                 images.shape[0], pinned)
        return qat.attach(self.model.restorer, plan)

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

    def _fit_labeler(self, samples: int = 512) -> None:
        """Fit a data-driven labeler (its ``score`` of each sample, e.g. the residual variance of eq. 2-3 or
        the input PSNR of a real pair) on seeded training patches, degraded synthetically unless paired."""
        g = torch.Generator().manual_seed(self.cfg.seed * 7 + 12345)
        idx = torch.randint(0, len(self.dataset), (samples,), generator=g)
        items = [self.dataset[int(i)] for i in idx]
        if self.paired:
            degraded, clean = torch.stack([d for d, _ in items]), torch.stack([c for _, c in items])
        else:
            clean = torch.stack(items)
            degraded, _ = self.degrade(clean, generator=g)
        self.labeler.fit(self.labeler.score(clean, degraded))
        log.info("fitted %s on %d patches", type(self.labeler).__name__, samples)

    # ---- the run's phases -------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """The four stages (a stage of 0 epochs is skipped); validation in stages 2 and 3."""
        out = []
        for i, name in enumerate(STAGES):
            sc = getattr(self.cfg.stages, name)
            spe = sc.steps_per_epoch or max(1, len(self.dataset) // sc.batch_size)
            out.append(Phase(
                name=name, desc=f"stage {i + 1} ({name})", steps=spe * sc.epochs, schedule=sc,
                params=lambda i=i: self._params(i),
                batches=StepBatches(self.dataset, self.degrade, self.cfg.seed, i, sc.batch_size, spe, self.labeler),
                loss=lambda batch, i=i, sc=sc: self._loss(i, *batch, sc), log={"stage": name},
                start=lambda name=name: freeze_norm_stats(self.model.restorer,
                                                          self.cfg.frozen_bn and name in ("restoration", "joint")),
                end=self._save_base if name == "base" else None,
                validate=name in ("restoration", "joint"), ema=name != "classifier"))
        return out

    def _params(self, stage: int):
        if STAGES[stage] == "classifier":
            return self.model.classifier.parameters()
        if STAGES[stage] in ("base", "restoration"):
            return self.model.restorer.parameters()
        return self.model.parameters()

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
            acc = (logits.argmax(1) == labels).float().mean()
            return L.classifier_loss(logits, labels), {"acc": acc}
        if STAGES[stage] == "restoration":
            model.classifier.eval()
            model.restorer.train()
            with torch.no_grad():
                probs = model.classifier(degraded).softmax(1)
            outputs = each_branch(lambda i: model.restorer(degraded), model.num_branches)
            lw = L.weighted_reconstruction(probs, outputs, clean, self._sample_loss(degraded, level),
                                            self.cfg.lw_floor, self.cfg.lw_floor_to)
            return lw, {"L_W": lw.detach()}
        model.train()
        out = model(degraded)
        total, parts = L.final_loss(out.probs, out.outputs, clean, self.costs, self._sample_loss(degraded, level),
                                    sc.loss_weights, self.cfg.lw_floor, self.cfg.lw_floor_to)
        parts["hist"] = torch.bincount(out.probs.argmax(1), minlength=model.num_branches)
        return total, parts

    def validate(self) -> dict:
        """PSNR per branch and routed, and the routing histogram, on the held-out images (eval mode)."""
        if self._val_audit is None:  # the branches' MACs do not change with training: audit once
            was = self.model.training
            with torch.no_grad():
                self._val_audit = audit(self.model.eval(), self.val_images[0][1].unsqueeze(0).to(self.cfg.device))
            self.model.train(was)
        return routed_metrics(self.model, self.val_images, self.val_degraded, self.cfg, self._val_audit)

    def _save_base(self) -> None:
        if self.run.totals.get("base", 0) > 0:
            sync_variable_norms(self.model.restorer)
            self.save_dense(self.out / "base.pt")

    def save_dense(self, path: Path) -> None:
        """The densest branch as a plain model state_dict (``{"model", "arch", "name"}``)."""
        dense = export_branch(self.model.restorer, -1)
        save_atomic({"model": dense.state_dict(), "arch": self.arch, "name": self.cfg.model.name}, path)

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """The model, its architecture, and the stage/step it is at (the keys ``load_trained`` reads)."""
        index = self.run.index
        return {"model": self.model.state_dict(), "arch": self.arch, "stage": STAGES[min(index, len(STAGES) - 1)],
                "done": index >= len(STAGES), "step": self.run.step}

    def load_checkpoint(self, ckpt: dict, path: Path) -> None:
        if ckpt.get("stage") not in STAGES or "png_run" in ckpt:
            raise ValueError(f"cannot resume from {str(path)!r}: not a ClassPruning training checkpoint "
                             f"(stage {ckpt.get('stage')!r})")
        try:
            pin_from_state(self.model, ckpt["model"])
            self.model.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"cannot resume from {str(path)!r}: {str(err).splitlines()[0]}") from err

    def legacy_position(self, ckpt: dict) -> tuple[int, int]:
        return (len(STAGES), 0) if ckpt.get("done") else (STAGES.index(ckpt["stage"]), ckpt["step"])

    # ---- training ---------------------------------------------------------------------------
    def fit(self) -> ClassPruning:
        """Run the remaining stages; returns the trained model (eval mode, float: a QAT simulation is removed)."""
        self.run.fit(self)
        freeze_norm_stats(self.model.restorer, False)  # the returned model trains further as any other
        if self.qat is not None:
            self.qat.remove()
        self.model.eval()
        return self.model
