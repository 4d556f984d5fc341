"""Run configuration (pydantic v2, YAML files). Unknown keys are rejected with the key named."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .nm import NMPattern, NMRatio, parse_ratios
from .plan import RatioPlan, coerce_branches, is_plan_like, parse_text

__all__ = ["TrainConfig", "OptimConfig", "DataConfig", "ValidationConfig", "load_config", "check_device", "shipped_configs", "resolve_paths", "Component", "StageConfig", "JointStageConfig", "DistillConfig", "SearchConfig",
           "PnGTask", "PnGConfig"]


class _Strict(BaseModel):
    """Unknown keys and non-finite numbers (nan, inf: YAML ``.nan``, ``.inf``) are rejected with the key named."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Component(_Strict):
    """A registered plugin object: ``name`` in its registry and the factory's keyword arguments."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    name: str = "dncnn"
    weights: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ConvertConfig(_Strict):
    """Branches: global ratios ("N:M") and/or ratio plans (a plan file path, read here and kept inline so
    checkpoints carry it, or an inline plan mapping; :mod:`dynprune.plan`)."""

    ratios: list[str | dict[str, Any]] = Field(default_factory=lambda: ["1:4", "2:4", "4:4"])
    exclude: list[str] = Field(default_factory=list)
    mask_grad: Literal["sr-ste", "ste", "masked"] = "sr-ste"
    srste_decay: float = Field(2e-4, ge=0)
    pattern: str = "element"  # dynprune.convert's mask pattern: "element" or "vector8/16/32[-shared]"

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return str(NMPattern.parse(v))

    @field_validator("ratios", mode="before")
    @classmethod
    def _yaml_sexagesimal(cls, v):
        """YAML 1.1 reads an unquoted ``1:4`` as the base-60 number 64: read such ints back as N:M."""
        if not isinstance(v, list):
            return v
        out = []
        for r in v:
            if isinstance(r, int) and not isinstance(r, bool):
                n, m = divmod(r, 60)
                if not 1 <= n <= m < 60:
                    raise ValueError(f"ratio {r!r} is a number, not 'N:M': quote ratios in YAML, e.g. ['1:4', '2:4']")
                r = f"{n}:{m}"
            out.append(r)
        return out

    @field_validator("ratios")
    @classmethod
    def _valid(cls, v: list) -> list:
        if all(isinstance(r, str) and not is_plan_like(r) for r in v):
            return [str(r) for r in parse_ratios(v)]
        return [r.to_dict() if isinstance(r, RatioPlan) else str(NMRatio.parse(r)) for r in coerce_branches(v)]


class SearchConfig(_Strict):
    """``dynprune search``: SLS's differentiable per-layer N (Oh et al., CVPR 2022) with several budgets
    from one run (:mod:`dynprune.sls`)."""

    budgets: list[float] = Field(default_factory=lambda: [0.5, 0.25, 0.125])  # MACs fractions of dense
    m: int = Field(32, ge=2, le=256)     # group size; a layer whose K it does not divide uses K's largest divisor <= m
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, ge=0)        # the weights (0 = frozen weights, scores only)
    score_lr: float = Field(1e-2, gt=0)  # the per-layer priority scores
    reg_weight: float = Field(0.05, gt=0)  # initial weight of the MACs-fraction term beside the task loss
    anneal_every: int = Field(25, ge=1)    # steps between checks of the budget progress
    anneal_alpha: float = Field(1.2, gt=1)  # regulariser weight x alpha when the fraction fell less than
    anneal_min_drop: float = Field(0.01, ge=0)  # this many fraction points over the last check period
    exclude: list[str] = Field(default_factory=list)  # fnmatch patterns of layers kept dense (SLS: entry, exit)
    checkpoint_every: int = Field(100, ge=1)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[float]) -> list[float]:
        bad = [b for b in v if not 0 < b <= 1]
        if bad or not v:
            raise ValueError(f"budgets {v}: each must be a MACs fraction in (0, 1], e.g. [0.5, 0.25]")
        return sorted(set(v), reverse=True)


class ClassifierConfig(_Strict):
    name: str = "paper"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class StageConfig(_Strict):
    """One training stage: the run's optimizer (``optim``), cosine LR from ``lr_start`` to ``lr_end`` over all
    its steps after ``warmup_steps`` of linear warm-up. ``steps_per_epoch`` None means one pass over the
    dataset per epoch."""

    epochs: int = Field(1, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_start: float = Field(1e-4, gt=0)
    lr_end: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(0, ge=0)  # linear warm-up to lr_start before the cosine (dynprune.train.schedule)


class JointStageConfig(StageConfig):
    """Stage 3: L_F = w1 L_W + w2 L_E + w3 L_C (paper eq. 7)."""

    loss_weights: tuple[float, float, float] = (1.0, 1e-3, 1.5e-3)


class Stages(_Strict):
    """The paper's defaults (3.4): 200 / 500 / 500 epochs, batch 32. ``base`` (dense training of
    the backbone before conversion-aware training; the paper trains its base models 1000 epochs,
    1e-4 -> 1e-7) is off by default: start from pretrained weights instead."""

    base: StageConfig = StageConfig(epochs=0, lr_start=1e-4, lr_end=1e-7)
    classifier: StageConfig = StageConfig(epochs=200, lr_start=1e-3, lr_end=1e-6)
    restoration: StageConfig = StageConfig(epochs=500, lr_start=1e-4, lr_end=1e-6)
    joint: JointStageConfig = JointStageConfig(epochs=500, lr_start=1e-5, lr_end=1e-7)


class DistillConfig(_Strict):
    """Output distillation of every branch from frozen dense teachers (off when ``weight`` = 0, the paper).

    ``weight`` alpha: each branch's per-sample loss becomes (1 - alpha) loss(f_i(y), x) + alpha loss(f_i(y), T(y)).
    ``teachers``: empty = a frozen copy of the starting network (the pretrained ``model.weights``, or
    ``init_from``'s densest branch), so the densest branch is anchored where it started; one entry = one
    teacher for every image; one entry per degradation level (e.g. DnCNN-S-15/25/50) = each image's teacher
    is its level's.
    """

    weight: float = Field(0.0, ge=0, le=1)
    teachers: list[ModelConfig] = Field(default_factory=list)


class QATConfig(_Strict):
    """Quantization-aware training for ``deploy(precision="int8")`` (:mod:`dynprune.qat`): every layer and
    branch that int8 deployment quantizes trains through fake quantization of its input and of its BatchNorm-
    folded weight. A fine-tune of a trained model (``init_from``), with ``frozen_bn``.

    ``calibration``: folder of clean images for the activation ranges (default: the dataset's ``root``), the
    first ``calibration_count`` of them, degraded at every level (what ``dynprune deploy --precision int8``
    calibrates on by default). ``pin_masks``: fine-tune the kept weights' values only: every layer's nested
    ordering is pinned when the run starts (:func:`dynprune.layers.pin_order`), so no branch swaps a kept
    weight for one it was never trained with.
    """

    enabled: bool = False
    pin_masks: bool = True
    calibration: str | None = None
    calibration_count: int = Field(8, ge=1)


class PnGTask(_Strict):
    """One PnG task: what it restores and how much of every layer it owns.

    ``share``: weights per group of ``png.m`` this task takes from those earlier tasks left free (its
    branch keeps the earlier tasks' weights plus its own: N_t = share_1 + ... + share_t). ``dataset``,
    ``degradation``, ``loss``: this task's, default the run's. ``forward``: keyword arguments of the
    model's forward for this task (``{scale: 2}`` for a multi-scale SR net). ``head``: the module this task
    alone uses and owns (kept dense, out of the N:M masks), e.g. ``upsample.up2``. ``grow``, ``finetune``:
    this task's phase schedules, default ``png.grow`` / ``png.finetune`` (e.g. ``grow: {epochs: 0}`` for a
    first task the pretrained weights already solve).
    """

    name: str
    share: int = Field(1, ge=1)
    dataset: Component | None = None
    degradation: Component | None = None
    loss: Component | None = None
    forward: dict[str, Any] = Field(default_factory=dict)
    head: str | None = None
    grow: StageConfig | None = None
    finetune: StageConfig | None = None


class PnGConfig(_Strict):
    """``dynprune png``: micro-structured prune-and-grow over a sequence of tasks (:mod:`dynprune.png`).

    Per task, in ``tasks`` order: ``grow`` trains the weights no earlier task owns (with the owned ones
    frozen) on the task, then ``criterion`` picks the task's ``share`` of them per group of ``m``
    (``magnitude``: the largest |w| after growing; ``random``: a seeded control), then ``finetune``
    trains only those on the task's branch.
    """

    tasks: list[PnGTask] = Field(default_factory=list)
    m: int = Field(4, ge=2, le=256)
    criterion: Literal["magnitude", "random"] = "magnitude"
    grow: StageConfig = StageConfig(epochs=1, steps_per_epoch=500, batch_size=16, lr_start=1e-4, lr_end=1e-5)
    finetune: StageConfig = StageConfig(epochs=1, steps_per_epoch=500, batch_size=16, lr_start=5e-5, lr_end=1e-6)

    @model_validator(mode="after")
    def _fits(self) -> "PnGConfig":
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"png.tasks: task names must be unique, {dup} repeated")
        total = sum(t.share for t in self.tasks)
        if total > self.m:
            raise ValueError(f"png.tasks shares {[t.share for t in self.tasks]} add up to {total}, more than the "
                             f"m={self.m} weights each group of a layer holds: lower the shares or raise png.m")
        heads = [t.head for t in self.tasks if t.head]
        if len(set(heads)) != len(heads):
            raise ValueError(f"png.tasks: each head belongs to one task, got {heads}")
        return self


class OptimConfig(_Strict):
    """The optimizer of every phase and what wraps its update. The defaults are the paper's (Adam, no weight
    decay, no clipping, no EMA); runs written before these options existed compute exactly as before.

    ``name``: ``adam`` or ``adamw`` (decoupled weight decay, Loshchilov & Hutter, ICLR 2019) with ``betas``
    and ``weight_decay``. ``clip_grad_norm``: the largest global L2 norm of the gradients of each update
    (``torch.nn.utils.clip_grad_norm_``; 0 = off), taken before SR-STE's decay enters. ``ema_decay``: an
    exponential moving average of the restorer's weights, ``w_ema <- d * w_ema + (1 - d) * w`` after every
    update (BasicSR's ``ema_decay``, e.g. 0.999; 0 = off): validation and ``best.pt`` use it, and a finished
    run's model is the average.
    """

    name: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    clip_grad_norm: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.0, ge=0, lt=1)


class DataConfig(_Strict):
    """How batches are built (never what they hold): ``workers`` DataLoader processes (0 = in the training
    process), each ``prefetch`` batches ahead. Batches are the same for every setting."""

    workers: int = Field(0, ge=0)
    prefetch: int = Field(2, ge=1)


class ValidationConfig(_Strict):
    """Validation during training (off when ``every`` = 0): every ``every`` steps and at the end of each phase
    that trains the restorer, PSNR per branch and routed, with the routing histogram, on held-out images.

    Held-out images: ``dataset`` (a registered dataset whose ``images`` are clean images, e.g.
    ``image_folder`` of a validation folder, or ``paired_folder`` of real pairs), or else a ``fraction`` of
    the training images set aside by the run (seeded; their names are written to ``validation.json``).
    ``crop``: the centre crop (pixels) of each image that is scored (0 = whole images); ``max_images``
    caps their number. ``metric`` (e.g. ``psnr_routed``, ``psnr_2:4``) decides ``best.pt``, higher is
    better for ``mode: max``.
    """

    every: int = Field(0, ge=0)
    dataset: Component | None = None
    fraction: float = Field(0.0, ge=0, lt=1)
    crop: int = Field(128, ge=0)
    max_images: int | None = Field(None, ge=1)
    metric: str = "psnr_routed"
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _source(self) -> "ValidationConfig":
        if self.every and self.dataset is None and self.fraction == 0:
            raise ValueError(f"validation.every={self.every} needs held-out images: give validation.dataset or a "
                             "validation.fraction of the training images (e.g. 0.1)")
        if self.dataset is not None and self.fraction:
            raise ValueError("give validation.dataset or validation.fraction, not both")
        return self


class TrainConfig(_Strict):
    """Everything a training run needs; see ``configs/*.yaml`` for real examples. ``method`` names the
    training method ``dynprune train`` runs (:mod:`dynprune.methods`; default the paper's ClassPruning)."""

    method: str = "classpruning"

    model: ModelConfig = ModelConfig()
    convert: ConvertConfig = ConvertConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    dataset: Component = Component(name="skimage_photos")
    degradation: Component = Component(name="gaussian_noise", kwargs={"sigmas": [15, 25, 50]})
    labeler: Component = Component(name="level")
    loss: Component = Component(name="l1")
    stages: Stages = Stages()
    seed: int = Field(0, ge=0, lt=2**32)  # seeds torch and numpy generators (numpy takes < 2**32)
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "mps"; checked against this machine by check_device
    threads: int | None = Field(None, ge=1)
    # training arithmetic: torch.autocast in bf16 or fp16 (fp16 with a GradScaler, CUDA only); weights,
    # optimizer state and checkpoints stay float32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # under torchrun: BatchNorm (per branch) normalizes with the statistics of the global batch, so N ranks
    # train what one process does with the same global batch (dynprune.train.distributed)
    sync_norms: bool = True
    # training batches in channels-last memory (NHWC), so convolutions run their NHWC kernels (cuDNN's with
    # tensor cores under bf16/fp16); the arithmetic is the same up to float order
    channels_last: bool = False
    out_dir: str = "runs/default"
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(25, ge=1)  # steps between rows of log.jsonl (and TensorBoard scalars)
    tensorboard: bool = True  # TensorBoard event files in out_dir/tensorboard when the package is installed
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    init_from: str | None = None  # a dynprune checkpoint whose weights initialize the whole model
    # L_W weight of every branch >= lw_floor (stages 2-3); 0 = the paper's eq. 6, 1/L = all branches equal
    lw_floor: float = Field(0.0, ge=0, le=1)
    # which branches get the floor: "all", or "denser" (the image's branch and the denser ones only)
    lw_floor_to: Literal["all", "denser"] = "all"
    # stages 2-3 (restoration, joint): every branch's BatchNorm normalizes with its running statistics (the
    # dense network's, copied at conversion) in training too, so what trains is what runs in eval mode; the
    # per-branch affine parameters still train (layers.freeze_norm_stats). false: batch statistics (the paper)
    frozen_bn: bool = False
    distill: DistillConfig = DistillConfig()
    qat: QATConfig = QATConfig()
    search: SearchConfig = SearchConfig()
    png: PnGConfig = PnGConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v, available=False)

    @model_validator(mode="after")
    def _precision_fits(self) -> "TrainConfig":
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError(f"precision fp16 needs a CUDA device (its loss scaling is for GPU half precision), "
                             f"and device is {self.device!r}: use precision bf16 on this device, or fp32")
        return self

    @model_validator(mode="after")
    def _qat_fits(self) -> "TrainConfig":
        if self.qat.enabled and not self.frozen_bn:
            raise ValueError("qat.enabled folds each branch's BatchNorm running statistics into the int8 weights, "
                             "as deployment does: set frozen_bn: true")
        return self

    @model_validator(mode="after")
    def _floor_fits(self) -> "TrainConfig":
        n = len(self.convert.ratios)
        if self.lw_floor > 1.0 / n + 1e-12:
            raise ValueError(f"lw_floor {self.lw_floor} is above 1/L = {1.0 / n:.4g} for {n} branches")
        return self


def shipped_configs() -> Path:
    """The folder of the example configs installed with dynprune (``configs/`` of the source tree).
    Their data paths start with ``$DYNPRUNE_DATA`` (the data root, :func:`expand_data_root`)."""
    from importlib.resources import files

    return Path(str(files("dynprune.configs")))


def check_device(device: str, available: bool = True) -> str:
    """``device`` if it names a torch device kind dynprune runs on ("cpu", "cuda", "cuda:N", "mps") and,
    with ``available``, one this machine has.

    Raises:
        ValueError: another string, or a device this machine lacks (what it has is named).
    """
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise ValueError(f"device {device!r} is not one of 'cpu', 'cuda', 'cuda:N', 'mps'")
    if available and kind == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            raise ValueError(f"device {device!r} is not available here ({count} CUDA device(s)); use device: cpu")
    if available and kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} is not available here; use device: cpu")
    return device


def apply_override(data: dict, dotted: str) -> None:
    """Apply one ``key.sub=value`` override (value parsed as YAML) to a config mapping in place.

    Raises:
        ValueError: no ``=``, an empty key, or a value that is not valid YAML.
    """
    key, sep, raw = dotted.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {dotted!r} must look like key.sub=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {p!r} is not a mapping")
    node[leaf] = parse_text(raw, f"override {dotted!r}: the value")


_PATH_KEYS = ("root", "weights", "path", "file")
_PATH_SUFFIXES = ("_root", "_dir", "_path", "_file", "_weights")
_PLAN_SUFFIXES = (".yaml", ".yml", ".json")


def _is_path_key(key: str) -> bool:
    return key in _PATH_KEYS or key.endswith(_PATH_SUFFIXES)


DATA_VAR = "DYNPRUNE_DATA"  # the data root that shipped configs name their inputs by


def expand_data_root(value: str) -> str:
    """``value`` with a leading ``$DYNPRUNE_DATA`` (or ``${DYNPRUNE_DATA}``) replaced by that environment
    variable, the data root (``dynprune --data-root DIR`` sets it); other strings unchanged.

    Raises:
        ValueError: the value names the variable and it is unset (how to set it is said).
    """
    import os

    for prefix in (f"${{{DATA_VAR}}}", f"${DATA_VAR}"):
        if value == prefix or value.startswith(prefix + "/"):
            root = os.environ.get(DATA_VAR)
            if not root:
                raise ValueError(f"{value!r} is under the data root ${DATA_VAR}, which is not set: set {DATA_VAR} "
                                 f"to the folder that holds the data (e.g. export {DATA_VAR}=../shared/data), or "
                                 f"pass --data-root DIR")
            return os.path.join(root, value[len(prefix) + 1:]) if value != prefix else root
    return value


def input_anchors() -> dict:
    """What a checkpoint records so that its config's relative input paths can be found from elsewhere
    (:func:`locate_input`): ``workdir`` (the working folder they are relative to) and ``data_root``
    (``$DYNPRUNE_DATA`` resolved, or None)."""
    import os

    root = os.environ.get(DATA_VAR)
    return {"workdir": os.getcwd(), "data_root": str(Path(root).resolve()) if root else None}


def locate_input(path: str | None, anchors: dict | None) -> Path | None:
    """Find an input file that a checkpoint's config names (e.g. the dense weights) from where we run now:
    ``path`` as it is; relative to the training run's working folder; or, when it lay under the data root
    then, under ``$DYNPRUNE_DATA`` now. ``anchors``: :func:`input_anchors` as the checkpoint stored them
    (None for older checkpoints). Returns the existing file, or None."""
    import os

    if not path:
        return None
    p = Path(path)
    tries = [p]
    if anchors and anchors.get("workdir") and not p.is_absolute():
        p = Path(anchors["workdir"]) / p
        tries.append(p)
    root, now = (anchors or {}).get("data_root"), os.environ.get(DATA_VAR)
    if root and now and p.resolve().is_relative_to(root):
        tries.append(Path(now) / p.resolve().relative_to(root))
    return next((t for t in tries if t.is_file()), None)


def _expand_all(node):
    """Every string of a config mapping (at any depth, under any key: ``paired_folder``'s ``degraded`` too)
    with the data root expanded (:func:`expand_data_root`)."""
    if isinstance(node, dict):
        return {k: _expand_all(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_all(v) for v in node]
    return expand_data_root(node) if isinstance(node, str) else node


def resolve_paths(data: dict, folder: Path) -> dict:
    """Rewrite the relative input paths of a config mapping as seen from ``folder`` (the config file's),
    expressed relative to the working directory when they lie below it (absolute otherwise), in place.

    Input paths are ``model.weights``, ``init_from``, ``qat.calibration``, the teachers' ``weights``, plan files in
    ``convert.ratios``, and, in any ``kwargs`` mapping (nested ones too), the values of keys named
    ``root``, ``weights``, ``path``, ``file`` or ending in ``_root``, ``_dir``, ``_path``, ``_file``,
    ``_weights``. ``out_dir``, written by the run, stays relative to the working directory (as ``--out-dir``).
    """
    import os

    def fix(value):
        if not isinstance(value, str) or not value or Path(value).is_absolute() or "://" in value:
            return value
        full = Path(os.path.normpath(folder / value))
        rel = os.path.relpath(full)
        return rel if not rel.startswith(".." + os.sep + ".." + os.sep + "..") else str(full.resolve())

    def walk_kwargs(kw):
        if not isinstance(kw, dict):
            return
        for k, v in kw.items():
            if isinstance(v, dict):
                walk_kwargs(v)
            elif _is_path_key(str(k)):
                kw[k] = fix(v)

    png = data.get("png")
    tasks = [t for t in (png.get("tasks") or []) if isinstance(t, dict)] if isinstance(png, dict) else []
    for node in [data.get(s) for s in ("model", "dataset", "degradation", "labeler", "loss", "classifier")] + \
            [t.get(s) for t in tasks for s in ("dataset", "degradation", "loss")]:
        if isinstance(node, dict):
            if "weights" in node:
                node["weights"] = fix(node["weights"])
            walk_kwargs(node.get("kwargs"))
    if "init_from" in data:
        data["init_from"] = fix(data["init_from"])
    qat = data.get("qat")
    if isinstance(qat, dict) and qat.get("calibration"):
        qat["calibration"] = fix(qat["calibration"])
    distill = data.get("distill")
    for t in (distill.get("teachers") or []) if isinstance(distill, dict) else []:
        if isinstance(t, dict):
            t["weights"] = fix(t.get("weights"))
            walk_kwargs(t.get("kwargs"))
    conv = data.get("convert")
    if isinstance(conv, dict) and isinstance(conv.get("ratios"), list):
        conv["ratios"] = [fix(r) if isinstance(r, str) and r.endswith(_PLAN_SUFFIXES) else r for r in conv["ratios"]]
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Read a YAML run configuration; ``overrides`` replace top-level keys, ``sets`` are ``a.b=value``
    overrides (see :func:`apply_override`). A value that starts with ``$DYNPRUNE_DATA`` lies under the data
    root (:func:`expand_data_root`), so a config works from any folder, including the copies installed with
    dynprune; other relative input paths in the file are read from the file's folder
    (:func:`resolve_paths`); those in ``overrides`` and ``sets``, typed by the user, from the working
    directory.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, unknown keys or wrong types (pydantic's message names each field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist; example configs ship with dynprune in "
                                f"{shipped_configs()}")
    data = parse_text(path.read_text(), f"config {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {str(path)!r} must be a mapping, got {type(data).__name__}")
    data = _expand_all(data)
    resolve_paths(data, path.parent)
    data.update(overrides or {})
    for item in sets or []:
        apply_override(data, item)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"invalid config {str(path)!r}:\n{err}") from err
