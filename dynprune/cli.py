"""The ``dynprune`` command line: train, eval, calibrate, restore, deploy, demo, plugins."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from pathlib import Path

import torch

from .progress import progress

log = logging.getLogger(__name__)

__all__ = ["main"]

def _conditions(cfg, args):
    """--sigma levels of the run's degradation, or else each of its difficulty levels (seeded)."""
    from .evaluate import level_conditions, sigma_conditions

    if args.sigma:
        return sigma_conditions(cfg.degradation.name, args.sigma, args.seed)
    return level_conditions(cfg.degradation.name, cfg.degradation.kwargs, args.seed)


def _pairs_condition(pairs, label: str = "real pairs"):
    """A condition whose degraded images are the given real ones, in the order of ``pairs``."""
    from .evaluate import Condition

    return Condition(label, degraded={name: degraded for name, degraded, _ in pairs})


def _dense_reference(cfg, ckpt_path: Path, explicit: str | None, anchors: dict | None):
    """(model, path, why missing): the dense model to compare against: ``--dense FILE``, the run's
    ``base.pt``, or the config's weights found from here (:func:`dynprune.config.locate_input`; ``anchors``
    from the checkpoint). When the config names weights that cannot be found, a warning says so and how
    to give them; the reason is returned for the report.

    Raises:
        FileNotFoundError: ``--dense`` names no file.
    """
    from .checkpoint import load_file
    from .config import locate_input
    from .registry import create

    if explicit and not Path(explicit).is_file():
        raise FileNotFoundError(f"dense reference {explicit!r} does not exist")
    beside = ckpt_path.parent / "base.pt"
    path = explicit or (str(beside) if beside.is_file() else None)
    if path is None:
        found = locate_input(cfg.model.weights, anchors)
        if found is None:
            if not cfg.model.weights:
                return None, None, "the run trained from scratch and has no base.pt beside its checkpoint"
            why = (f"the dense weights {cfg.model.weights!r} that the checkpoint's config names are not found from "
                   f"here{' (nor from its training folder ' + repr(anchors['workdir']) + ')' if anchors else ''}")
            log.warning("no dense reference: %s; the dense row is left out (pass --dense FILE, or set "
                        "DYNPRUNE_DATA to the data root)", why)
            return None, None, why
        path = str(found)
    obj = load_file(path)
    if isinstance(obj, dict) and "arch" in obj and "model" in obj:
        model = create("models", obj.get("name", cfg.model.name), **obj["arch"])
        model.load_state_dict(obj["model"])
        return model, path, None
    return create("models", cfg.model.name, weights=path, **cfg.model.kwargs), path, None


def _read_images(folder, model):
    """The folder's images (sorted), checked against the model's input channels.

    Raises:
        ValueError: an image whose channel count differs from the model's (no silent conversion).
    """
    from .imageio import read_folder

    files, imgs = read_folder(folder)
    model.check_channels([(f.name, im) for f, im in zip(files, imgs)])
    return files, imgs


def _check_sizes(model, named_images, what: str, tile: int = 0, how: str | None = None) -> None:
    """Refuse, before any work, an image whose run would not fit in memory (:func:`dynprune.tiling.check_fits`;
    ``how``: the remedy named when ``tile`` is 0)."""
    from .tiling import check_fits

    restorer = getattr(model, "restorer", model)
    for name, img in named_images:
        big = tile and max(img.shape[-2:]) > tile
        check_fits(restorer, (1, *img.shape), f"{what} of {name}", tile if big else 0, _scale(restorer), how)


def _scale(restorer) -> int:
    scale = getattr(restorer, "scale", 1)
    return scale if isinstance(scale, int) else 1


