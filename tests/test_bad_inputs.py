"""The hostile tester's report (issue 13), one test per case: each asserts the refusal and its message, or
the correct reading. ``benchmarks/hostile_cases.py`` re-runs this module and prints tried / good."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dynprune
from dynprune.checkpoint import load_file, save_atomic
from dynprune.cli import main
from dynprune.config import load_config, shipped_configs
from dynprune.imageio import read_image
from dynprune.registry import create

from dynprune.methods.classpruning import Trainer

from .conftest import tiny_config


def refused(argv, capsys, command: str) -> str:
    """Run the CLI; it must exit 2 with one ``dynprune CMD: error:`` line and no traceback. Returns the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"dynprune {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_config(path, **over) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_config(path.parent / "run", **over).model_dump(mode="json")))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny training run: (config path, run folder)."""
    root = tmp_path_factory.mktemp("run")
    cfg = write_config(root / "cfg.yaml")
    assert main(["train", cfg]) == 0
    return cfg, root / "run"


@pytest.fixture
def noisy(trained, tmp_path):
    """A folder of two noisy gray images (copies of the session run's clean ones)."""
    folder = tmp_path / "in"
    shutil.copytree(trained / "clean", folder)
    return folder


# ---- nothing a user owns is overwritten -------------------------------------------------------------
def test_restore_refuses_to_write_into_its_input_folder(trained, noisy, capsys):
    before = {p.name: p.read_bytes() for p in noisy.iterdir()}
    line = refused(["restore", str(trained / "run/last.pt"), str(noisy), str(noisy)], capsys, "restore")
    assert "is an input folder" in line
    assert {p.name: p.read_bytes() for p in noisy.iterdir()} == before


def test_restore_refuses_inputs_whose_outputs_collide(trained, noisy, tmp_path, capsys):
    Image.open(noisy / "camera.png").save(noisy / "camera.jpg")
    line = refused(["restore", str(trained / "run/last.pt"), str(noisy), str(tmp_path / "out")], capsys, "restore")
    assert "camera.jpg and camera.png -> camera.png" in line
    assert not (tmp_path / "out").exists()


