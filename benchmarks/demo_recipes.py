"""The embedded demo (``dynprune demo``) trained with one config value changed, evaluated and checked as the
demo does (:func:`dynprune.demo.check_result`): how docs/results.md compared the demo's candidate recipes.

    python benchmarks/demo_recipes.py NAME '{"convert.mask_grad": "masked"}'      # writes /tmp/demo_recipes/NAME
    python benchmarks/demo_recipes.py NAME '{}'                                     # the demo's own recipe
    python benchmarks/demo_recipes.py NAME '{"lw_floor": 1.0}' --quick              # on the --quick schedule
    python benchmarks/demo_recipes.py NAME '{"precise_bn": 50}' --base runs/demo/full/base.pt
                                 # stages 2-4 only, from a finished demo's dense base (its stage 1 skipped)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dynprune.checkpoint import load_file
from dynprune.config import TrainConfig
from dynprune.demo import check_result, demo_config
from dynprune.evaluate import evaluate, print_summary, sigma_conditions
from dynprune.methods.classpruning import Trainer
from dynprune.registry import create


def main() -> None:
    name, sets, quick = sys.argv[1], json.loads(sys.argv[2]), "--quick" in sys.argv[3:]
    base_path = sys.argv[sys.argv.index("--base") + 1] if "--base" in sys.argv else None
    out = f"/tmp/demo_recipes/{name}"
    data = demo_config(out, quick).model_dump(mode="json")
    if base_path:  # start from a trained dense base: the same batches for stages 2-4, stage 1 skipped
        data["model"].update(weights=base_path, kwargs={})
        data["stages"]["base"]["epochs"] = 0
    for key, value in sets.items():  # dotted keys, e.g. convert.mask_grad
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    t0 = time.time()
    model = Trainer(TrainConfig.model_validate(data), overwrite=True).fit()
    base = load_file(base_path or Path(out) / "base.pt")
    dense = create("models", "dncnn", **base["arch"])
    dense.load_state_dict(base["model"])
    test = ("camera", "coins")
    images = list(zip(test, create("datasets", "skimage_photos", names=test, channels=1).images))
    result = evaluate(model, images, sigma_conditions("gaussian_noise", [15, 25, 50]), dense=dense)
    print(name, sets, f"{time.time() - t0:.0f} s")
    print_summary(result)
    print("check:", check_result(result) or "passed")


if __name__ == "__main__":
    main()