def _plan_tiles(args, audit_model, named_images) -> tuple[int, int | None, object]:
    """(tile, overlap, probe) for ``restore``: tiling is probed on the dynamic model when an image is larger
    than ``--tile``; a model that tiles exactly gets its receptive-field radius as the default overlap, one
    that does not runs whole images unless ``--tile-approximate`` (then a warning states the difference
    measured on the first large image). Checks that every image fits in memory.

    Raises:
        ValueError: bad --tile/--tile-overlap values, an overlap or tile too small to be exact, an image that
        does not fit.
    """
    from .tiling import probe_tiling, tile_difference, tile_overlap

    if args.tile < 0 or (args.tile_overlap is not None and args.tile_overlap < 0):
        raise ValueError(f"--tile {args.tile} / --tile-overlap {args.tile_overlap}: need tile >= 0 (0 = never tile) "
                         "and overlap >= 0")
    big = [(n, im) for n, im in named_images if args.tile and max(im.shape[-2:]) > args.tile]
    tile, overlap, probe, how = args.tile, args.tile_overlap, None, None
    if big:
        restorer = audit_model.restorer
        probe = probe_tiling(restorer, big[0][1].shape[0], _scale(restorer))
        if probe.exact or args.tile_approximate:
            overlap = tile_overlap(probe, tile, overlap, args.tile_approximate)
        else:
            print(f"restore: {len(big)} image(s) larger than --tile {tile} run whole: tiling this model would change "
                  f"its output ({'; '.join(probe.reasons)}); --tile-approximate tiles them anyway", flush=True)
            tile, how = 0, "--tile-approximate (tiles change this model's output; the difference is reported)"
    _check_sizes(audit_model, named_images, "restore", tile, how)
    if big and tile and not probe.exact:
        name, img = big[0]
        with torch.inference_mode():
            d = tile_difference(audit_model.restorer, img.unsqueeze(0), tile, overlap)
        log.warning("--tile-approximate: tiles change this model's output (%s); measured on a %dx%d crop of %s: "
                    "largest difference %.1f/255, PSNR %.1f dB against the untiled output", "; ".join(probe.reasons),
                    *d["crop"], name, 255 * d["max_abs"], d["psnr"])
    return tile, overlap, probe


def _set_classify_tile(model, tile) -> None:
    """Apply ``--classify-tile`` (None keeps the checkpoint's own setting).

    Raises:
        ValueError: a negative tile.
    """
    if tile is None:
        return
    if tile < 0:
        raise ValueError(f"--classify-tile must be >= 0 pixels (0 = whole image), got {tile}")
    model.classify_tile.fill_(tile)


def _load_for_inference(path, backend: str, obj=None, device: str = "cpu"):
    """(model, config, audit_model) from a training checkpoint or a deployed artifact, the model on ``device``.

    ``backend="cpu"`` deploys a training checkpoint on the N:M CPU kernel; a deployed artifact is used
    as it is. ``audit_model`` is the dynamic (converted) model of the same architecture: MACs depend on
    the architecture and the routing only, and fvcore cannot trace the compiled kernel. ``obj``: the file's
    content when the caller has read it already (it is not read again).

    Raises:
        ValueError: a device this machine lacks, or a deployed model (CPU kernel) asked to run elsewhere.
    """
    from .checkpoint import load_file
    from .config import TrainConfig, check_device
    from .deploy import deploy, is_deployed_file, load_deployed
    from .models import build_model, load_trained

    obj = load_file(path) if obj is None else obj
    if device != "cpu" and (backend != "dynamic" or is_deployed_file(obj)):
        what = f"{path} is a deployed model" if is_deployed_file(obj) else "--backend cpu deploys the model"
        raise ValueError(f"--device {device}: {what}, which runs on the N:M CPU kernel only; give a training "
                         f"checkpoint with --backend dynamic to run on {device}, or --device cpu")
    check_device(device)
    if is_deployed_file(obj):
        from .sparse_cpu import tune_allocator

        tune_allocator()
        cfg = TrainConfig.model_validate(obj["config"])
        model = load_deployed(path, obj)
        _say_deployed(model)
        return model, cfg, build_model(cfg, arch=obj.get("arch", {})).eval()
    model, cfg, _ = load_trained(path, obj)
    if backend == "dynamic":
        model.to(device)
        return model, cfg, model
    from .sparse_cpu import tune_allocator

    tune_allocator()  # this process only runs inference: keep large blocks for reuse (no page faults)
    deployed = deploy(model, backend)
    _say_deployed(deployed)
    return deployed, cfg, model


def _say_deployed(model) -> None:
    rep = model.deploy_report
    counts = ", ".join(f"{r}: {len(rep.sparse_layers(i))}" for i, r in enumerate(rep.ratios))
    kernel = rep.kernel["isa"] if rep.kernel["available"] else f"unavailable ({rep.kernel['reason']})"
    print(f"backend cpu, pattern {rep.options.get('pattern', 'element')}, kernel {kernel}; layers on a sparse "
          f"kernel per branch: {counts}", file=sys.stderr)


