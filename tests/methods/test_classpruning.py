import pytest
import torch

import dynprune
from dynprune.checkpoint import load_file, save_atomic
from dynprune import hookimpl
from dynprune.classpruning import ClassPruning
from dynprune.config import TrainConfig, load_config
from dynprune.deploy import SparseConv2d, save_deployed
from dynprune.outputs import RunLog

from ..conftest import teacher_files, tiny_config
from dynprune.registry import PluginHost, reset_host
from dynprune.methods.classpruning import Trainer
from dynprune.models import load_trained


def test_three_stages_run_and_checkpoint_rebuilds(tmp_path):
    model = Trainer(tiny_config(tmp_path)).fit()
    assert (tmp_path / "base.pt").is_file() and (tmp_path / "last.pt").is_file()
    loaded, cfg, ckpt = load_trained(tmp_path / "last.pt")
    assert ckpt["done"] and cfg.model.kwargs == {"depth": 4, "width": 8}
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert any('"stage": "joint"' in ln and '"L_C"' in ln for ln in lines)


@pytest.mark.parametrize("extra", [{}, "distill"])
def test_resume_after_a_crash_is_exact(tmp_path, killed_at, extra):
    if extra == "distill":   # every new option of issue 8: per-level teachers, L_W floor, masked gradient
        extra = {"distill": {"weight": 0.5, "teachers": teacher_files(tmp_path / "t", 3)}, "lw_floor": 0.2, "lw_floor_to": "denser",
                 "convert": {"mask_grad": "masked"}}
    ref = Trainer(tiny_config(tmp_path / "ref", **extra)).fit().state_dict()

    with killed_at(2, 4):
        Trainer(tiny_config(tmp_path / "run", **extra)).fit()
    ckpt = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert (ckpt["stage"], ckpt["step"]) == ("restoration", 3)
    resumed = Trainer(tiny_config(tmp_path / "run", **extra), resume=True).fit().state_dict()
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(resumed[k], ref[k]), k


def test_a_resumed_run_logs_each_step_once(tmp_path, killed_at):
    ref = tiny_config(tmp_path / "ref")
    Trainer(ref).fit()
    with killed_at(3, 1):  # joint step 0 is logged, but the checkpoint holds only the stage start
        Trainer(tiny_config(tmp_path / "run")).fit()
    log = RunLog(tmp_path / "run/log.jsonl")
    assert log.rows()[-1]["stage"] == "joint" and log.rows()[-1]["step"] == 0
    Trainer(tiny_config(tmp_path / "run"), resume=True).fit()
    assert log.rows() == RunLog(tmp_path / "ref/log.jsonl").rows()  # same rows, no step twice


