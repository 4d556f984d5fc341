"""Quantization-aware training (dynprune.qat): the simulation is what int8 deployment computes, and a QAT run
trains, resumes and deploys."""

import copy

import pytest
import torch

import dynprune as dp
from dynprune import qat, quant
from dynprune.branch import use_branch
from dynprune.layers import dynamic_layers, freeze_norm_stats

from .conftest import tiny_config, vector_dncnn_int8


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def vector_dncnn():
    """A vector16 DnCNN (width 32, randomized BatchNorms), calibration images and their int8 deployment."""
    net, cal = vector_dncnn_int8()
    return net, cal, dp.deploy(net, precision="int8", calibration=cal)


def test_weight_fake_quantization_is_deployments_rounding_with_a_straight_through_gradient():
    torch.manual_seed(0)
    w = torch.randn(8, 16, 3, 3, requires_grad=True)
    q, scale = quant.quantize_weight(w)
    fq = qat.fake_quant_weight(w, None)
    assert torch.equal(fq.detach(), q.float() * scale.view(-1, 1, 1, 1))
    fold = torch.tensor([0.5, 2.0, -1.5, 0.0, 1.0, 3.0, 0.25, 1.0])   # a folded BatchNorm's scale (one channel 0)
    fq = qat.fake_quant_weight(w, fold)
    qf, sf = quant.quantize_weight(w.detach() * fold.view(-1, 1, 1, 1))
    folded = fq.detach() * fold.view(-1, 1, 1, 1)
    live = fold != 0
    torch.testing.assert_close(folded[live], (qf.float() * sf.view(-1, 1, 1, 1))[live], rtol=1e-6, atol=1e-7)
    assert torch.equal(fq.detach()[3], qat.fake_quant_weight(w, None).detach()[3])  # scale 0: as if unfolded
    (fq * torch.arange(fq.numel()).view_as(fq)).sum().backward()
    assert torch.equal(w.grad, torch.arange(w.numel(), dtype=torch.float32).view_as(w))


def test_the_plan_is_what_int8_deployment_quantizes(vector_dncnn):
    net, cal, int8 = vector_dncnn
    plan = qat.int8_plan(net, cal)
    rep = int8.deploy_report
    assert set(plan) == {lp.name for lp in rep.layers if "int8_cpu" in lp.paths} and len(plan) == 5
    for lp in rep.layers:
        if lp.name in plan:
            assert plan[lp.name].norm == (lp.folded_norm or None)
            assert plan[lp.name].acts == [quant.act_qparams(*r) for r in rep.calibration[lp.name]]
    assert plan["dncnn.2"].norm == "dncnn.3" and plan["dncnn.14"].norm is None   # conv-BN-ReLU; the last conv


def test_simulated_int8_matches_the_deployed_int8_model(vector_dncnn):
    """Per branch, the fake-quantized float model is 4-5x closer (in RMSE) to the deployed int8 model than
    the float model is; removing the simulation gives the float model back exactly."""
    net, cal, int8 = vector_dncnn
    net, plan = copy.deepcopy(net), qat.int8_plan(net, cal)
    handle = qat.attach(net, plan)
    assert copy.deepcopy(net).get_submodule("dncnn.2").nm_weight_transform is None   # never copied
    x = cal[:4]
    for i in range(3):
        with torch.no_grad(), use_branch(i):
            sim, dep = net(x), int8(x)
            handle.remove()
            ref = net(x)
            handle = qat.attach(net, plan)
        assert _psnr(sim, dep) > _psnr(ref, dep) + 12, (i, _psnr(sim, dep), _psnr(ref, dep))
    handle.remove()
    with torch.no_grad():
        assert torch.equal(net(x), vector_dncnn[0](x))


def test_qat_refuses_to_fold_batch_statistics(vector_dncnn):
    net, cal, _ = vector_dncnn
    net = copy.deepcopy(net).train()
    qat.attach(net, qat.int8_plan(net, cal))
    with pytest.raises(ValueError, match="QAT folds 'dncnn.3' into 'dncnn.2' .* set frozen_bn: true"):
        net(cal[:2])
    freeze_norm_stats(net)
    assert net(cal[:2]).shape == (2, 1, 40, 40)