def _calibration(args, cfg, model):
    """int8 calibration inputs: ``--calibration`` (else the run's training folder) degraded at every level."""
    from .deploy.calibration import run_calibration_images

    try:
        return run_calibration_images(cfg, args.calibration, args.calibration_count, model.in_channels)
    except ValueError as err:
        raise ValueError(f"--precision int8 needs calibration images: --calibration FOLDER of clean images ({err})") from None


def cmd_deploy(args) -> int:
    from .deploy import deploy, save_deployed
    from .models import load_trained
    from .outputs import check_output_file, lock_output_file

    lock_output_file(args.out)  # one writer per output (the OS frees it when this process ends), then checks
    out = check_output_file(args.out, [args.checkpoint], args.overwrite)
    model, cfg, ckpt = load_trained(args.checkpoint)
    backend = args.backend.split(",") if "," in args.backend else args.backend
    images = _calibration(args, cfg, model) if args.precision == "int8" else None
    if args.int8_min_sqnr is not None and args.precision != "int8":
        raise ValueError(f"--int8-min-sqnr applies to --precision int8, not {args.precision}")
    dep = deploy(model, backend, precision=args.precision, calibration=images, max_density=args.max_density,
                 max_density_vector=args.max_density_vector, min_out_channels=args.min_out_channels,
                 int8_min_sqnr=args.int8_min_sqnr)
    save_deployed(dep, out, cfg.model_dump(mode="json"), ckpt.get("arch", {}), run=ckpt.get("run"))
    print(dep.deploy_report)
    print(f"deployed model written to {out} (load with dynprune.load, or pass it to restore/eval)")
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .methods import get_method

    overrides = {"out_dir": args.out_dir} if args.out_dir else None
    cfg = load_config(args.config, overrides, args.set)
    method = get_method(cfg.method)
    t0 = time.time()
    method(cfg, resume=args.resume, overwrite=args.overwrite).fit()
    best = Path(cfg.out_dir) / "best.pt"
    print(f"trained ({cfg.method}) in {time.time() - t0:.0f} s; checkpoint {Path(cfg.out_dir) / 'last.pt'}"
          + (f", best validation checkpoint {best}" if best.is_file() else ""))
    return 0


def cmd_search(args) -> int:
    from .config import load_config
    from .methods.sls import run_search

    overrides = {"out_dir": args.out_dir} if args.out_dir else None
    cfg = load_config(args.config, overrides, args.set)
    t0 = time.time()
    plans = run_search(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"searched in {time.time() - t0:.0f} s")
    for plan in plans:
        print(f"  {plan.name}: budget {plan.budget:g}, {100 * plan.macs_fraction:.2f}% of dense MACs -> "
              f"{Path(cfg.out_dir) / (plan.name + '.yaml')}")
    return 0


def cmd_png(args) -> int:
    from .config import load_config
    from .methods.png import run_png

    overrides = {"out_dir": args.out_dir} if args.out_dir else None
    cfg = load_config(args.config, overrides, args.set)
    t0 = time.time()
    model = run_png(cfg, resume=args.resume, overwrite=args.overwrite)
    out = Path(cfg.out_dir)
    print(f"PnG: {len(model.tasks)} tasks ({', '.join(model.task_names)}) in {time.time() - t0:.0f} s; "
          f"model {out / 'png.pt'}" + (f", routed model {out / 'classifier' / 'last.pt'}"
                                       if cfg.stages.classifier.epochs > 0 else ""))
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import load_file
    from .evaluate import evaluate, print_summary, write_report
    from .outputs import check_output_dir
    from .imageio import read_pairs
    from .registry import get_host

    if not args.data and not args.pairs:
        raise ValueError("eval needs --data DIR (clean images, synthetic degradation) and/or --pairs DEGRADED CLEAN")
    check_output_dir(args.out, [args.data, *(args.pairs or [])], marker="report.json", overwrite=args.overwrite)
    ckpt = Path(args.checkpoint)
    obj = load_file(ckpt)
    model, cfg, audit_model = _load_for_inference(ckpt, args.backend, obj, args.device)
    _set_classify_tile(model, args.classify_tile)
    # obj["run"]: where the run's relative inputs were (absent in older files)
    dense, dense_path, dense_missing = _dense_reference(cfg, ckpt, args.dense, obj.get("run"))
    result = None
    if args.data:
        files, imgs = _read_images(args.data, model)
        images = list(zip((f.name for f in files), imgs))[: args.limit or None]
        _check_sizes(audit_model, images, "eval")
        conds = _conditions(cfg, args)
        result = evaluate(model, images, conds, dense=dense, device=args.device, audit_model=audit_model,
                          progress_every=1)
    if args.pairs:
        pairs = read_pairs(args.pairs[0], args.pairs[1])
        model.check_channels([(n, d) for n, d, _ in pairs])
        pairs = pairs[: args.limit or None]
        res = evaluate(model, [(n, c) for n, _, c in pairs], [_pairs_condition(pairs, f"real {Path(args.pairs[0]).parent.name}")],
                       dense=dense, device=args.device, audit_model=audit_model, progress_every=1)
        if result is None:
            result = res
        else:
            result["conditions"].update(res["conditions"])
    result.update(checkpoint=str(ckpt), data=str(args.data), pairs=args.pairs, dense_reference=dense_path, seed=args.seed,
                  **({"dense_missing": dense_missing} if dense_missing else {}))
    published = get_host().entry("models", cfg.model.name).paper
    paper = {k: v for k, v in published.items() if k in result["conditions"] or k == "paper"} or None
    out = write_report(result, args.out, f"{ckpt} on {args.data or args.pairs}", paper)
    print_summary(result)
    print(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'psnr_vs_macs.png'}")
    return 0


