import pytest
import torch

from dynprune import hookimpl
from dynprune.config import TrainConfig, load_config
from dynprune.registry import PluginHost, reset_host
from dynprune.trainer import Trainer, load_trained


def tiny_config(out_dir, **over) -> TrainConfig:
    stage = {"epochs": 1, "steps_per_epoch": 5, "batch_size": 4, "lr_start": 1e-3, "lr_end": 1e-5}
    cfg = {"model": {"name": "dncnn", "kwargs": {"depth": 4, "width": 8}},
           "classifier": {"name": "paper", "kwargs": {"widths": [4, 4, 8, 8]}},
           "dataset": {"name": "skimage_photos", "kwargs": {"names": ["camera", "coins"], "patch_size": 16,
                                                            "patches_per_image": 8}},
           "stages": {"base": stage, "classifier": stage, "restoration": stage, "joint": stage},
           "out_dir": str(out_dir), "checkpoint_every": 3, "seed": 1}
    cfg.update(over)
    return TrainConfig.model_validate(cfg)


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


def test_resume_after_a_crash_is_exact(tmp_path, monkeypatch):
    ref = Trainer(tiny_config(tmp_path / "ref")).fit().state_dict()

    original = Trainer._loss
    calls = {"n": 0}

    def crashing(self, stage, *a):
        calls["n"] += 1
        if stage == 2 and self.step == 4:
            raise KeyboardInterrupt("killed")
        return original(self, stage, *a)

    monkeypatch.setattr(Trainer, "_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tmp_path / "run")).fit()
    ckpt = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert (ckpt["stage"], ckpt["step"]) == ("restoration", 3)
    monkeypatch.setattr(Trainer, "_loss", original)
    resumed = Trainer(tiny_config(tmp_path / "run"), resume=True).fit().state_dict()
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(resumed[k], ref[k]), k


class _NaNNoise:
    levels = 3

    def __init__(self):
        self.calls = 0

    def describe_level(self, i):
        return str(i)

    def __call__(self, clean, generator=None, level=None):
        self.calls += 1
        y = clean.clone()
        if self.calls == 8:
            y[0, 0, 0, 0] = float("nan")
        return y, torch.randint(0, 3, (clean.shape[0],), generator=generator)


class _NaNPlugin:
    @hookimpl
    def dynprune_register_degradations(self, register):
        register("nan_noise", _NaNNoise)


def test_nan_batch_stops_with_step_and_keeps_checkpoint(tmp_path):
    reset_host(PluginHost(plugins={"nan": _NaNPlugin()}))
    try:
        cfg = tiny_config(tmp_path, degradation={"name": "nan_noise"})
        with pytest.raises(FloatingPointError, match=r"stage 2 \(classifier\), step 2; last checkpoint kept"):
            Trainer(cfg).fit()
    finally:
        reset_host()
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
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["arch"] = {"depth": 4, "width": 16}
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit the architecture"):
        load_trained(tmp_path / "other.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a dynprune checkpoint"):
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
