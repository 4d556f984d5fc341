"""``dynprune demo``: the embedded default job. Trains a small DnCNN on scikit-image's bundled
photographs (dense base, then the three ClassPruning stages), evaluates on two held-out photographs
with seeded noise at sigma 15/25/50, prints PSNR and MACs beside the dense model's, and checks its own
result (:func:`check_result`; ``dynprune demo`` exits 1 when it fails). No download, no data folder; about 11
minutes on 2 CPU cores (``--quick``: about 3 minutes, a smoke run of a tenth of the steps that reports the
check without enforcing it: so few steps do not train every branch on every level on every machine).

The recipe keeps every branch a denoiser on every level: ``lw_floor`` 0.2 (each branch keeps a fifth of the
L_W weight on every image, so no branch is trained on one sigma only: with the paper's eq. 6 alone, a
branch sees only the images routed to it and may restore the other levels below their noisy input), with
SR-STE gradients (``mask_grad: masked``, which suits fine-tuning pretrained weights, left the 2:4 branch
below its noisy input when training from scratch; docs/results.md).
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["demo_config", "run_demo", "check_result", "MONOTONE_TOLERANCE_DB"]

# how far (dB) a denser branch may fall below a sparser one on a level and the demo still pass
MONOTONE_TOLERANCE_DB = 0.5


def demo_config(out_dir: str, quick: bool = False):
    """The demo's :class:`TrainConfig` (``quick``: a tenth of the steps of every stage)."""
    from .config import TrainConfig

    def stage(steps, bs, lr0, lr1):
        return {"epochs": 1, "steps_per_epoch": max(2, steps // 10) if quick else steps, "batch_size": bs,
                "lr_start": lr0, "lr_end": lr1}

    return TrainConfig.model_validate({
        "model": {"name": "dncnn", "kwargs": {"in_channels": 1, "depth": 12, "width": 32}},
        "dataset": {"name": "skimage_photos", "kwargs": {"channels": 1, "patch_size": 40, "patches_per_image": 256}},
        # the plugin's default photographs exclude the two test photographs (camera, coins)
        "degradation": {"name": "gaussian_noise", "kwargs": {"sigmas": [15, 25, 50]}},
        "lw_floor": 0.2,
        "stages": {"base": stage(900, 32, 1e-3, 1e-5), "classifier": stage(200, 32, 1e-3, 1e-6),
                   "restoration": stage(500, 24, 3e-4, 1e-6),
                   "joint": {**stage(80, 16, 1e-5, 1e-7), "loss_weights": [1.0, 1e-3, 1.5e-3]}},
        "out_dir": out_dir, "threads": None, "checkpoint_every": 100})


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


def run_demo(out_dir: str = "runs/demo", quick: bool = False, overwrite: bool = False) -> dict:
    """Train and evaluate the demo in ``out_dir/full`` (``out_dir/quick`` for the smoke run), each keyed on
    its own settings: a finished run there is reused (resumed when interrupted), a run of other settings
    is refused (its differences named) unless ``overwrite``, which trains from scratch in place of whatever
    run is there. Writes ``last.pt``, ``base.pt`` and ``eval/report.*`` there.
    Returns the evaluation dict, with ``"check"``: the failures of :func:`check_result` ([] = passed).

    Raises:
        ValueError: the folder holds a run of other settings (e.g. written by another dynprune version) and
            ``overwrite`` is false.
    """
    from .checkpoint import load_file
    from .evaluate import evaluate, print_summary, sigma_conditions, write_report
    from .methods.classpruning import Trainer
    from .registry import create

    t0 = time.time()
    out_dir = str(Path(out_dir) / ("quick" if quick else "full"))
    print(f"dynprune demo{' --quick' if quick else ''}: training a DnCNN-12x32 on scikit-image's photographs into "
          f"{out_dir} (about {'3' if quick else '11'} min on 2 CPU cores; progress at least every 30 s)", flush=True)
    cfg = demo_config(out_dir, quick)
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
    result = evaluate(model, images, sigma_conditions(cfg.degradation.name, [15, 25, 50]), dense=dense)
    write_report(result, Path(out_dir) / "eval", "dynprune demo: DnCNN-12x32 on scikit-image photos")
    print(f"\nDnCNN (depth 12, width 32), trained and evaluated in {time.time() - t0:.0f} s; "
          f"test photos (held out of training): {', '.join(test)}")
    print_summary(result)
    saved = [1 - c["routed_macs_fraction"] for c in result["conditions"].values()]
    print(f"MACs saved by routing: {100 * sum(saved) / len(saved):.1f}% on average; report in {out_dir}/eval/")
    result["check"] = check_result(result)
    if result["check"]:
        note = (" (a --quick smoke run trains a tenth of the steps, too few to pass it on every machine; the full "
                "demo must pass it)" if quick else "")
        print(f"CHECK FAILED{note}: this run did not train as it should:\n  " + "\n  ".join(result["check"]))
    else:
        print(f"check passed: every branch restores every sigma above its noisy input, and no denser branch is "
              f"more than {MONOTONE_TOLERANCE_DB} dB below a sparser one")
    return result