def cmd_calibrate(args) -> int:
    from .budget import calibrate_budget
    from .checkpoint import save_atomic
    from .models import load_trained
    from .outputs import check_output_file, lock_output_file

    ckpt_path = Path(args.checkpoint)
    lock_output_file(args.out)
    check_output_file(args.out, [ckpt_path], args.overwrite)
    model, cfg, ckpt = load_trained(ckpt_path)
    _set_classify_tile(model, args.classify_tile)
    files, imgs = _read_images(args.data, model)
    imgs = imgs[: args.limit or None]
    conds = _conditions(cfg, args)

    from .evaluate import degraded_images

    ys = [y for per_cond in degraded_images(imgs, conds).values() for y in per_cond]
    info = calibrate_budget(model, ys, args.budget, fill=args.fill)
    info.update(data=str(args.data), conditions=[c.label for c in conds], seed=args.seed)
    ckpt = dict(ckpt, model=model.state_dict(), routing_budget=info)
    ckpt.pop("optimizer", None)
    save_atomic(ckpt, args.out)
    ratios = [str(r) for r in model.ratios]
    print(f"calibrated on {info['images']} degraded images from {args.data}: penalty {info['penalty']:.4g}")
    for name in ("argmax", "calibrated"):
        print(f"  {name:10s}: {100 * info[name + '_cost']:.2f}% of dense MACs, routing "
              + " / ".join(f"{r}: {n}" for r, n in zip(ratios, info[name + '_routing'])))
    print(f"checkpoint with the calibrated routing: {args.out}")
    return 0