def test_restore_refuses_a_folder_of_other_files_unless_asked(trained, noisy, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = refused(["restore", str(trained / "run/last.pt"), str(noisy), str(out)], capsys, "restore")
    assert "already holds files that are not dynprune's output" in line
    assert main(["restore", str(trained / "run/last.pt"), str(noisy), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "camera.png").is_file()
    assert main(["restore", str(trained / "run/last.pt"), str(noisy), str(out)]) == 0  # its own earlier output


def test_train_into_a_finished_run_needs_resume_or_overwrite(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    assert main(["train", cfg]) == 0
    last = (tmp_path / "run/last.pt").read_bytes()
    log = (tmp_path / "run/log.jsonl").read_text()
    line = refused(["train", cfg], capsys, "train")
    assert "already holds a run (base.pt, config.resolved.yaml, last.pt, log.jsonl): pass --resume" in line
    assert (tmp_path / "run/last.pt").read_bytes() == last and (tmp_path / "run/log.jsonl").read_text() == log
    assert main(["train", cfg, "--overwrite"]) == 0
    assert (tmp_path / "run/log.jsonl").read_text().count('"stage": "base", "step": 0') == 1  # not mixed


@pytest.mark.parametrize("change,named", [
    ("seed=2", "seed: 1 -> 2"),
    ("stages.restoration.lr_start=0.5", "stages.restoration.lr_start: 0.001 -> 0.5"),
    ("stages.joint.steps_per_epoch=9", "stages.joint.steps_per_epoch: 5 -> 9"),
])
def test_resume_refuses_a_changed_config(finished_run, change, named, capsys):
    cfg, run = finished_run
    line = refused(["train", cfg, "--resume", "--set", change], capsys, "train")
    assert named in line and "belongs to another run" in line
    assert torch.load(run / "last.pt", weights_only=True)["config"]["seed"] == 1  # stored config untouched


def test_resume_says_so_in_the_log(finished_run, capsys):
    cfg, run = finished_run
    assert main(["train", cfg, "--resume", "--set", "checkpoint_every=7"]) == 0  # a documented safe change
    assert f"resumed from {run / 'last.pt'}" in capsys.readouterr().err


def test_demo_keys_its_run_folder_on_its_settings(tmp_path, monkeypatch):
    import dynprune.methods.classpruning

    seen = []

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self, cfg, resume=False, overwrite=False):
            seen.append((cfg.out_dir, cfg.stages.base.steps_per_epoch))
            raise Stop

    monkeypatch.setattr(dynprune.methods.classpruning, "Trainer", Recorder)
    from dynprune.demo import run_demo

    for quick in (True, False):
        with pytest.raises(Stop):
            run_demo(str(tmp_path), quick=quick)
    assert seen == [(str(tmp_path / "quick"), 300), (str(tmp_path / "full"), 900)]


# ---- inputs validated at the door -------------------------------------------------------------------
def test_palette_png_gives_colours_not_indices(tmp_path):
    rgb = Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    got = read_image(tmp_path / "p.png")
    want = torch.from_numpy(np.asarray(pal.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    assert got.shape == (3, 24, 32) and torch.equal(got, want)


@pytest.mark.parametrize("array,suffix,scale", [
    (np.array([[0, 65535], [32768, 1]], dtype=np.uint16), ".png", 65535.0),
    (np.array([[0, 2 ** 31 - 1], [2 ** 30, 7]], dtype=np.int32), ".tif", 2.0 ** 31 - 1),
    (np.array([[0.0, 1.0], [0.25, 0.5]], dtype=np.float32), ".tif", 1.0),
])
def test_high_bit_depth_images_are_scaled_by_their_range(tmp_path, array, suffix, scale):
    Image.fromarray(array).save(tmp_path / f"x{suffix}")
    got = read_image(tmp_path / f"x{suffix}")[0].double()
    assert torch.allclose(got, torch.from_numpy(array.astype(np.float64) / scale), atol=1e-7)
    assert 0 <= got.min() and got.max() <= 1


@pytest.mark.parametrize("array,message", [
    (np.array([[0.0, np.nan], [0.5, 1.0]], dtype=np.float32), "holds 1 non-finite pixels"),
    (np.array([[0.0, np.inf], [0.5, 1.0]], dtype=np.float32), "holds 1 non-finite pixels"),
    (np.array([[0.0, 255.0], [0.5, 1.0]], dtype=np.float32), "values in [0, 255]: accepted are float images in [0, 1]"),
    (np.array([[-5, 3], [1, 2]], dtype=np.int32), "has negative pixels (min -5)"),
])
def test_bad_pixels_are_rejected_with_the_file_named(tmp_path, array, message):
    Image.fromarray(array).save(tmp_path / "bad.tif")
    with pytest.raises(ValueError, match="bad.tif") as err:
        read_image(tmp_path / "bad.tif")
    assert message in str(err.value)


def test_nonfinite_noise_levels_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        create("degradations", "gaussian_noise", sigmas=[15, float("nan")])
    with pytest.raises(ValueError, match="finite"):
        create("degradations", "gaussian_noise", sigmas=None, sigma_range=[0, float("inf")])


def test_report_json_is_strict_json(trained, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", str(trained / "run/last.pt"), "--data", str(trained / "clean"), "--sigma", "0",
                 "--out", str(out)]) == 0
    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")
    rep = json.loads((out / "report.json").read_text(), parse_constant=no_constants)
    assert rep["conditions"]["sigma=0"]["models"]["degraded input"]["psnr"] is None  # identical images: inf dB


def test_checkpoint_with_nan_weights_is_refused(trained, noisy, tmp_path, capsys):
    ckpt = load_file(trained / "run/last.pt")
    ckpt["model"]["restorer.dncnn.0.weight"][0, 0, 0, 0] = float("nan")
    save_atomic(ckpt, tmp_path / "nan.pt")  # as a diverged run writes it: a valid digest over NaN weights
    line = refused(["restore", str(tmp_path / "nan.pt"), str(noisy), str(tmp_path / "out")], capsys, "restore")
    assert "non-finite weights (NaN/Inf) in restorer.dncnn.0.weight (1 of 72)" in line
    assert not (tmp_path / "out").exists()


def test_noise_levels_must_match_the_branches(tmp_path):
    cfg = tiny_config(tmp_path, degradation={"name": "gaussian_noise", "kwargs": {"sigmas": [15, 25]}})
    with pytest.raises(ValueError, match="has 2 levels but the model has 3 branches"):
        Trainer(cfg)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("argv,message", [
    (["eval", "x.pt", "--data", "d", "--out", "o", "--sigma", "nan"], "invalid sigma 'nan'"),
    (["eval", "x.pt", "--data", "d", "--out", "o", "--limit", "-1"], "invalid count '-1'"),
    (["eval", "x.pt", "--data", "d", "--out", "o", "--seed", "1e20"], "invalid seed '1e20'"),
    (["eval", "x.pt", "--data", "d", "--out", "o", "--seed", "-3"], "invalid seed '-3'"),
    (["restore", "x.pt", "i", "o", "--budget", "inf"], "invalid budget 'inf'"),
])
def test_bad_numbers_on_the_command_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unquoted_yaml_ratios(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("convert: {ratios: [1:4, 2:4, 4:4]}\n")  # YAML 1.1 reads 1:4 as the base-60 number 64
    assert load_config(path).convert.ratios == ["1:4", "2:4", "4:4"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_convert_validates_srste_decay(value):
    with pytest.raises(ValueError, match="srste_decay"):
        dynprune.convert(torch.nn.Conv2d(8, 8, 3), ["2:4", "4:4"], srste_decay=value)


# ---- plugins fail alone -----------------------------------------------------------------------------
GOOD = """
from dynprune import hookimpl

@hookimpl
def dynprune_register_losses(register):
    register("good_l1", lambda: None, "a working third-party loss")
"""


@pytest.mark.parametrize("source,why", [
    ("raise RuntimeError('boom at import')", "RuntimeError: boom at import"),
    ("import no_such_module_xyz", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("from dynprune import hookimpl\n@hookimpl\ndef dynprune_register_model(register):\n    pass\n",
     "unknown hook(s) ['dynprune_register_model']"),
    ("from dynprune import hookimpl\n@hookimpl\ndef dynprune_register_models(register):\n"
     "    register('dncnn', lambda: None)\n",
     "duplicate model name 'dncnn': registered by plugin 'dncnn' (dynprune"),
])
def test_a_broken_plugin_fails_alone(third_party, source, why, caplog, capsys):
    host = third_party({"broken": "broken_mod", "good": "good_mod"}, {"broken_mod": source, "good_mod": GOOD})
    assert "broken" in host.failed and why in host.failed["broken"]
    assert "bad-plugins 1.0" in host.failed["broken"]
    assert "good_l1" in host.names("losses") and "dncnn" in host.names("models") and "l1" in host.names("losses")
    assert sum("broken" in r.message and "left out" in r.message for r in caplog.records) == 1  # reported once
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "plugin broken: FAILED, left out: broken (bad-plugins 1.0)" in out and "good_l1" in out


def test_an_entry_point_named_like_a_builtin_cannot_displace_it(third_party):
    host = third_party({"losses": "fake_losses"}, {"fake_losses": GOOD})
    assert host.entry("losses", "l1").distribution.startswith("dynprune ")
    assert "good_l1" not in host.names("losses")
    assert "entry-point name 'losses' is that of the plugin from dynprune" in host.failed["losses"]


# ---- any image size ---------------------------------------------------------------------------------
def test_tiled_inference_equals_untiled():
    from dynprune.tiling import tiled

    net = create("models", "dncnn", depth=6, width=8).eval()  # receptive-field radius 6
    sr = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1),
                             torch.nn.PixelShuffle(2)).eval()  # radius 2, x2
    x = torch.rand(2, 1, 150, 173)
    with torch.no_grad():
        for model in (net, sr):
            full = model(x)
            for tile, overlap in ((64, 8), (40, 6), (100, 16)):
                out = tiled(model, x, tile, overlap)
                assert out.shape == full.shape and (out - full).abs().max() < 1e-5
        too_small = tiled(net, x, 64, 2)  # overlap below the radius: seams show
        assert (too_small - net(x)).abs().max() > 1e-4


def test_routed_tiles_equal_the_whole_image(trained):
    model = dynprune.load(trained / "run/last.pt")
    x = torch.rand(1, 1, 90, 130)
    with torch.no_grad():
        full, b0 = model.route(x)
        tiles, b1 = model.route(x, tile=48, overlap=8)  # tiny DnCNN: depth 4, radius 4
    assert torch.equal(b0, b1) and (tiles - full).abs().max() < 1e-5


def test_an_image_that_cannot_fit_is_refused_before_running(trained, noisy, tmp_path, capsys, monkeypatch):
    import dynprune.tiling

    monkeypatch.setattr(dynprune.tiling, "available_bytes", lambda: 10_000)
    line = refused(["restore", str(trained / "run/last.pt"), str(noisy), str(tmp_path / "o"), "--tile", "0"],
                   capsys, "restore")
    assert "restore of camera.png (48x64 px) needs about" in line and "use tiling (--tile 1024)" in line


# ---- one error line, before any long work -----------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"PK", b"checkpoints\n"])
def test_unreadable_checkpoint_files(content, noisy, tmp_path, capsys):
    (tmp_path / "c.pt").write_bytes(content)
    line = refused(["restore", str(tmp_path / "c.pt"), str(noisy), str(tmp_path / "o")], capsys, "restore")
    assert f"cannot read checkpoint {str(tmp_path / 'c.pt')!r} ({len(content)} bytes): truncated, corrupt" in line


def test_a_folder_given_as_checkpoint(trained, noisy, tmp_path, capsys):
    line = refused(["restore", str(trained / "run"), str(noisy), str(tmp_path / "o")], capsys, "restore")
    assert "is a folder; give the checkpoint file (e.g. its last.pt)" in line


@pytest.mark.parametrize("device,message", [("banana", "device 'banana' is not one of 'cpu', 'cuda'"),
                                            ("cuda:7", "device 'cuda:7' is not available here")])
def test_bad_devices(device, message, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    assert message in refused(["train", cfg, "--set", f"device={device}"], capsys, "train")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["restore", "{ckpt}", "{noisy}", "{out}"],
                                  ["eval", "{ckpt}", "--data", "{noisy}", "--out", "{out}"],
                                  ["demo", "--out", "{out}"]])
def test_inference_and_demo_devices_are_checked_first(argv, trained, noisy, tmp_path, capsys):
    """--device on restore, eval and demo: a device this machine lacks is refused before any work, and a
    deployed model (the N:M CPU kernel) cannot be sent to a GPU."""
    fill = dict(ckpt=str(trained / "run/last.pt"), noisy=str(noisy), out=str(tmp_path / "o"))
    argv = [a.format(**fill) for a in argv]
    line = refused([*argv, "--device", "cuda:7"], capsys, argv[0])
    assert "device 'cuda:7' is not available here" in line
    assert not (tmp_path / "o" / "full").exists()
    if argv[0] != "demo":
        line = refused([*argv, "--device", "cuda", "--backend", "cpu"], capsys, argv[0])
        assert "--backend cpu deploys the model, which runs on the N:M CPU kernel only" in line


def test_eval_output_that_is_a_file_is_refused_first(trained, tmp_path, capsys):
    (tmp_path / "report").write_text("")
    line = refused(["eval", str(trained / "run/last.pt"), "--data", str(trained / "clean"), "--out",
                    str(tmp_path / "report")], capsys, "eval")
    assert "is a file, not a folder" in line


@pytest.mark.parametrize("change,message", [("seed=1e20", "seed"), ("stages.base.lr_start=.inf", "finite number"),
                                            ("convert.srste_decay=.nan", "finite number")])
def test_config_numbers_out_of_range(change, message, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    line = refused(["train", cfg, "--set", change], capsys, "train")
    assert message in line and "last.pt" not in line


def test_checkpoint_of_another_architecture_names_the_keys(trained, noisy, tmp_path, capsys):
    ckpt = load_file(trained / "run/last.pt")
    ckpt["arch"] = {"depth": 5, "width": 8}
    save_atomic(ckpt, tmp_path / "other.pt")
    line = refused(["restore", str(tmp_path / "other.pt"), str(noisy), str(tmp_path / "o")], capsys, "restore")
    assert "does not fit ClassPruning: missing keys ['restorer.dncnn.9.weight'" in line
    assert "shape mismatches ['restorer.dncnn.8.weight (1, 8, 3, 3) vs (8, 8, 3, 3)'" in line


# ---- readable and installable -----------------------------------------------------------------------
def test_progress_off_a_terminal_is_periodic_lines(monkeypatch, caplog):
    from dynprune.progress import progress

    monkeypatch.setenv("DYNPRUNE_LOG_EVERY", "4")
    caplog.set_level("INFO", logger="dynprune.progress")
    bar = progress(range(10), "stage 1 (base)")  # pytest's stderr is not a terminal
    for _ in bar:
        bar.set_postfix(loss="0.5")
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(" ")[3] for ln in lines] == ["4/10", "8/10", "10/10"] and all("loss=0.5" in ln for ln in lines)
    monkeypatch.setenv("DYNPRUNE_LOG_EVERY", "0")
    with pytest.raises(ValueError, match="DYNPRUNE_LOG_EVERY='0'"):
        progress(range(3), "x")


def test_config_paths_are_read_from_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "project" / "configs"
    (sub / "imgs").mkdir(parents=True)
    (sub / "cfg.yaml").write_text("model: {name: dncnn, weights: w/net.pth}\n"
                                  "dataset: {name: image_folder, kwargs: {root: imgs}}\nout_dir: runs/x\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(sub / "cfg.yaml", sets=["init_from=mine.pt"])
    assert cfg.dataset.kwargs["root"] == "project/configs/imgs" and cfg.model.weights == "project/configs/w/net.pth"
    assert cfg.out_dir == "runs/x" and cfg.init_from == "mine.pt"  # written / typed paths: the working folder


def test_the_configs_ship_with_the_package(monkeypatch):
    monkeypatch.setenv("DYNPRUNE_DATA", "/somewhere/data")  # their inputs are named under the data root
    names = sorted(p.name for p in shipped_configs().glob("*.yaml"))
    assert "dncnn_b.yaml" in names and "sls_carn_m_x4.yaml" in names
    for name in names:
        cfg = load_config(shipped_configs() / name)
        assert cfg.convert.ratios and cfg.dataset.kwargs.get("root", "/somewhere/data").startswith("/somewhere/data")


def test_dependencies_are_ranges_and_a_license_ships():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "==" in d]
    assert any(d.startswith("torch>=") for d in project["dependencies"])
    assert not [d for d in project["dependencies"] if d.startswith("torch-pruning")]  # the package does not use it
    assert project["license-files"] == ["LICENSE"] and "MIT License" in (root / "LICENSE").read_text()


# ---- hostile files: one error line each -------------------------------------------------------------------
def test_an_image_over_the_pixel_limit_is_one_error_line(trained, noisy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DYNPRUNE_MAX_PIXELS", "1000")  # the 48 x 64 test images have 3072
    line = refused(["restore", str(trained / "run/last.pt"), str(noisy), str(tmp_path / "o")], capsys, "restore")
    assert "camera.png' has 3072 pixels (64x48), more than the limit of 1000" in line and "DYNPRUNE_MAX_PIXELS" in line
    monkeypatch.setenv("DYNPRUNE_MAX_PIXELS", "many")
    assert "DYNPRUNE_MAX_PIXELS='many' must be a positive integer" in refused(
        ["restore", str(trained / "run/last.pt"), str(noisy), str(tmp_path / "o")], capsys, "restore")


def test_invalid_yaml_in_an_override_or_a_plan_file_is_one_error_line(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    line = refused(["train", cfg, "--set", "stages.base.epochs=[1,"], capsys, "train")
    assert "override 'stages.base.epochs=[1,': the value is not valid YAML: while parsing a flow node" in line
    (tmp_path / "plan.yaml").write_text("dncnn.2: [1:4\n")
    line = refused(["train", cfg, "--set", f"convert.ratios=[{tmp_path / 'plan.yaml'}, '4:4']"], capsys, "train")
    assert "plan.yaml' is not valid YAML: while parsing a flow sequence" in line


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_a_foreign_file_named_like_the_run_checkpoint_is_refused_and_kept(tmp_path, capsys, content):
    import torch

    cfg = write_config(tmp_path / "cfg.yaml")
    last = tmp_path / "run" / "last.pt"
    last.parent.mkdir()
    if content is None:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, last)  # someone else's torch file
    else:
        last.write_bytes(content)
    before = last.read_bytes()
    line = refused(["train", cfg, "--resume"], capsys, "train")
    assert "last.pt" in line and ("not a dynprune training checkpoint" in line or "not a torch weights file" in line)
    assert "weights_only" not in line
    assert last.read_bytes() == before


def test_every_command_checks_it_can_write_before_the_work(trained, noisy, tmp_path, capsys):
    (tmp_path / "afile").write_text("a file where a folder is needed")
    blocked = tmp_path / "afile" / "sub"
    ckpt = str(trained / "run/last.pt")
    cfg = write_config(tmp_path / "cfg.yaml")
    for argv, cmd in ((["train", cfg, "--set", f"out_dir={blocked / 'run'}"], "train"), (["deploy", ckpt, str(blocked / "d.pt")], "deploy"),
                      (["restore", ckpt, str(noisy), str(blocked)], "restore"),
                      (["eval", ckpt, "--data", str(noisy), "--sigma", "25", "--out", str(blocked)], "eval"),
                      (["calibrate", ckpt, "--data", str(noisy), "--sigma", "25", "--budget", "0.5", "--out",
                        str(blocked / "c.pt")], "calibrate")):
        line = refused(argv, capsys, cmd)
        assert "cannot write the " in line and "afile/sub" in line and "Not a directory" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cfg.yaml", "in"]  # "in": the noisy inputs