def test_config_needs_frozen_bn_and_a_calibration_folder(tmp_path):
    from dynprune.methods.classpruning import Trainer

    with pytest.raises(ValueError, match="qat.enabled folds each branch's BatchNorm .* set frozen_bn: true"):
        tiny_config(tmp_path / "a", qat={"enabled": True})
    cfg = tiny_config(tmp_path / "b", qat={"enabled": True}, frozen_bn=True)   # skimage photos: no folder
    with pytest.raises(ValueError, match=r"qat: int8 calibration needs a folder of clean images .* as qat.calibration"):
        Trainer(cfg)


def test_a_qat_run_trains_resumes_and_deploys_at_int8(tmp_path):
    """A tiny vector16 ClassPruning run fine-tuned with QAT: the resumed run equals the uninterrupted one, and
    its int8 deployment is closer to the simulated model than to the float one."""
    from dynprune.imageio import write_image
    from dynprune.methods.classpruning import Trainer
    from dynprune.plugins.datasets import load_skimage

    folder = tmp_path / "clean"
    for name, img in zip(("camera", "coins"), load_skimage(["camera", "coins"])):
        write_image(img[:, :48, :64], folder / f"{name}.png")
    stage = {"epochs": 1, "steps_per_epoch": 4, "batch_size": 4, "lr_start": 1e-3, "lr_end": 1e-5}
    over = dict(model={"name": "dncnn", "kwargs": {"depth": 4, "width": 16}}, convert={"pattern": "vector16"},
                frozen_bn=True, qat={"enabled": True, "calibration": str(folder), "calibration_count": 2},
                stages={"base": {"epochs": 0}, "classifier": stage, "restoration": stage, "joint": stage})
    full = Trainer(tiny_config(tmp_path / "full", **over))
    assert len(full.qat.layers) == 3   # two 16 -> 16 convs and the 16 -> 1 conv; the 1 -> 16 first stays fp32
    layers = dict(dynamic_layers(full.model.restorer))
    masks = {n: [m.branch_mask(i) for i in range(2)] for n, m in layers.items()}
    weights = {n: m.dense_weight.detach().clone() for n, m in layers.items()}
    full.fit()
    for n, m in layers.items():    # pin_masks: the values trained (lr 1e-3), the kept sets did not move
        assert not torch.equal(m.dense_weight, weights[n])
        assert all(torch.equal(m.branch_mask(i), masks[n][i]) for i in range(2))
    half = Trainer(tiny_config(tmp_path / "half", **over))
    half.run.fit(half, until=3)   # base, classifier, restoration; not joint
    resumed = Trainer(tiny_config(tmp_path / "half", **over), resume=True)
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    net = full.model.restorer.eval()      # fit() returned the float model
    assert all(layer.nm_weight_transform is None for layer in full.qat.layers + [net.get_submodule("dncnn.2")])
    cal = dp.deploy.calibration.calibration_images(folder, full.degrade, count=2)
    int8 = dp.deploy(net, precision="int8", calibration=cal)
    x = cal[:2]
    with torch.no_grad(), use_branch(1):
        ref, dep = net(x), int8(x)
        qat.attach(net, qat.int8_plan(net, cal))
        sim = net(x)
    assert _psnr(sim, dep) > _psnr(ref, dep) + 6


def test_the_released_qat_checkpoint_kept_every_mask_of_the_model_it_fine_tuned():
    """``cp_dncnn_b_vector_qat.pt`` (configs/dncnn_b_vector_qat.yaml) pinned the orderings of
    ``cp_dncnn_b_vector.pt``: its branches keep exactly the same weights, with new values."""
    from pathlib import Path

    from dynprune.layers import pinned_order
    from dynprune.models import load_trained

    root = Path(__file__).resolve().parents[1] / "docs/checkpoints"
    base, _, _ = load_trained(root / "cp_dncnn_b_vector.pt")
    tuned, cfg, _ = load_trained(root / "cp_dncnn_b_vector_qat.pt")
    assert cfg.qat.enabled and cfg.qat.pin_masks and cfg.convert.pattern == "vector16"
    a, b = dict(dynamic_layers(base.restorer)), dict(dynamic_layers(tuned.restorer))
    assert set(a) == set(b) and all(pinned_order(m) is not None for m in b.values())
    for name in a:
        for i in range(2):
            assert torch.equal(a[name].branch_mask(i), b[name].branch_mask(i)), (name, i)
    moved = [float((b[n].dense_weight - a[n].dense_weight).detach().abs().max()) for n in a]
    assert min(moved) > 0