def cmd_restore(args) -> int:
    from .audit import audit
    from .imageio import read_pairs, write_image
    from .metrics import psnr

    from .imageio import list_images
    from .outputs import check_name_collisions, check_output_dir, write_text

    out = check_output_dir(args.out_dir, [args.in_dir, args.clean], marker="routing.csv", overwrite=args.overwrite)
    check_name_collisions(list_images(args.in_dir))
    model, _, audit_model = _load_for_inference(args.checkpoint, args.backend, device=args.device)
    _set_classify_tile(model, args.classify_tile)
    files, imgs = _read_images(args.in_dir, model)
    tile, overlap, probe = _plan_tiles(args, audit_model, list(zip((f.name for f in files), imgs)))
    clean = {}
    if args.clean:
        pairs = read_pairs(args.in_dir, args.clean)
        clean = {name: c for name, _, c in pairs}
    out.mkdir(parents=True, exist_ok=True)
    ratios = [str(r) for r in model.ratios]
    if args.budget is not None:
        from .budget import calibrate_budget

        with torch.inference_mode():
            info = calibrate_budget(model, (im.unsqueeze(0).to(args.device) for im in imgs), args.budget, audit_model,
                                    fill=args.fill)
        print(f"budget {100 * args.budget:g}% of dense MACs over these {len(imgs)} images: penalty {info['penalty']:.4g}, "
              f"{100 * info['argmax_cost']:.1f}% -> {100 * info['calibrated_cost']:.1f}%, routing "
              + " / ".join(f"{r}: {n}" for r, n in zip(ratios, info["calibrated_routing"])))
    before = set(out.rglob("*"))  # an earlier restore's files are replaced; new outputs are created exclusively
    rows = [["image", "branch", "macs", "dense_macs", "macs_fraction", "ms", "psnr_in", "psnr_out"]]

    with torch.inference_mode():
        for path, img in progress(list(zip(files, imgs)), "restore", every=1):
            x = img.unsqueeze(0).to(args.device)
            t0 = time.perf_counter()
            y, branch = model.route(x, tile=tile, overlap=overlap, approximate=args.tile_approximate, probe=probe)
            y = y.cpu()  # waits for the device, so ms is the image's whole time
            ms = 1e3 * (time.perf_counter() - t0)
            b = int(branch[0])
            rep = audit(audit_model, x)  # traced for the first sizes, then predicted (audit's reuse)
            macs = rep.branches[b].effective_macs + rep.classifier_macs
            target = out / (path.stem + ".png")
            write_image(y[0], target, replace=target in before, root=out)
            scores = ["", ""]
            if path.stem in clean:
                ref = clean[path.stem]
                scores = [f"{psnr(img, ref):.2f}", f"{psnr(y[0], ref):.2f}"]
                target = out / "side_by_side" / f"{path.stem}.png"
                write_image(torch.cat([img, y[0].clamp(0, 1), ref], dim=-1), target, replace=target in before, root=out)
            rows.append([path.name, ratios[b], macs, rep.dense_macs, f"{macs / rep.dense_macs:.4f}", f"{ms:.1f}",
                         *scores])
            table = io.StringIO()
            csv.writer(table).writerows(rows)
            write_text(out / "routing.csv", table.getvalue(), root=out)  # rewritten per image: a kill keeps the rows
    print(f"restored {len(files)} images into {out}; routing in {out / 'routing.csv'}"
          + (f"; degraded | restored | clean in {out / 'side_by_side'}" if clean else ""))
    return 0


