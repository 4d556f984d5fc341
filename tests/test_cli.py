import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

import dynprune

from dynprune.cli import main
from dynprune.imageio import read_image, write_image
from dynprune.metrics import psnr
from dynprune.registry import create_model

from .conftest import tiny_config


def test_eval_report(trained, capsys):
    out = trained / "eval"
    assert main(["eval", str(trained / "run/last.pt"), "--data", str(trained / "clean"), "--sigma", "15", "50",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["dense_reference"].endswith("base.pt")
    # degraded input, dense, 3 branches, routed + the paper row
    assert (out / "report.md").read_text().count("| sigma=50 |") == 6 + 1
    assert (out / "psnr_vs_macs.png").stat().st_size > 1000
    fr = rep["branch_macs_fraction"]
    for cond in rep["conditions"].values():
        rows = cond["images"]
        assert {r["image"] for r in rows} == {"camera.png", "coins.png"}
        for r in rows:
            assert r["routed"] == r[f"branch {r['branch']}"]
        hist = cond["histogram"]
        expect = sum(hist[r] * fr[i] for i, r in enumerate(rep["ratios"])) / 2 + rep["classifier_macs_fraction"]
        assert cond["routed_macs_fraction"] == pytest.approx(expect, rel=1e-6)
    assert "routed MACs" in capsys.readouterr().out


def test_eval_same_noise_every_run(trained):
    outs = []
    for k in range(2):
        out = trained / f"eval{k}"
        main(["eval", str(trained / "run/last.pt"), "--data", str(trained / "clean"), "--sigma", "25",
              "--out", str(out)])
        outs.append(json.loads((out / "report.json").read_text())["conditions"])
    assert outs[0] == outs[1]


def test_restore_writes_images_and_csv(trained):
    noisy = trained / "noisy"
    g = torch.Generator().manual_seed(0)
    for p in (trained / "clean").iterdir():
        img = read_image(p)
        write_image(img + torch.randn(img.shape, generator=g) * 0.1, noisy / p.name)
    out = trained / "restored"
    assert main(["restore", str(trained / "run/last.pt"), str(noisy), str(out), "--clean", str(trained / "clean")]) == 0
    rows = list(csv.DictReader(open(out / "routing.csv")))
    assert [r["image"] for r in rows] == ["camera.png", "coins.png"]
    assert float(rows[0]["psnr_in"]) == pytest.approx(psnr(read_image(noisy / "camera.png"),
                                                           read_image(trained / "clean/camera.png")), abs=0.01)
    assert read_image(out / "side_by_side/camera.png").shape == (1, 48, 3 * 64)
    assert all(r["branch"] in ("1:4", "2:4", "4:4") and 0 < float(r["macs_fraction"]) <= 1.01 for r in rows)
    assert read_image(out / "camera.png").shape == (1, 48, 64)


@pytest.mark.parametrize("backend", ["dynamic", "cpu"])
def test_restore_under_a_budget(trained, backend, capsys, tmp_path):
    model = dynprune.load(trained / "run/last.pt")
    rep = dynprune.audit(model, torch.rand(1, 1, 48, 64))
    budget = (rep.branches[0].effective_macs + rep.classifier_macs) / rep.dense_macs + 1e-3
    out = tmp_path / "restored"
    assert main(["restore", str(trained / "run/last.pt"), str(trained / "clean"), str(out), "--budget", str(budget),
                 "--backend", backend]) == 0
    assert "routing 1:4: 2 / 2:4: 0 / 4:4: 0" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "routing.csv")))
    assert [r["branch"] for r in rows] == ["1:4", "1:4"]
    assert sum(float(r["macs"]) for r in rows) / sum(float(r["dense_macs"]) for r in rows) <= budget


