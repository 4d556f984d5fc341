"""The shared run loop: today's numbers unchanged, extension, validation and best.pt, TensorBoard, EMA,
clipping, DataLoader workers, and the errors of each."""

import json

import pytest
import torch

from dynprune.methods.classpruning import Trainer
from dynprune.models import load_trained
from dynprune.outputs import RunLog
from dynprune.train import EMA, build_optimizer, cosine_lr

from ..conftest import tiny_config

# Losses of every step of tiny_config, logged by the hand-written loop this run loop replaced (commit
# c92277f, one thread, Zen 4): an old config must train exactly as before, up to float rounding.
GOLDEN = {
    "base": [0.23711353540420532, 0.19599273800849915, 0.23552152514457703, 0.23289155960083008, 0.16765955090522766],
    "classifier": [0.8657283782958984, 1.4688509702682495, 0.8614448308944702, 1.1704471111297607, 1.2508187294006348],
    "restoration": [0.1687183827161789, 0.15803678333759308, 0.14992426335811615, 0.18729469180107117,
                    0.14841315150260925],
    "joint": [0.1407296508550644, 0.1330815702676773, 0.16270089149475098, 0.1435694843530655, 0.16450922191143036],
}


def _losses(path):
    out = {}
    for row in RunLog(path / "log.jsonl").rows():
        if "loss" in row:
            out.setdefault(row["stage"], []).append(row["loss"])
    return out


def test_an_old_config_trains_exactly_as_the_old_loop(tmp_path):
    torch.set_num_threads(1)
    Trainer(tiny_config(tmp_path, log_every=1)).fit()
    got = _losses(tmp_path)
    for stage, losses in GOLDEN.items():
        assert got[stage] == pytest.approx(losses, rel=1e-4, abs=1e-6), stage


def test_workers_build_the_same_batches(tmp_path):
    a = Trainer(tiny_config(tmp_path / "a")).fit().state_dict()
    b = Trainer(tiny_config(tmp_path / "b", data={"workers": 2})).fit().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_extended_by_more_epochs(tmp_path):
    Trainer(tiny_config(tmp_path, log_every=1)).fit()
    longer = tiny_config(tmp_path, log_every=1, stages={
        **tiny_config(tmp_path).model_dump()["stages"],
        "joint": {"epochs": 2, "steps_per_epoch": 5, "batch_size": 4, "lr_start": 1e-3, "lr_end": 1e-5}})
    t = Trainer(longer, resume=True)
    assert (t.run.index, t.run.step) == (3, 5)  # back into the joint stage, after its 5 steps
    t.fit()
    rows = [r for r in RunLog(tmp_path / "log.jsonl").rows() if r["stage"] == "joint" and "lr" in r]
    assert [r["step"] for r in rows] == list(range(10))
    assert rows[4]["lr"] == pytest.approx(1e-5)  # the 5-step phase had ended at lr_end
    # then the 10-step cosine from step 5 on: 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + cos(pi * 5 / 9))
    assert [r["lr"] for r in rows[5:]] == pytest.approx([cosine_lr(s, 9, 1e-3, 1e-5) for s in range(5, 10)])
    assert rows[5]["lr"] == pytest.approx(4.1904e-4, rel=1e-4)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["done"] and ckpt["run"]["totals"]["joint"] == 10


def test_a_resume_cannot_shrink_or_reorder_the_schedule(tmp_path):
    Trainer(tiny_config(tmp_path)).fit()
    stages = tiny_config(tmp_path).model_dump()["stages"]
    short = {**stages, "joint": {**stages["joint"], "steps_per_epoch": 3}}
    with pytest.raises(ValueError, match="stages.joint.steps_per_epoch: 5 -> 3"):  # not a schedule length
        Trainer(tiny_config(tmp_path, stages=short), resume=True)
    none = {**stages, "joint": {**stages["joint"], "epochs": 0}}
    with pytest.raises(ValueError, match=r"stage 4 \(joint\) has already run 5 steps, and this config gives it 0"):
        Trainer(tiny_config(tmp_path, stages=none), resume=True)
    early = {**stages, "classifier": {**stages["classifier"], "epochs": 2}}
    with pytest.raises(ValueError, match=r"stage 2 \(classifier\) gets 10 steps instead of 5, but stage 3 "
                                         r"\(restoration\), stage 4 \(joint\) already ran after it"):
        Trainer(tiny_config(tmp_path, stages=early), resume=True)


