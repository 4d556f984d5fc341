"""``dynprune demo``: the embedded default job. Trains a small DnCNN on scikit-image's bundled
photographs (dense base, then the three ClassPruning stages), evaluates on two held-out photographs
with seeded noise at sigma 15/25/50 and prints PSNR and MACs beside the dense model's. No download,
no data folder; about 8 minutes on 2 CPU cores."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["demo_config", "run_demo"]


def demo_config(out_dir: str, quick: bool = False):
    """The demo's :class:`TrainConfig` (``quick``: a smoke run of a few steps per stage)."""
    from .config import TrainConfig

    def stage(steps, bs, lr0, lr1):
        return {"epochs": 1, "steps_per_epoch": max(2, steps // 40) if quick else steps, "batch_size": bs,
                "lr_start": lr0, "lr_end": lr1}

    return TrainConfig.model_validate({
        "model": {"name": "dncnn", "kwargs": {"in_channels": 1, "depth": 12, "width": 32}},
        "dataset": {"name": "skimage_photos", "kwargs": {"channels": 1, "patch_size": 40, "patches_per_image": 256}},
        # the plugin's default photographs exclude the two test photographs (camera, coins)
        "degradation": {"name": "gaussian_noise", "kwargs": {"sigmas": [15, 25, 50]}},
        "stages": {"base": stage(900, 32, 1e-3, 1e-5), "classifier": stage(200, 32, 1e-3, 1e-6),
                   "restoration": stage(500, 24, 3e-4, 1e-6),
                   "joint": {**stage(80, 16, 1e-5, 1e-7), "loss_weights": [1.0, 1e-3, 1.5e-3]}},
        "out_dir": out_dir, "threads": None, "checkpoint_every": 100})


def run_demo(out_dir: str = "runs/demo", quick: bool = False) -> dict:
    """Train and evaluate the demo in ``out_dir/full`` (``out_dir/quick`` for the smoke run), each keyed on
    its own settings: a finished run there is reused (resumed when interrupted), a run of other settings
    is refused (its differences named). Writes ``last.pt``, ``base.pt`` and ``eval/report.*`` there.
    Returns the evaluation dict.

    Raises:
        ValueError: the folder holds a run of other settings (e.g. written by another dynprune version).
    """
    from .checkpoint import load_file
    from .evaluate import evaluate, print_summary, sigma_conditions, write_report
    from .registry import create
    from .trainer import Trainer

    t0 = time.time()
    out_dir = str(Path(out_dir) / ("quick" if quick else "full"))
    cfg = demo_config(out_dir, quick)
    trainer = Trainer(cfg, resume=True)
    model = trainer.fit()
    base = load_file(Path(out_dir) / "base.pt")
    dense = create("models", "dncnn", **base["arch"])
    dense.load_state_dict(base["model"])
    test = ("camera", "coins")  # held out of the training photographs
    images = list(zip(test, create("datasets", "skimage_photos", names=test, channels=1).images))
    result = evaluate(model, images, sigma_conditions(cfg.degradation.name, [15, 25, 50]), dense=dense)
    write_report(result, Path(out_dir) / "eval", "dynprune demo: DnCNN-12x32 on scikit-image photos")
    print(f"\nDnCNN (depth 12, width 32), trained and evaluated in {time.time() - t0:.0f} s; "
          f"test photos (held out of training): {', '.join(test)}")
    print_summary(result)
    saved = [1 - c["routed_macs_fraction"] for c in result["conditions"].values()]
    print(f"MACs saved by routing: {100 * sum(saved) / len(saved):.1f}% on average; report in {out_dir}/eval/")
    return result