def cmd_plugins(args) -> int:
    from .registry import KINDS, SINGULAR, get_host

    host = get_host()
    for plugin, dist in sorted(host.distributions.items()):
        print(f"plugin {plugin}: {dist}")
    for plugin, why in sorted(host.failed.items()):
        print(f"plugin {plugin}: FAILED, left out: {why}")
    for kind in KINDS:
        for name in host.names(kind):
            e = host.entry(kind, name)
            print(f"  {SINGULAR[kind]:<11} {name:<20} from {e.plugin} ({e.distribution}) {e.description}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(args.out, quick=args.quick, overwrite=args.overwrite, device=args.device)
    return 1 if result["check"] else 0


def _add_classify_tile(parser) -> None:
    parser.add_argument("--classify-tile", type=int, metavar="T",
                        help="classify the mean of T x T tiles (the classifier's training crop size) instead of the whole "
                             "image; 0 = whole image; default: the checkpoint's setting")


def _add_fill(parser) -> None:
    parser.add_argument("--fill", action="store_true",
                        help="spend the budget: when the classifier's own routing costs less, move its least-sure images "
                             "to denser branches up to the budget")


def _number(what: str, cast, ok, accepted: str):
    """An argparse type: ``cast(text)`` accepted when ``ok(value)``; otherwise "invalid WHAT 'text':
    expected ACCEPTED" (one line, exit 2, before any work)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected {accepted}")
        return value

    parse.__name__ = what
    return parse


_INF = float("inf")
_sigma = _number("sigma", float, lambda v: 0 <= v < _INF, "a finite number >= 0 (0-255 scale)")
_count = _number("count", int, lambda v: v >= 0, "an integer >= 0 (0 = all images)")
_seed = _number("seed", int, lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2**32)")
_fraction = _number("budget", float, lambda v: 0 < v < _INF, "a finite fraction of dense MACs > 0, e.g. 0.58")


def _overwrite(parser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists")


def _add_run(sub, name: str, fn, help_text: str, checkpoint: str, example: str) -> None:
    """A subcommand that runs a YAML config: CONFIG, --resume, --out-dir, --set."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help=f"continue from OUT_DIR/{checkpoint}")
    p.add_argument("--overwrite", action="store_true", help="replace the run files of another run in OUT_DIR")
    p.add_argument("--out-dir", help="override the config's out_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")
    p.set_defaults(fn=fn)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="dynprune", description="Dynamic N:M pruning for image restoration (ClassPruning).")
    p.add_argument("--version", action="version", version=f"dynprune {__version__}")
    _global_options(p, None)
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub, "train", cmd_train, "run the three training stages of a YAML config", "last.pt",
             "stages.base.epochs=2")
    _add_run(sub, "search", cmd_search, "SLS: search N:M ratio plans per layer for the config's search.budgets",
             "search.pt", "search.steps=500")
    _add_run(sub, "png", cmd_png, "PnG: train the config's png.tasks in order by prune-and-grow, one branch each",
             "last.pt", "png.grow.epochs=2")
    e = sub.add_parser("eval", help="PSNR/SSIM/MACs of dense, each branch and routed, on synthetic and real degradations")
    e.add_argument("checkpoint")
    e.add_argument("--data", help="folder of clean images, degraded with the run's degradation at each level")
    e.add_argument("--pairs", nargs=2, metavar=("DEGRADED", "CLEAN"), help="folders of real degraded/clean pairs")
    e.add_argument("--sigma", type=_sigma, nargs="+", help="Gaussian noise levels (0-255 scale) instead of the levels")
    e.add_argument("--out", required=True, help="folder for report.json, report.md, psnr_vs_macs.png")
    e.add_argument("--dense", help="dense reference weights (default: the run's base.pt or the config's weights)")
    e.add_argument("--seed", type=_seed, default=0, help="degradation seed, reset per condition (default 0)")
    e.add_argument("--limit", type=_count, default=0, help="first N images only (0: all)")
    _add_device(e)
    e.add_argument("--backend", choices=["dynamic", "cpu"], default="dynamic",
                   help="cpu: run the deployed model (N:M CPU kernel); dynamic: the converted model as trained")
    _add_classify_tile(e)
    _overwrite(e, "an --out folder holding other files")
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("calibrate", help="route under a mean-MACs budget: fit the routing penalty on calibration images")
    c.add_argument("checkpoint", help="a training checkpoint (last.pt)")
    c.add_argument("--budget", type=_fraction, required=True, help="mean MACs as a fraction of dense, classifier included (e.g. 0.58)")
    c.add_argument("--data", required=True, help="clean calibration images (not the test set), degraded at every level")
    c.add_argument("--sigma", type=_sigma, nargs="+", help="Gaussian noise levels (0-255 scale) instead of the run's levels")
    c.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    c.add_argument("--seed", type=_seed, default=1, help="degradation seed (default 1; eval's default is 0)")
    c.add_argument("--limit", type=_count, default=0, help="first N images only (0: all)")
    _add_classify_tile(c)
    _add_fill(c)
    _overwrite(c, "the --out checkpoint")
    c.set_defaults(fn=cmd_calibrate)
    r = sub.add_parser("restore", help="restore a folder of degraded images; writes images and routing.csv")
    r.add_argument("checkpoint")
    r.add_argument("in_dir")
    r.add_argument("out_dir")
    r.add_argument("--clean", help="folder of matching clean images: adds PSNR and side-by-side pictures")
    _add_device(r)
    r.add_argument("--backend", choices=["dynamic", "cpu"], default="dynamic",
                   help="cpu: run the deployed model (N:M CPU kernel); dynamic: the converted model as trained")
    r.add_argument("--budget", type=_fraction, help="mean MACs over these images as a fraction of dense (e.g. 0.58): "
                   "the routing penalty is solved on their classifier outputs before restoring")
    r.add_argument("--tile", type=int, default=2048, metavar="PX",
                   help="restore images larger than PX on a side in overlapping PX x PX tiles (the branch is chosen on "
                        "the whole image; default 2048, 0 = never tile). Exact for a model whose receptive field is bounded "
                        "(measured); others run whole unless --tile-approximate")
    r.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help="pixels shared by neighbouring tiles on each side (default: the model's receptive-field radius, "
                        "measured; the output then equals the untiled one); a smaller value is refused")
    r.add_argument("--tile-approximate", action="store_true",
                   help="tile a model whose output depends on the whole image or that downsamples (InstanceNorm, "
                        "global pooling, attention, image pyramids): tiles change its output, and a warning states "
                        "by how much; without it such a model runs whole images (refused if they do not fit)")
    _add_classify_tile(r)
    _add_fill(r)
    _overwrite(r, "an OUT_DIR holding files that are not an earlier restore's")
    r.set_defaults(fn=cmd_restore)
    dp_ = sub.add_parser("deploy", help="pack a trained checkpoint for the N:M CPU kernel and save it")
    dp_.add_argument("checkpoint")
    dp_.add_argument("out", help="output file (state_dict + config; loads with weights_only=True)")
    dp_.add_argument("--backend", default="cpu",
                     help="'cpu' (every registered backend, chosen per layer) or backend names, comma-separated "
                          "(vector_cpu, nm_cpu, onednn)")
    dp_.add_argument("--max-density", type=float, default=0.25,
                     help="element-pattern branches denser than N/M run on oneDNN (default 0.25)")
    dp_.add_argument("--max-density-vector", type=float, default=0.75,
                     help="vector-pattern branches denser than N/M run on oneDNN (default 0.75)")
    dp_.add_argument("--min-out-channels", type=int, default=None,
                     help="layers with fewer outputs run on oneDNN (default 16 at fp32, 1 at bf16/int8)")
    dp_.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                     help="bf16: bf16 kernels (AVX-512 BF16); int8: uint8 x int8 kernels (AVX-512 VNNI), calibrated "
                          "per branch (default fp32)")
    dp_.add_argument("--calibration", default=None, metavar="FOLDER",
                     help="int8: clean images, degraded at every level of the run's degradation (default: the "
                          "run's dataset folder)")
    dp_.add_argument("--calibration-count", type=int, default=8, help="int8: images taken from it (default 8)")
    dp_.add_argument("--int8-min-sqnr", type=float, default=None, metavar="DB",
                     help="int8: measure each layer's sensitivity (output SQNR with only it in int8) and keep the "
                          "layers and branches below DB dB in fp32 (the report lists them)")
    _overwrite(dp_, "OUT")
    dp_.set_defaults(fn=cmd_deploy)
    d = sub.add_parser("demo", help="train briefly on scikit-image's photos and print PSNR and MACs saved")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a 4-minute run of a third of the steps (checked with a 1 dB monotone tolerance)")
    _overwrite(d, "a demo run of other settings (e.g. an older dynprune's) in OUT; it trains afresh")
    _add_device(d)
    d.set_defaults(fn=cmd_demo)
    sub.add_parser("plugins", help="list registered plugins and what they provide").set_defaults(fn=cmd_plugins)
    for command in sub.choices.values():  # the global options work after the subcommand too
        _global_options(command, argparse.SUPPRESS)
    return p


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu); a deployed model "
                   "(--backend cpu, or a deployed file) runs on the CPU only")