def test_cli_errors_are_clear(trained, capsys, tmp_path):
    rgb = tmp_path / "rgb"
    write_image(torch.rand(3, 32, 32), rgb / "a.png")
    assert main(["eval", str(trained / "run/last.pt"), "--data", str(rgb), "--out", str(tmp_path / "o")]) == 2
    assert "has 3 channels but the model takes 1" in capsys.readouterr().err
    assert main(["eval", str(trained / "run/last.pt"), "--data", str(tmp_path / "none"), "--out", "o"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_real_pairs_and_levels(trained, tmp_path):
    clean = trained / "clean"
    noisy = tmp_path / "noisy"
    g = torch.Generator().manual_seed(1)
    for p in clean.iterdir():
        img = read_image(p)
        write_image(img + torch.randn(img.shape, generator=g) * 0.08, noisy / p.name)
    out = tmp_path / "eval"
    assert main(["eval", str(trained / "run/last.pt"), "--data", str(clean), "--pairs", str(noisy), str(clean),
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["conditions"]) == ["sigma=15", "sigma=25", "sigma=50", f"real {tmp_path.name}"]
    real = rep["conditions"][f"real {tmp_path.name}"]["images"]
    base = torch.load(trained / "run/base.pt", weights_only=True)
    dense = create_model("dncnn", **base["arch"]).eval()
    dense.load_state_dict(base["model"])
    for row in real:  # exactly the given degraded files went through the dense model
        y = read_image(noisy / f"{row['image']}.png").unsqueeze(0)
        with torch.no_grad():
            expected = psnr(dense(y)[0], read_image(clean / f"{row['image']}.png"))
        assert row["dense"][0] == pytest.approx(expected, abs=1e-9)


def test_gray_image_given_to_rgb_model_is_an_error(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "rgb", model={"name": "dncnn", "kwargs": {"depth": 3, "width": 8, "in_channels": 3}},
                      dataset={"name": "skimage_photos", "kwargs": {"names": ["astronaut"], "channels": 3,
                                                                    "patch_size": 16, "patches_per_image": 8}})
    path = tmp_path / "rgb.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", str(path)]) == 0
    write_image(torch.rand(1, 24, 24), tmp_path / "gray/g.png")
    assert main(["restore", str(tmp_path / "rgb/last.pt"), str(tmp_path / "gray"), str(tmp_path / "out")]) == 2
    assert "image 'g.png' has 1 channels but the model takes 3" in capsys.readouterr().err


def test_deploy_artifact_and_cpu_backend(trained, tmp_path, capsys):
    from dynprune.deploy import DEPLOY_FORMAT, load_deployed
    from dynprune.models import load_trained

    ckpt, art = str(trained / "run/last.pt"), tmp_path / "deployed.pt"
    assert main(["deploy", ckpt, str(art), "--max-density", "0.5", "--min-out-channels", "1"]) == 0
    assert "| dncnn.2 | Conv2d |" in capsys.readouterr().out
    assert torch.load(art, weights_only=True)["format"] == DEPLOY_FORMAT
    deployed, dynamic = load_deployed(art), load_trained(ckpt)[0]
    assert "nm_cpu" in deployed.deploy_report.layers[0].paths + deployed.deploy_report.layers[1].paths
    x = torch.rand(2, 1, 30, 26)
    with torch.no_grad():
        for i in range(3):
            with dynprune.use_branch(i):
                assert (deployed.restorer(x) - dynamic.restorer(x)).abs().max().item() <= 1e-4
    # eval on the artifact and with --backend cpu give the dynamic model's PSNR
    reports = []
    for name, args in (("dyn", [ckpt]), ("art", [str(art), "--dense", str(trained / "run/base.pt")]), ("cpu", [ckpt, "--backend", "cpu"])):
        assert main(["eval", *args, "--data", str(trained / "clean"), "--sigma", "25", "--out", str(tmp_path / name)]) == 0
        reports.append(json.loads((tmp_path / name / "report.json").read_text())["conditions"]["sigma=25"])
    for rep in reports[1:]:
        assert rep["histogram"] == reports[0]["histogram"]
        assert rep["routed_macs_fraction"] == pytest.approx(reports[0]["routed_macs_fraction"])
        for model_name, m in reports[0]["models"].items():
            assert rep["models"][model_name]["psnr"] == pytest.approx(m["psnr"], abs=0.01)
    # restore through the deployed artifact writes the dynamic model's images (8-bit files, same routing)
    outs = {}
    for name, model_path in (("dyn", ckpt), ("art", str(art))):
        assert main(["restore", model_path, str(trained / "clean"), str(tmp_path / f"r_{name}")]) == 0
        outs[name] = list(csv.DictReader(open(tmp_path / f"r_{name}/routing.csv")))
    assert [r["branch"] for r in outs["art"]] == [r["branch"] for r in outs["dyn"]]
    assert all(float(r["ms"]) > 0 for r in outs["art"])
    for r in outs["dyn"]:
        a, b = read_image(tmp_path / "r_dyn" / r["image"]), read_image(tmp_path / "r_art" / r["image"])
        assert (a - b).abs().max().item() <= 1 / 255 + 1e-6
    assert main(["deploy", ckpt, str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_deploy_backend_names_from_the_command_line(trained, tmp_path, capsys):
    from dynprune.deploy import load_deployed

    ckpt = str(trained / "run/last.pt")
    assert main(["deploy", ckpt, str(tmp_path / "dense.pt"), "--backend", "onednn"]) == 0
    assert all(lp.paths == ["onednn"] * 3 for lp in load_deployed(tmp_path / "dense.pt").deploy_report.layers)
    capsys.readouterr()
    assert main(["deploy", ckpt, str(tmp_path / "x.pt"), "--backend", "nm_cpu,gpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown deploy backend 'gpu': use 'cpu' (every registered backend) or one of ['int8_cpu', 'bf16_cpu', 'vector_cpu'" in err
    assert not (tmp_path / "x.pt").exists()



def test_calibrate_budget_then_eval_routes_within_it(trained, capsys, tmp_path):
    ckpt, clean = str(trained / "run/last.pt"), str(trained / "clean")
    free = tmp_path / "free.pt"
    assert main(["calibrate", ckpt, "--budget", "1.0", "--data", clean, "--sigma", "15", "50", "--seed", "0",
                 "--out", str(free)]) == 0
    info = torch.load(free, weights_only=True)["routing_budget"]
    assert info["penalty"] == 0.0 and info["images"] == 4
    filled = tmp_path / "filled.pt"   # --fill spends an unused budget: 1.5 x dense affords 4:4 for all
    assert main(["calibrate", ckpt, "--budget", "1.5", "--fill", "--data", clean, "--sigma", "15", "50", "--seed", "0",
                 "--out", str(filled)]) == 0
    fi = torch.load(filled, weights_only=True)["routing_budget"]
    assert fi["penalty"] < 0 and fi["calibrated_routing"] == [0, 0, 4] and fi["argmax_routing"] != [0, 0, 4]
    budget = info["branch_costs"][0] + info["classifier_cost"] + 1e-3   # all but forced to the sparsest branch
    out = tmp_path / "cal.pt"
    assert main(["calibrate", ckpt, "--budget", str(budget), "--data", clean, "--sigma", "15", "50", "--seed", "0",
                 "--out", str(out)]) == 0
    info = torch.load(out, weights_only=True)["routing_budget"]
    assert info["calibrated_routing"] == [4, 0, 0] and info["calibrated_cost"] <= budget
    # eval on the same degraded images reports the calibrated routing and cost
    assert main(["eval", str(out), "--data", clean, "--sigma", "15", "50", "--out", str(tmp_path / "ev")]) == 0
    rep = json.loads((tmp_path / "ev/report.json").read_text())
    routed = [c["routed_macs_fraction"] for c in rep["conditions"].values()]
    assert sum(routed) / 2 == pytest.approx(info["calibrated_cost"], rel=1e-6)
    assert [c["histogram"]["1:4"] for c in rep["conditions"].values()] == [2, 2]
    capsys.readouterr()
    assert main(["eval", str(out), "--data", clean, "--sigma", "15", "--classify-tile", "-1", "--out", str(tmp_path / "e2")]) == 2
    assert "--classify-tile must be >= 0 pixels (0 = whole image), got -1" in capsys.readouterr().err
    assert main(["calibrate", ckpt, "--budget", "0.01", "--data", clean, "--sigma", "15", "--out", str(out),
                 "--overwrite"]) == 2
    assert "budget 0.0100 is below the cheapest routing's cost" in capsys.readouterr().err


def test_search_command_writes_nested_plans(tmp_path, capsys):
    cfg = {"model": {"name": "dncnn", "kwargs": {"in_channels": 1, "depth": 4, "width": 16}},
           "dataset": {"name": "skimage_photos", "kwargs": {"channels": 1, "patch_size": 24, "patches_per_image": 8}},
           "degradation": {"name": "gaussian_noise", "kwargs": {"sigmas": [25]}},
           "search": {"budgets": [0.5, 0.75], "m": 8, "steps": 300, "batch_size": 4, "score_lr": 0.05,
                      "reg_weight": 0.5}, "out_dir": str(tmp_path / "search")}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sls-75: budget 0.75" in out and "sls-50: budget 0.5" in out
    plans = [dynprune.RatioPlan.load(tmp_path / "search" / f"sls-{b}.yaml") for b in (75, 50)]
    assert all(plans[1].ratios[k].n <= plans[0].ratios[k].n for k in plans[0].ratios)
    assert main(["search", str(path), "--set", "search.budgets=[1.5]"]) == 2
    assert "must be a MACs fraction in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["eval", "x.pt", "--data", "d", "--sigma", "nan"], "invalid sigma 'nan': expected a finite number >= 0"),
    (["eval", "x.pt", "--data", "d", "--sigma", "-5"], "invalid sigma '-5'"),
    (["eval", "x.pt", "--data", "d", "--limit", "-1"], "invalid count '-1': expected an integer >= 0"),
    (["calibrate", "x.pt", "--budget", "0.5", "--data", "d", "--out", "o.pt", "--limit", "two"], "invalid count 'two'"),
])
def test_bad_numbers_rejected_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"dynprune {dynprune.__version__}"


def test_python_dash_m_and_options_after_the_subcommand(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dynprune", "plugins", "-q"], capture_output=True, text=True)
    assert out.returncode == 0 and "dncnn" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dynprune", "train", str(tmp_path / "none.yaml"), "-v"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" in bad.stderr  # -v after the subcommand: the traceback


def test_configs_name_their_data_by_the_data_root(tmp_path, monkeypatch, capsys):
    from dynprune.config import load_config, shipped_configs

    monkeypatch.delenv("DYNPRUNE_DATA", raising=False)
    with pytest.raises(ValueError, match=r"'\$DYNPRUNE_DATA/weights/dncnn/DnCNN-B/net.pth' is under the data root \$DYNPRUNE_DATA, "
                                         r"which is not set: set DYNPRUNE_DATA .* or pass --data-root DIR"):
        load_config(shipped_configs() / "dncnn_b.yaml")
    monkeypatch.setenv("DYNPRUNE_DATA", str(tmp_path / "data"))
    cfg = load_config(shipped_configs() / "dncnn_b.yaml")
    assert cfg.dataset.kwargs["root"] == str(tmp_path / "data/denoise/Train400")
    assert cfg.model.weights == str(tmp_path / "data/weights/dncnn/DnCNN-B/net.pth")
    monkeypatch.delenv("DYNPRUNE_DATA")
    assert main(["train", str(shipped_configs() / "dncnn_b.yaml"), "--data-root", str(tmp_path / "d2"),
                 "--out-dir", str(tmp_path / "run")]) == 2  # the data root is read; the data is not there
    assert "d2/denoise/Train400' does not exist" in capsys.readouterr().err


def test_eval_finds_the_dense_reference_from_any_folder_or_says_it_is_missing(tmp_path, monkeypatch, capsys):
    """The config stores the dense weights relative to the training folder; eval run elsewhere finds them
    through the checkpoint's recorded working folder, and warns (and records why) when they are gone."""
    import json
    import shutil

    from dynprune.imageio import write_image
    from dynprune.methods.classpruning import Trainer
    from dynprune.plugins.datasets import load_skimage

    from .conftest import teacher_files

    train_dir = tmp_path / "train"
    weights = teacher_files(train_dir / "w")[0]["weights"]
    monkeypatch.chdir(train_dir)
    cfg = tiny_config("run", model={"name": "dncnn",
                                    "weights": str(Path(weights).relative_to(train_dir))})
    Trainer(cfg).fit()
    (train_dir / "run" / "base.pt").unlink()  # only the config's weights are left to compare against
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write_image(load_skimage(["camera"])[0][:, :40, :40], elsewhere / "img" / "camera.png")
    argv = ["eval", str(train_dir / "run" / "last.pt"), "--data", "img", "--sigma", "25", "--out"]
    assert main([*argv, "found"]) == 0
    report = json.loads((elsewhere / "found" / "report.json").read_text())
    assert Path(report["dense_reference"]).resolve() == Path(weights).resolve()
    assert "dense" in report["conditions"]["sigma=25"]["models"]
    shutil.rmtree(train_dir / "w")
    capsys.readouterr()
    assert main([*argv, "missing"]) == 0
    report = json.loads((elsewhere / "missing" / "report.json").read_text())
    assert report["dense_reference"] is None and "w/teacher0.pt' that the checkpoint's config names are not " \
        "found from here" in report["dense_missing"]
    err = capsys.readouterr().err
    assert "no dense reference" in err and "pass --dense FILE" in err


def test_deploy_int8_from_the_command_line_calibrates_on_a_folder(trained, tmp_path, capsys):
    from dynprune.deploy import load_deployed

    ckpt = str(trained / "run/last.pt")
    out = tmp_path / "int8.pt"
    assert main(["deploy", ckpt, str(out), "--precision", "int8", "--calibration", str(trained / "clean"),
                 "--calibration-count", "2"]) == 0
    dep = load_deployed(out)
    assert dep.deploy_options["precision"] == "int8"
    capsys.readouterr()
    # the tiny run's dataset folder does not exist here, and no --calibration is given
    assert main(["deploy", ckpt, str(tmp_path / "x.pt"), "--precision", "int8"]) == 2
    assert "--precision int8 needs calibration images" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert main(["deploy", ckpt, str(tmp_path / "y.pt"), "--precision", "bf16", "--int8-min-sqnr", "40"]) == 2
    assert "--int8-min-sqnr applies to --precision int8, not bf16" in capsys.readouterr().err