def test_validation_keeps_best_pt_and_logs_per_branch_psnr(tmp_path):
    cfg = tiny_config(tmp_path, validation={"every": 2, "fraction": 0.5, "crop": 32})
    Trainer(cfg).fit()
    held = json.loads((tmp_path / "validation.json").read_text())
    assert held["images"] in (["camera"], ["coins"])
    rows = [r for r in RunLog(tmp_path / "log.jsonl").rows() if "validation" in r]
    assert [(r["stage"], r["step"]) for r in rows] == [("restoration", 1), ("restoration", 3), ("restoration", 4),
                                                       ("joint", 1), ("joint", 3), ("joint", 4)]
    v = rows[-1]["validation"]
    assert set(v) == {"psnr_routed", "psnr_input", "psnr_1:4", "psnr_2:4", "psnr_4:4", "route"}
    assert sum(v["route"].values()) == 3  # one image, three noise levels
    best = max(rows, key=lambda r: r["validation"]["psnr_routed"])
    assert best.get("best") and [r for r in rows if r.get("best")][-1] is best
    model, _, ckpt = load_trained(tmp_path / "best.pt")
    assert ckpt["best"]["value"] == best["validation"]["psnr_routed"] and "optimizer" not in ckpt
    assert ckpt["run"]["step"] == best["step"] + 1


def test_tensorboard_scalars_beside_the_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(tiny_config(tmp_path, validation={"every": 5, "fraction": 0.5, "crop": 32})).fit()
    Trainer(tiny_config(tmp_path, validation={"every": 5, "fraction": 0.5, "crop": 32}), overwrite=True).fit()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))  # the replaced run's events are gone
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"base/loss", "classifier/acc", "restoration/L_W", "joint/L_C", "joint/hist/0", "joint/lr",
            "validation/psnr_routed", "validation/psnr_1:4", "validation/route/4:4"} <= tags
    assert [e.step for e in acc.Scalars("joint/loss")] == [15, 19]  # one step axis over the four stages


def test_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="validation.every=3 needs held-out images"):
        tiny_config(tmp_path, validation={"every": 3})
    with pytest.raises(ValueError, match="leaves none to train on"):
        Trainer(tiny_config(tmp_path, validation={"every": 3, "fraction": 0.9}))
    with pytest.raises(ValueError, match="validation.metric 'ssim' is not computed by this run; it computes "
                                         "psnr_routed, psnr_input, psnr_1:4"):
        Trainer(tiny_config(tmp_path, validation={"every": 3, "fraction": 0.5, "metric": "ssim"}))


def test_ema_is_the_exponential_average_of_the_updates():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.75)
    seen = []
    for k in range(3):
        with torch.no_grad():
            net.weight.fill_(float(k + 1))
        seen.append(net.weight.detach().clone())
        ema.update()
    want = 0.75 * (0.75 * seen[0] + 0.25 * seen[1]) + 0.25 * seen[2]  # the first update copies
    assert torch.allclose(ema.parameters()["weight"], want)
    with ema.applied():
        assert torch.allclose(net.weight, want)
    assert torch.equal(net.weight, seen[2])


