"""``dynprune demo``: the embedded default job. Trains a small DnCNN on scikit-image's bundled
photographs (dense base, then the three ClassPruning stages), evaluates on two held-out photographs
with seeded noise at sigma 15/25/50, prints PSNR and MACs beside the dense model's, and checks its own
result (:func:`check_result`; ``dynprune demo`` exits 1 when it fails). No download, no data folder; about 11
minutes on 2 CPU cores (``--quick``: about 4 minutes, a third of the steps, checked with a wider monotone
tolerance, :data:`QUICK_TOLERANCE_DB`: its branches are trained too briefly to be ordered to half a dB).

The recipe keeps every branch a denoiser on every level: ``lw_floor`` 0.2 (each branch keeps a fifth of the
L_W weight on every image, so no branch is trained on one sigma only: with the paper's eq. 6 alone, a
branch sees only the images routed to it and may restore the other levels below their noisy input), with
SR-STE gradients (``mask_grad: masked``, which suits fine-tuning pretrained weights, left the 2:4 branch
below its noisy input when training from scratch; docs/results.md), and ``frozen_bn`` (stages 2-3 normalize
with the dense base's BatchNorm statistics, so the branches trained are the branches evaluated: with batch
statistics a branch's eval-mode error compounded over the 12 layers, and whether the 2:4 branch ended above
its noisy input depended on the thread count).
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["demo_config", "run_demo", "check_result", "MONOTONE_TOLERANCE_DB", "QUICK_TOLERANCE_DB"]

# how far (dB) a denser branch may fall below a sparser one on a level and the demo still pass (--quick: 1 dB)
MONOTONE_TOLERANCE_DB = 0.5
QUICK_TOLERANCE_DB = 1.0


def demo_config(out_dir: str, quick: bool = False, device: str = "cpu"):
    """The demo's :class:`TrainConfig` on ``device``: 900 / 200 / 500 / 80 steps of the base, classifier,
    restoration and joint stages; ``quick``: 300 / 40 / 150 / 10, the base at twice the learning rate (it is
    then a denoiser after 300 steps)."""
    from .config import TrainConfig

    def stage(steps, quick_steps, bs, lr0, lr1, quick_lr0=None):
        return {"epochs": 1, "steps_per_epoch": quick_steps if quick else steps, "batch_size": bs,
                "lr_start": quick_lr0 if quick and quick_lr0 else lr0, "lr_end": lr1}

    return TrainConfig.model_validate({
        "model": {"name": "dncnn", "kwargs": {"in_channels": 1, "depth": 12, "width": 32}},
        "dataset": {"name": "skimage_photos", "kwargs": {"channels": 1, "patch_size": 40, "patches_per_image": 256}},
        # the plugin's default photographs exclude the two test photographs (camera, coins)
        "degradation": {"name": "gaussian_noise", "kwargs": {"sigmas": [15, 25, 50]}},
        "lw_floor": 0.2, "frozen_bn": True,
        "stages": {"base": stage(900, 300, 32, 1e-3, 1e-5, quick_lr0=2e-3),
                   "classifier": stage(200, 40, 32, 1e-3, 1e-6), "restoration": stage(500, 150, 24, 3e-4, 1e-6),
                   "joint": {**stage(80, 10, 16, 1e-5, 1e-7), "loss_weights": [1.0, 1e-3, 1.5e-3]}},
        "out_dir": out_dir, "threads": None, "checkpoint_every": 100, "device": device})


def check_result(result: dict, tolerance: float = MONOTONE_TOLERANCE_DB) -> list[str]:
    """What is wrong with an evaluation of the demo (:func:`dynprune.evaluate.evaluate`'s dict): every branch
    must restore every level above its degraded input, and on every level a denser branch may fall at most
    ``tolerance`` dB below a sparser one. Returns the failures, one line each ([] = passed)."""
    problems = []
    for label, c in result["conditions"].items():
        m = c["models"]
        branches = [f"branch {r}" for r in result["ratios"]]
        base = m["degraded input"]["psnr"]
        for b in branches:
            if not m[b]["psnr"] > base:
                problems.append(f"{label}: {b} gives {m[b]['psnr']:.2f} dB, not above the degraded input's {base:.2f} dB")
        for lo, hi in zip(branches, branches[1:]):
            if m[hi]["psnr"] < m[lo]["psnr"] - tolerance:
                problems.append(f"{label}: {hi} gives {m[hi]['psnr']:.2f} dB, more than {tolerance} dB below "
                                f"{lo}'s {m[lo]['psnr']:.2f} dB")
    return problems


def run_demo(out_dir: str = "runs/demo", quick: bool = False, overwrite: bool = False, device: str = "cpu") -> dict:
    """Train and evaluate the demo in ``out_dir/full`` (``out_dir/quick`` for the smoke run), each keyed on
    its own settings: a finished run there is reused (resumed when interrupted), a run of other settings
    is refused (its differences named) unless ``overwrite``, which trains from scratch in place of whatever
    run is there. Writes ``last.pt``, ``base.pt`` and ``eval/report.*`` there.
    Returns the evaluation dict, with ``"check"``: the failures of :func:`check_result` ([] = passed; ``quick``
    with :data:`QUICK_TOLERANCE_DB`).

    ``device``: where it trains and evaluates ("cpu", "cuda", "cuda:N", "mps"); a run is resumed on any.

    Raises:
        ValueError: the folder holds a run of other settings (e.g. written by another dynprune version) and
            ``overwrite`` is false; a device this machine lacks.
    """
    from .checkpoint import load_file
    from .evaluate import evaluate, print_summary, sigma_conditions, write_report
    from .methods.classpruning import Trainer
    from .registry import create

    t0 = time.time()
    out_dir = str(Path(out_dir) / ("quick" if quick else "full"))
    print(f"dynprune demo{' --quick' if quick else ''}: training a DnCNN-12x32 on scikit-image's photographs into "
          f"{out_dir} (about {'4' if quick else '11'} min on 2 CPU cores; progress at least every 30 s)", flush=True)
    cfg = demo_config(out_dir, quick, device)
    try:
        model = Trainer(cfg, resume=not overwrite, overwrite=overwrite).fit()
    except ValueError as e:
        if "cannot resume" not in str(e):
            raise
        raise ValueError(f"{e}\n(dynprune demo --overwrite trains the demo afresh in {out_dir})") from None
    base = load_file(Path(out_dir) / "base.pt")
    dense = create("models", "dncnn", **base["arch"])
    dense.load_state_dict(base["model"])
    test = ("camera", "coins")  # held out of the training photographs
    images = list(zip(test, create("datasets", "skimage_photos", names=test, channels=1).images))
    result = evaluate(model, images, sigma_conditions(cfg.degradation.name, [15, 25, 50]), dense=dense, device=device)
    write_report(result, Path(out_dir) / "eval", "dynprune demo: DnCNN-12x32 on scikit-image photos")
    print(f"\nDnCNN (depth 12, width 32), trained and evaluated in {time.time() - t0:.0f} s; "
          f"test photos (held out of training): {', '.join(test)}")
    print_summary(result)
    saved = [1 - c["routed_macs_fraction"] for c in result["conditions"].values()]
    print(f"MACs saved by routing: {100 * sum(saved) / len(saved):.1f}% on average; report in {out_dir}/eval/")
    tolerance = QUICK_TOLERANCE_DB if quick else MONOTONE_TOLERANCE_DB
    result["check"] = check_result(result, tolerance)
    if result["check"]:
        print("CHECK FAILED: this run did not train as it should:\n  " + "\n  ".join(result["check"]))
    else:
        print(f"check passed: every branch restores every sigma above its noisy input, and no denser branch is "
              f"more than {tolerance} dB below a sparser one")
    return result
