"""PnG (dynprune.png): pinned nested orderings, frozen earlier tasks bit for bit, errors."""

import pytest
import torch

from dynprune import convert, export_branch
from dynprune.branch import use_branch
from dynprune.layers import dynamic_layers, pin_from_state, pin_order
from dynprune.nm import nm_order
from dynprune.methods.png import PnG, classpruning_config, load, task_ratios
from dynprune.models import load_trained
from dynprune.outputs import RunLog

from ..conftest import requires_compile
from ..conftest import tiny_config

STAGE = {"epochs": 1, "steps_per_epoch": 4, "batch_size": 4, "lr_start": 1e-3, "lr_end": 1e-4}


def png_config(out_dir, shares=(1, 1, 2), sigmas=(15, 25, 50), **over):
    tasks = [{"name": f"sigma{s}", "share": k, "degradation": {"name": "gaussian_noise", "kwargs": {"sigmas": [s]}}}
             for s, k in zip(sigmas, shares)]
    png = {"tasks": tasks, "m": 4, "grow": STAGE, "finetune": STAGE, **over.pop("png", {})}
    off = {"epochs": 0}
    return tiny_config(out_dir, png=png, stages={"base": off, "classifier": off, "restoration": off, "joint": off},
                       degradation={"name": "gaussian_noise", "kwargs": {"sigmas": list(sigmas)}}, **over)


def outputs(restorer, x, branch):
    with torch.no_grad(), use_branch(branch):
        return restorer.eval()(x)


# ---- pinned orderings (dynprune.layers) --------------------------------------------------------
@pytest.fixture
def tiny_cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1))


def test_pinned_order_masks_by_rank_not_magnitude(tiny_cnn):
    model = convert(tiny_cnn, ["1:4", "2:4", "4:4"])
    name, layer = next(dynamic_layers(model))
    w = layer.dense_weight.detach().contiguous()
    rank = nm_order(w, 1, 4)
    reversed_rank = (3 - rank.long()).to(rank.dtype)  # keep the smallest magnitudes instead
    pin_order(layer, reversed_rank)
    with use_branch("1:4"):
        got = layer.weight
    smallest = w.abs() == w.abs().reshape(w.shape[0], -1, 4, *w.shape[2:]).amin(2).repeat_interleave(4, 1)
    assert torch.equal(got != 0, smallest & (w != 0))
    with torch.no_grad():  # no weight change moves a pinned mask
        layer.dense_weight.mul_(torch.rand_like(w) * 10)
    with use_branch("1:4"):
        assert torch.equal(layer.weight != 0, smallest & (w != 0))
    state = model.state_dict()
    assert torch.equal(state[f"{name}.nm_rank"], reversed_rank)


def test_pin_order_rejects_a_rank_that_is_not_a_permutation(tiny_cnn):
    layer = next(dynamic_layers(convert(tiny_cnn, ["2:4", "4:4"])))[1]
    rank = nm_order(layer.dense_weight.detach().contiguous(), 1, 4).clone()
    rank[0, 0, 0, 0] = rank[0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"not a permutation of 0\.\.3"):
        pin_order(layer, rank)
    with pytest.raises(ValueError, match="does not fit"):
        pin_order(layer, rank[:1])


def _reversed_pins(model):
    for _, layer in dynamic_layers(model):
        rank = nm_order(layer.dense_weight.detach().narrow(1, 0, layer.nm_span).contiguous(), 1, 4)
        pin_order(layer, (3 - rank.long()).to(rank.dtype))
    return model


def test_pinned_masks_reach_export_branch_and_state_dict_loads(tiny_cnn):
    net = _reversed_pins(convert(tiny_cnn, ["1:4", "2:4", "4:4"])).eval()
    x = torch.rand(2, 4, 9, 9)
    fresh = convert(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 4, 3, padding=1)), ["1:4", "2:4", "4:4"]).eval()
    assert pin_from_state(fresh, net.state_dict()) == 2
    fresh.load_state_dict(net.state_dict())
    for b in range(3):
        with torch.no_grad(), use_branch(b):
            ref = net(x)
            assert torch.equal(fresh(x), ref)
        assert torch.equal(export_branch(net, b)(x), ref)
    with torch.no_grad(), use_branch(0):
        unpinned = convert(tiny_cnn, ["1:4", "2:4", "4:4"]).eval()
        assert not torch.allclose(unpinned(x), net(x))  # the pins changed what 1:4 keeps


@requires_compile
def test_pinned_masks_under_compile(tiny_cnn):
    net = _reversed_pins(convert(tiny_cnn, ["1:4", "2:4", "4:4"])).eval()
    x = torch.rand(2, 4, 9, 9)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad(), use_branch(0):
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)