def _global_options(p: argparse.ArgumentParser, default) -> None:
    """-v, -q and --data-root, on the main parser (``default`` values) and on each subcommand (SUPPRESS, so
    an option given before the subcommand is kept)."""
    p.add_argument("-v", "--verbose", action="count", default=default if default is argparse.SUPPRESS else 0,
                   help="more log lines (-v: debug messages and a traceback with errors)")
    p.add_argument("-q", "--quiet", action="count", default=default if default is argparse.SUPPRESS else 0,
                   help="warnings and errors only")
    p.add_argument("--data-root", metavar="DIR", default=default if default is argparse.SUPPRESS else None,
                   help="the data root that configs name as $DYNPRUNE_DATA (default: that environment variable)")


# What a user's input can raise: one "dynprune CMD: error: ..." line and exit 2 (-v adds the traceback).
_USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError, MemoryError, torch.OutOfMemoryError)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the one at configuration time)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(verbose: int, quiet: int) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("PIL", "matplotlib", "fvcore", "iopath", "torch"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv=None) -> int:
    """Run the ``dynprune`` command line; returns the exit status (2: a user error, one line on stderr)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    if args.data_root:
        import os

        from .config import DATA_VAR

        os.environ[DATA_VAR] = str(Path(args.data_root).resolve())
    try:
        status = args.fn(args)
        from .train.distributed import shutdown

        shutdown()  # a torchrun rank leaves its process group after its last collective
        return status
    except _USER_ERRORS as err:
        if args.verbose:
            raise
        text = " ".join(str(err).split("\n")) if str(err) else type(err).__name__
        print(f"dynprune {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