def test_a_run_with_ema_ends_on_the_average_and_resumes_it(tmp_path, killed_at):
    cfg = dict(optim={"ema_decay": 0.9})
    ref = Trainer(tiny_config(tmp_path / "ref", **cfg)).fit().state_dict()
    plain = Trainer(tiny_config(tmp_path / "plain")).fit().state_dict()
    assert not torch.equal(ref["restorer.dncnn.0.weight"], plain["restorer.dncnn.0.weight"])
    # the average replaces the restorer's weights at the end only: the classifier trained on the same outputs
    assert all(torch.equal(ref[k], plain[k]) for k in ref if k.startswith("classifier."))
    with killed_at(3, 2):
        Trainer(tiny_config(tmp_path / "run", **cfg)).fit()
    resumed = Trainer(tiny_config(tmp_path / "run", **cfg), resume=True).fit().state_dict()
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)


def test_adamw_takes_the_configured_weight_decay():
    net = torch.nn.Linear(4, 1)
    opt = build_optimizer(net.parameters(), tiny_config("x", optim={"name": "adamw", "weight_decay": 0.1}).optim, 1e-2)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1


def test_clip_grad_norm_bounds_every_update(tmp_path, monkeypatch):
    norms = []
    original = torch.optim.Adam.step

    def step(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    Trainer(tiny_config(tmp_path, optim={"clip_grad_norm": 0.01}, convert={"srste_decay": 0.0})).fit()
    assert len(norms) == 20 and max(norms) <= 0.01 * (1 + 1e-5)


def test_a_path_spelled_otherwise_is_the_same_run(tmp_path, monkeypatch):
    from dynprune.train import config_differences

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    old = {"dataset": {"kwargs": {"root": "data"}}, "seed": 1}
    assert config_differences(old, {"dataset": {"kwargs": {"root": str(tmp_path / "data")}}, "seed": 1}) == []
    assert config_differences(old, {"dataset": {"kwargs": {"root": "other"}}, "seed": 1}) == [
        "dataset.kwargs.root: 'data' -> 'other'"]


def test_bf16_autocast_trains_close_to_fp32_and_resumes_bit_identically(tmp_path, killed_at):
    """precision: bf16 runs every stage's forward under CPU autocast: losses within 10% of the fp32
    run (not equal: the arithmetic changed), weights float32, and a killed run resumes bit-identically."""
    torch.set_num_threads(1)
    Trainer(tiny_config(tmp_path / "fp32", log_every=1)).fit()
    ref = Trainer(tiny_config(tmp_path / "bf16", log_every=1, precision="bf16")).fit().state_dict()
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    for stage in GOLDEN:
        assert bf16[stage] == pytest.approx(fp32[stage], rel=0.1), stage  # bf16 keeps 8 bits of mantissa
    assert bf16 != fp32 and all(v.dtype != torch.bfloat16 for v in ref.values())
    with killed_at(2, 3):
        Trainer(tiny_config(tmp_path / "run", precision="bf16")).fit()
    resumed = Trainer(tiny_config(tmp_path / "run", precision="bf16"), resume=True).fit().state_dict()
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)


def test_fp16_needs_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA device.*use precision bf16"):
        tiny_config(tmp_path, precision="fp16")


def test_channels_last_trains_the_same_model(tmp_path, monkeypatch):
    """channels_last: the training steps' convolutions see NHWC batches (4 stages x 5 steps, at least one each;
    audits and validation keep their own inputs) and train the same losses as the default memory format, up to
    float order."""
    torch.set_num_threads(1)
    seen = []
    conv2d = torch.nn.functional.conv2d

    def spy(x, *a, **k):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return conv2d(x, *a, **k)

    Trainer(tiny_config(tmp_path / "nchw", log_every=1)).fit()
    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    Trainer(tiny_config(tmp_path / "nhwc", log_every=1, channels_last=True)).fit()
    assert sum(seen) >= 20
    got = _losses(tmp_path / "nhwc")
    for stage, losses in _losses(tmp_path / "nchw").items():
        assert got[stage] == pytest.approx(losses, rel=1e-4, abs=1e-6), stage