# ---- the PnG run ------------------------------------------------------------------------------
def test_ratios_are_cumulative_shares(tmp_path):
    assert task_ratios(png_config(tmp_path, shares=(1, 1, 2))) == ["1:4", "2:4", "4:4"]
    assert task_ratios(png_config(tmp_path, shares=(2, 1), sigmas=(15, 50))) == ["2:4", "3:4"]


@pytest.fixture(scope="module")
def png_run(tmp_path_factory):
    """A tiny three-task PnG run whose shares leave one weight in 4 to no task (a training-only growth
    branch), with the restorer's task-1 outputs recorded after task 1 and the model after task 3."""
    out = tmp_path_factory.mktemp("png")
    cfg = png_config(out, shares=(1, 1, 1))
    run = PnG(cfg)
    x = torch.rand(2, 1, 20, 20)
    run.run.fit(run, until=2)  # task 1: grow, prune, fine-tune
    after_task1 = outputs(run.restorer, x, 0).clone()
    model = run.fit()
    return cfg, run, model, x, after_task1


def test_earlier_tasks_are_bit_for_bit_unaffected(png_run):
    cfg, run, model, x, after_task1 = png_run
    assert model.trained == 3 and all(len(layer.nm_ratios) == 3 for _, layer in dynamic_layers(model.restorer))
    assert torch.equal(model(x, 0), after_task1)          # the final model (growth branch dropped)
    assert torch.equal(outputs(run.restorer, x, 0), after_task1)
    assert not torch.equal(model(x, 1), model(x, 0))


def test_tasks_own_disjoint_nested_weights(png_run):
    _, run, model, _, _ = png_run
    for _, layer in dynamic_layers(model.restorer):
        counts = [layer.branch_mask(i).sum().item() for i in range(3)]
        groups = layer.dense_weight.numel() // 4
        assert counts == [groups, 2 * groups, 3 * groups]
        assert torch.all(layer.branch_mask(0) <= layer.branch_mask(1))
        assert int((layer.dense_weight != 0).sum()) <= 3 * groups  # the weights no task owns are zero


def test_result_is_a_classpruning_checkpoint_and_loads(png_run):
    cfg, _, model, x, after_task1 = png_run
    cp, cp_cfg, ckpt = load_trained(cfg.out_dir + "/png.pt")
    assert cp_cfg.convert.ratios == ["1:4", "2:4", "3:4"] and ckpt["png"]["trained"] == 3
    assert torch.equal(outputs(cp.restorer, x, 0), after_task1)
    again = load(cfg.out_dir + "/png.pt")
    assert torch.equal(again(x, "sigma15"), after_task1) and torch.equal(again(x, 2), model(x, 2))


def test_branch_beyond_trained_tasks_is_refused(png_run):
    cfg, run, _, x, _ = png_run
    with pytest.raises(IndexError, match=r"task index 3 is beyond the 3 trained task\(s\)"):
        load(cfg.out_dir + "/png.pt")(x, 3)
    partial = load(cfg.out_dir + "/last.pt")
    assert partial.trained == 3
    partial.trained = 1
    with pytest.raises(IndexError, match=r"beyond the 1 trained task\(s\) \['sigma15'\]; \['sigma25', 'sigma50'\] not"):
        partial(x, 1)
    with pytest.raises(ValueError, match="'sigma50' is not trained yet"):
        partial(x, "sigma50")


def test_resume_with_another_task_order_is_refused(png_run):
    cfg, *_ = png_run
    data = cfg.model_dump(mode="json")
    data["png"]["tasks"] = data["png"]["tasks"][::-1]
    swapped = type(cfg).model_validate(data)
    with pytest.raises(ValueError, match=r"task order is \['sigma15', 'sigma25', 'sigma50'\], this config's is "
                                         r"\['sigma50', 'sigma25', 'sigma15'\]"):
        PnG(swapped, resume=True)


def test_shares_beyond_the_group_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"shares \[2, 2, 1\] add up to 5, more than the m=4"):
        png_config(tmp_path, shares=(2, 2, 1))


def test_task_data_that_does_not_fit_is_refused(tmp_path):
    bad = {"name": "rgb", "share": 1, "dataset": {"name": "skimage_photos", "kwargs": {"names": ["astronaut"],
                                                                                         "channels": 3, "patch_size": 16}}}
    cfg = png_config(tmp_path, shares=(1,), sigmas=(15,))
    data = cfg.model_dump(mode="json")
    data["png"]["tasks"].append(bad)
    with pytest.raises(ValueError, match=r"png task 'rgb'.*cannot take this task's data \(\(1, 3, 16, 16\)"):
        PnG(type(cfg).model_validate(data))