def test_nan_batch_stops_with_step_and_keeps_checkpoint(tmp_path, nan_noise):
    cfg = tiny_config(tmp_path, degradation={"name": "nan_noise"})
    with pytest.raises(FloatingPointError, match=r"stage 2 \(classifier\), step 2; last checkpoint kept"):
        Trainer(cfg).fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["stage"] == "classifier" and ckpt["step"] == 0  # written at the end of stage "base"


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: dncnn}\nstages:\n  joint: {epochs: 2, learning_rate: 0.1}\n")
    with pytest.raises(ValueError, match=r"stages.joint.learning_rate\s+Extra inputs are not permitted"):
        load_config(bad)
    bad.write_text("seed: many\n")
    with pytest.raises(ValueError, match=r"seed\s+Input should be a valid integer"):
        load_config(bad)
    bad.write_text("convert: {ratios: ['5:4']}\n")
    with pytest.raises(ValueError, match="5:4"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_checkpoint_errors(tmp_path):
    Trainer(tiny_config(tmp_path)).fit()
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt"):
        load_trained(tmp_path / "cut.pt")
    ckpt = load_file(tmp_path / "last.pt")
    ckpt["arch"] = {"depth": 4, "width": 16}
    save_atomic(ckpt, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"does not fit ClassPruning: shape mismatches \[.restorer.dncnn.0.weight \(8, 1, 3, 3\) vs \(16, 1, 3, 3\)"):
        load_trained(tmp_path / "other.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a ClassPruning checkpoint .*bare state_dict"):
        load_trained(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_trained(tmp_path / "missing.pt")


def test_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  joint: {epochs: 3}\n")
    cfg = load_config(path, sets=["stages.joint.epochs=0", "convert.ratios=['2:4', '4:4']", "seed=7"])
    assert cfg.stages.joint.epochs == 0 and cfg.convert.ratios == ["2:4", "4:4"] and cfg.seed == 7
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(path, sets=["stages.joint.epochs"])
    with pytest.raises(ValueError, match="stages.joint.lr\\s+Extra inputs"):
        load_config(path, sets=["stages.joint.lr=0.1"])


def test_residual_variance_labeler_is_fitted_on_training_data(tmp_path):
    cfg = tiny_config(tmp_path, labeler={"name": "residual_variance"},
                      degradation={"name": "gaussian_noise", "kwargs": {"sigmas": None, "sigma_range": [0, 60]}})
    tr = Trainer(cfg)
    med = tr.labeler.medians
    assert tr.labeler.edges.numel() == 2 and (med.diff() > 0).all()
    # AWGN: Var(R) = (sigma/255)^2, sigma ~ U[0, 60]: the class medians sit near sigma = 10, 30, 50
    assert (med.sqrt() * 255).tolist() == pytest.approx([10, 30, 50], abs=4)


def test_init_from_checkpoint(tmp_path):
    first = Trainer(tiny_config(tmp_path / "a")).fit()
    cfg = tiny_config(tmp_path / "b", init_from=str(tmp_path / "a/last.pt"))
    tr = Trainer(cfg)
    for k, v in first.state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    bad = tiny_config(tmp_path / "c", init_from=str(tmp_path / "a/last.pt"), model={"name": "dncnn", "kwargs": {"depth": 3}})
    with pytest.raises(ValueError, match="does not fit this model"):
        Trainer(bad)


def test_resume_into_another_runs_folder_names_the_differences(tmp_path):
    # tiny stages throughout: a `stages` mapping with the classifier alone left the other stages at the paper's
    # defaults (500 epochs each: 1003 steps of batch 32), which made this test take 17 s to minutes of CPU
    stages = tiny_config(tmp_path).model_dump()["stages"]
    stages["classifier"]["steps_per_epoch"] = 3
    Trainer(tiny_config(tmp_path, stages=stages)).fit()
    other = tiny_config(tmp_path, seed=2, lw_floor=0.1, threads=1, stages=stages)
    with pytest.raises(ValueError, match=r"another run.*lw_floor: 0.0 -> 0.1; seed: 1 -> 2\. Use another out_dir"):
        Trainer(other, resume=True)
    same = tiny_config(tmp_path, threads=1, stages=stages)
    assert Trainer(same, resume=True).run.index == 4      # threads does not change what a run computes


def test_per_level_teachers_restore_each_sample_with_its_level(tmp_path):
    cfg = tiny_config(tmp_path, distill={"weight": 1.0, "teachers": teacher_files(tmp_path, 3)})
    tr = Trainer(cfg)
    y, level = torch.rand(5, 1, 12, 12), torch.tensor([2, 0, 1, 0, 2])
    got = tr._teach(y, level)
    with torch.no_grad():
        for i in range(5):
            own = tr.teachers[int(level[i])](y[i:i + 1])[0]
            other = tr.teachers[(int(level[i]) + 1) % 3](y[i:i + 1])[0]
            assert torch.allclose(got[i], own, atol=1e-6) and not torch.allclose(got[i], other, atol=1e-3)
    # weight 1: the per-sample loss is the distance to the teacher only, zero for the teacher's own output
    loss = tr._sample_loss(y, level)(got, torch.zeros_like(y))
    assert loss.shape == (5,) and loss.abs().max() == 0


def test_default_teacher_is_the_frozen_start(tmp_path):
    start = tiny_config(tmp_path / "a", stages={"classifier": {"epochs": 0}, "restoration": {"epochs": 0},
                                                "joint": {"epochs": 0}})
    Trainer(start).fit()
    cfg = tiny_config(tmp_path / "b", init_from=str(tmp_path / "a/last.pt"), distill={"weight": 0.5})
    tr = Trainer(cfg)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(tr.teachers[0](x), tr.model.restorer.eval()(x))
        tr.model.restorer.dncnn[0].weight.add_(1.0)   # training moves the student, never the teacher
        assert not torch.equal(tr.teachers[0](x), tr.model.restorer(x))
    assert not any(p.requires_grad for p in tr.teachers[0].parameters())


class _Half(torch.nn.Module):
    def forward(self, x):
        return x[..., ::2, ::2]


class _HalfPlugin:
    @hookimpl
    def dynprune_register_models(self, register):
        register("half", lambda weights=None: _Half())


def test_distillation_errors(tmp_path):
    with pytest.raises(ValueError, match="untrained here .*give distill.teachers"):
        Trainer(tiny_config(tmp_path, distill={"weight": 0.5}))
    with pytest.raises(ValueError, match="2 entries; give one, or one per degradation level \\(3 for 'gaussian_noise'\\)"):
        Trainer(tiny_config(tmp_path, distill={"weight": 0.5, "teachers": teacher_files(tmp_path, 2)}))
    with pytest.raises(ValueError, match="teacher 'dncnn' has no weights"):
        Trainer(tiny_config(tmp_path, distill={"weight": 0.5, "teachers": [{"name": "dncnn"}]}))
    with pytest.raises(ValueError, match="lw_floor 0.5 is above 1/L"):
        tiny_config(tmp_path, lw_floor=0.5)
    reset_host(PluginHost(plugins={"half": _HalfPlugin()}))
    try:
        half = {"weight": 0.5, "teachers": [{"name": "half", "weights": "unused"}]}
        with pytest.raises(ValueError, match=r"teacher 0 \(half\) maps a \(1, 1, 16, 16\) input to \(1, 1, 8, 8\), "
                                             r"but the student's output is \(1, 1, 16, 16\)"):
            Trainer(tiny_config(tmp_path, distill=half))
    finally:
        reset_host()


def test_load_gives_the_trained_model_in_eval_mode(tmp_path):
    trained = Trainer(tiny_config(tmp_path)).fit()
    model = dynprune.load(tmp_path / "last.pt")
    assert isinstance(model, ClassPruning) and not model.training
    x = torch.rand(3, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    save_deployed(dynprune.deploy(model), tmp_path / "fast.pt", ckpt["config"], ckpt["arch"])
    fast = dynprune.load(tmp_path / "fast.pt")
    assert not fast.training and any(isinstance(m, SparseConv2d) for m in fast.modules())
    with torch.no_grad():
        assert torch.allclose(fast(x), trained(x), atol=1e-4)
    with pytest.raises(ValueError, match="not a ClassPruning checkpoint .*dense network's weights"):
        dynprune.load(tmp_path / "base.pt")


def test_checkpoint_of_a_backbone_without_in_channels_rebuilds(tmp_path):
    # SR backbones do not say their input channels: the classifier's first conv does (3 here, not 1)
    from dynprune.models import build_model

    cfg = TrainConfig.model_validate({"model": {"name": "carn_m", "kwargs": {"multi_scale": True, "scale": 4}},
                                      "convert": {"ratios": ["2:4", "4:4"]}})
    model = build_model(cfg, in_channels=3)
    torch.save({"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "arch": model.restorer.arch},
               tmp_path / "sr.pt")
    loaded, _, _ = load_trained(tmp_path / "sr.pt")
    assert loaded.in_channels == 3
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.restorer(x), model.eval().restorer(x))