def test_classpruning_config_keeps_heads_dense_and_restorer_frozen(tmp_path):
    cfg = png_config(tmp_path)
    data = cfg.model_dump(mode="json")
    data["png"]["tasks"][0]["head"] = "dncnn.0"
    cp = classpruning_config(type(cfg).model_validate(data))
    assert cp.convert.ratios == ["1:4", "2:4", "4:4"] and "dncnn.0.*" in cp.convert.exclude
    assert cp.stages.restoration.epochs == cp.stages.joint.epochs == 0 and cp.convert.mask_grad == "masked"


def sr_config(out_dir, tasks, **over):
    off = {"epochs": 0}
    return tiny_config(out_dir, model={"name": "carn_m", "kwargs": {"multi_scale": True, "width": 8}},
                       dataset={"name": "skimage_photos", "kwargs": {"names": ["astronaut", "chelsea"], "channels": 3,
                                                                     "patch_size": 24, "patches_per_image": 4}},
                       degradation={"name": "bicubic", "kwargs": {"scale": 2}},
                       png={"tasks": tasks, "m": 4, "grow": STAGE, "finetune": STAGE},
                       stages={"base": off, "classifier": off, "restoration": off, "joint": off}, **over)


def sr_task(scale, share, data_scale=None):
    return {"name": f"x{scale}", "share": share, "forward": {"scale": scale}, "head": f"upsample.up{scale}",
            "degradation": {"name": "bicubic", "kwargs": {"scale": data_scale or scale}}}


def test_sr_scales_with_heads_leave_earlier_scales_unchanged(tmp_path):
    run = PnG(sr_config(tmp_path, [sr_task(2, 2), sr_task(3, 2)]))
    x = torch.rand(1, 3, 12, 12)
    run.run.fit(run, until=2)  # task 1: grow, prune, fine-tune
    with torch.no_grad(), use_branch(0):
        x2 = run.restorer.eval()(x, scale=2)
        head3 = {k: v.clone() for k, v in run.restorer.upsample.up3.state_dict().items()}
    model = run.fit()
    assert torch.equal(model(x, "x2"), x2) and model(x, "x3").shape == (1, 3, 36, 36)
    assert any(not torch.equal(v, head3[k]) for k, v in model.restorer.upsample.up3.state_dict().items())
    assert all(not hasattr(m, "nm_ratios") for m in model.restorer.upsample.modules())  # heads stay dense


def test_sr_task_whose_scale_does_not_fit_its_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"png task 'x2' \(forward \{'scale': 2\}, head 'upsample.up2'\): the model "
                                         r"maps the degraded input \(1, 3, 8, 8\) to \(1, 3, 16, 16\), but the clean "
                                         r"target is \(1, 3, 24, 24\)"):
        PnG(sr_config(tmp_path, [sr_task(2, 2, data_scale=3)]))


def test_cli_runs_png_and_routes_with_the_classifier(tmp_path, capsys):
    import yaml

    from dynprune.cli import main

    cfg = png_config(tmp_path / "run", shares=(1, 3), sigmas=(15, 50))
    data = cfg.model_dump(mode="json")
    data["stages"]["classifier"] = STAGE
    path = tmp_path / "png.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["png", str(path)]) == 0
    assert "PnG: 2 tasks (sigma15, sigma50)" in capsys.readouterr().out
    routed, rcfg, _ = load_trained(tmp_path / "run/classifier/last.pt")
    png = load(tmp_path / "run/png.pt")
    x = torch.rand(3, 1, 20, 20)
    with torch.no_grad():
        out, branches = routed.eval().route(x)
        for i in range(3):  # each image restored by the PnG branch the classifier picked
            torch.testing.assert_close(out[i], png(x[i:i + 1], int(branches[i]))[0], rtol=0, atol=1e-6)
    data["png"]["tasks"][0]["share"] = 4
    path.write_text(yaml.safe_dump(data))
    assert main(["png", str(path), "--resume"]) == 2
    assert "add up to 7, more than the m=4" in capsys.readouterr().err


# ---- distillation from each task's separate model -----------------------------------------------
def test_each_task_learns_from_its_own_teacher(tmp_path):
    import copy
    import json

    from ..conftest import teacher_files

    cfg = png_config(tmp_path, distill={"weight": 1.0, "teachers": teacher_files(tmp_path / "t", 3)})
    run = PnG(cfg)
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        outs = [t(x) for t in run.teachers]
    assert len(run.teachers) == 3 and not torch.allclose(outs[0], outs[1], atol=1e-3)
    student = copy.deepcopy(run.restorer).train()
    clean, degraded, _ = run.phases()[0].batches[0]  # task 1's first grow batch
    with torch.no_grad(), use_branch(run.grow_branch):
        pred = student(degraded)
        want = (pred - run.teachers[0](degraded)).abs().flatten(1).mean(1).mean().item()   # weight 1: teacher only
        clean_only = (pred - clean).abs().mean().item()
    run.fit()
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert first["task"] == "sigma15" and first["step"] == 0
    assert first["loss"] == pytest.approx(want, rel=1e-5) and abs(want - clean_only) > 1e-3
    assert load_trained(tmp_path / "png.pt")[1].distill.weight == 0   # the result carries no teacher


def test_teachers_that_do_not_fit_the_tasks_are_refused(tmp_path):
    from dynprune.registry import PluginHost, reset_host

    from ..conftest import teacher_files
    from .test_classpruning import _HalfPlugin

    with pytest.raises(ValueError, match=r"distill.teachers has 2 entries; a PnG run with distill.weight 0.5 needs one "
                                         r"teacher, or one per task \(3: \['sigma15', 'sigma25', 'sigma50'\]\)"):
        PnG(png_config(tmp_path, distill={"weight": 0.5, "teachers": teacher_files(tmp_path / "t", 2)}))
    reset_host(PluginHost(plugins={"half": _HalfPlugin()}))
    try:
        half = {"weight": 0.5, "teachers": [{"name": "half", "weights": "unused"}]}
        with pytest.raises(ValueError, match=r"png task 'sigma15' \(forward \{\}\): its distillation teacher 0 maps the "
                                             r"degraded input \(1, 1, 16, 16\) to \(1, 1, 8, 8\), but the clean target"):
            PnG(png_config(tmp_path / "h", distill=half))
    finally:
        reset_host()


def test_one_multi_scale_teacher_serves_every_scale(tmp_path):
    from dynprune.registry import create_model

    torch.manual_seed(3)
    path = tmp_path / "teacher.pt"
    torch.save(create_model("carn_m", multi_scale=True, width=8).state_dict(), path)
    teacher = {"name": "carn_m", "weights": str(path), "kwargs": {"multi_scale": True, "width": 8}}
    run = PnG(sr_config(tmp_path / "run", [sr_task(2, 2), sr_task(3, 2)], distill={"weight": 0.5, "teachers": [teacher]}))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert run.teachers[0] is run.teachers[1]
        assert run.teachers[0](x, scale=2).shape == (1, 3, 16, 16) and run.teachers[1](x, scale=3).shape == (1, 3, 24, 24)


def test_tasks_can_train_on_real_pairs(tmp_path):
    """Each task's data a paired_folder of its own noise level: grown, pruned and fine-tuned on the pairs."""
    from ..conftest import noisy_pairs

    tasks = []
    for sigma in (15, 50):
        deg, cln = noisy_pairs(tmp_path / f"s{sigma}", sigma)
        tasks.append({"name": f"real{sigma}", "share": 2, "dataset": {"name": "paired_folder", "kwargs": {
            "degraded": deg, "clean": cln, "patch_size": 16, "patches_per_image": 4}}})
    cfg = png_config(tmp_path / "run", png={"tasks": tasks})
    model = PnG(cfg).fit()
    assert model.task_names == ["real15", "real50"] and model.trained == 2
    deg, cln = noisy_pairs(tmp_path / "s15", 15)
    from dynprune.imageio import read_image

    x, y = read_image(f"{deg}/0.png").unsqueeze(0), read_image(f"{cln}/0.png").unsqueeze(0)
    with torch.no_grad():
        assert model(x, "real15").shape == y.shape


def test_validation_reports_each_task_so_far(tmp_path):
    import json

    from dynprune.methods.png import load as load_png

    cfg = png_config(tmp_path, shares=(1, 1, 2), validation={"every": 2, "fraction": 0.5, "crop": 16,
                                                             "metric": "psnr_sigma50"})
    PnG(cfg).fit()
    rows = [r for r in RunLog(tmp_path / "log.jsonl").rows() if "validation" in r]
    assert [(r["task"], r["phase"], r["step"]) for r in rows] == [
        (t, p, s) for t in ("sigma15", "sigma25", "sigma50") for p in ("grow", "finetune") for s in (1, 3)]
    assert [sorted(r["validation"]) for r in rows[::4]] == [
        ["psnr_mean", "psnr_sigma15"], ["psnr_mean", "psnr_sigma15", "psnr_sigma25"],
        ["psnr_mean", "psnr_sigma15", "psnr_sigma25", "psnr_sigma50"]]
    # task 1 is frozen after its fine-tune: its PSNR no longer moves
    assert len({r["validation"]["psnr_sigma15"] for r in rows[4:]}) == 1
    held = json.loads((tmp_path / "validation.json").read_text())["tasks"]
    assert set(held) == {"sigma15", "sigma25", "sigma50"} and len(set(map(tuple, held.values()))) == 1
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["task"] == 2 and best["best"]["metric"] == "psnr_sigma50"  # computed from task 3 on
    assert load_png(tmp_path / "best.pt").task_names == ["sigma15", "sigma25", "sigma50"]
