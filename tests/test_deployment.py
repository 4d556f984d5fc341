"""dynprune.deploy: the deployed model equals the dynamic one on every branch; reports; artifacts; errors."""

import copy
import warnings

import pytest
import timm
import torch
from torch import nn

import dynprune as dp
from dynprune import sparse_cpu
from dynprune.checkpoint import load_file, save_atomic
from dynprune.classifier import DifficultyClassifier
from dynprune.deploy import SparseConv2d, load_deployed, save_deployed

from .conftest import randomize_bn, vector_dncnn_int8


def _max_diff_per_branch(dynamic: nn.Module, deployed: nn.Module, x: torch.Tensor) -> list[float]:
    diffs = []
    with torch.no_grad():
        for i in range(len(deployed.deploy_report.ratios)):
            with dp.use_branch(i):
                diffs.append((dynamic(x) - deployed(x)).abs().max().item())
    return diffs


@pytest.fixture(scope="module")
def dncnn():
    torch.manual_seed(0)
    base = dp.create_model("dncnn", depth=6, width=32).eval()
    randomize_bn(base)
    return dp.convert(base).eval()


def test_dncnn_deploy_equals_dynamic_and_reports_layers(dncnn):
    dep = dp.deploy(dncnn, max_density=0.5)
    x = torch.rand(2, 1, 37, 29)
    assert max(_max_diff_per_branch(dncnn, dep, x)) <= 1e-4
    rep = dep.deploy_report
    middle = [lp for lp in rep.layers if lp.shape == (32, 32, 3, 3)]
    assert len(middle) == 4 and all(lp.paths == ["nm_cpu", "nm_cpu", "onednn"] for lp in middle)
    assert all(lp.folded_norm and lp.relu for lp in middle)          # Conv-BN-ReLU fused
    last = rep.layers[-1]
    assert last.shape == (1, 32, 3, 3) and last.paths == ["onednn"] * 3
    assert "1 output channels < min_out_channels=16" in last.reasons[0]
    assert rep.sparse_layers(0) == [lp.name for lp in middle]
    assert "| dncnn.2 | Conv2d |" in str(rep)
    # BN and ReLU were folded into the deployed convolutions
    assert sum(isinstance(m, SparseConv2d) for m in dep.modules()) == 5   # every converted conv
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in dep.dncnn[2:])


def test_default_max_density_keeps_2of4_on_onednn(dncnn):
    rep = dp.deploy(dncnn).deploy_report
    lp = next(lp for lp in rep.layers if lp.shape == (32, 32, 3, 3))
    assert lp.paths == ["nm_cpu", "onednn", "onednn"] and "max_density=0.25" in lp.reasons[1]


def test_gcanet_deploy_equals_dynamic():
    torch.manual_seed(0)
    net = dp.convert(dp.create_model("gcanet", width=16).eval()).eval()
    dep = dp.deploy(net, max_density=0.5)
    assert max(_max_diff_per_branch(net, dep, torch.rand(1, 3, 24, 20))) <= 1e-4
    rep = dep.deploy_report
    dilated = [lp for lp in rep.layers if lp.paths[0] == "nm_cpu"]
    assert dilated, str(rep)
    reasons = {r for lp in rep.layers for r in lp.reasons if r}
    assert any(r.startswith("stride (2, 2)") for r in reasons) and any("ConvTranspose2d" in r for r in reasons)


def test_timm_resnet_deploy_equals_dynamic():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    randomize_bn(model)
    net = dp.convert(model).eval()
    dep = dp.deploy(net, max_density=0.5)
    x = torch.rand(1, 3, 64, 48)
    diffs = _max_diff_per_branch(net, dep, x)
    with torch.no_grad():
        scale = net(x).abs().max().item()
    assert max(diffs) <= 1e-4 * max(1.0, scale)
    rep = dep.deploy_report
    assert any(lp.type == "Linear" and lp.paths == ["dynamic"] * 3 for lp in rep.layers)
    assert sum(lp.paths[0] == "nm_cpu" for lp in rep.layers) >= 8      # the stride-1 3x3 convs


def test_conv_subclass_with_its_own_forward_stays_dynamic():
    from timm.layers import Conv2dSame

    net = dp.convert(nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), Conv2dSame(16, 16, 3, stride=1)).eval())
    dep = dp.deploy(net, max_density=0.5)
    same = dep.deploy_report.layers[1]
    assert same.paths == ["dynamic"] * 3 and "Conv2dSame has its own forward" in same.reasons[0]
    assert max(_max_diff_per_branch(net, dep, torch.rand(1, 4, 11, 13))) <= 1e-4


def test_partly_converted_layer_runs_dense_on_its_sparse_branches():
    net = dp.convert(nn.Sequential(nn.Conv2d(30, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval())
    dep = dp.deploy(net, max_density=0.5)
    partial, whole = dep.deploy_report.layers
    assert partial.paths == ["onednn"] * 3 and "30 input channels not divisible by M=4" in partial.reasons[0]
    assert whole.paths[:2] == ["nm_cpu", "nm_cpu"]
    assert max(_max_diff_per_branch(net, dep, torch.rand(1, 30, 11, 13))) <= 1e-4


def test_classpruning_deploy_routes_like_the_dynamic_model(dncnn):
    cp = dp.ClassPruning(dncnn, DifficultyClassifier(1, 3)).eval()
    dep = dp.deploy(cp, max_density=0.5)
    x = torch.rand(4, 1, 24, 24)
    branches = torch.tensor([0, 2, 1, 0])
    with torch.no_grad():
        want, _ = cp.route(x, branches)
        got, _ = dep.route(x, branches)
        assert (want - got).abs().max().item() <= 1e-4
        assert (cp(x) - dep(x)).abs().max().item() <= 1e-4
    assert isinstance(dep, dp.ClassPruning) and dep.classifier is not cp.classifier


def test_deploy_errors(dncnn):
    plain = dp.create_model("dncnn", depth=3, width=8)
    with pytest.raises(ValueError, match="holds no dynamic N:M layer"):
        dp.deploy(plain)
    with pytest.raises(ValueError, match=r"unknown deploy backend 'cuda': use 'cpu' \(every registered backend\) or one of \['int8_cpu', 'bf16_cpu', 'vector_cpu', 'nm_cpu', 'onednn'\]"):
        dp.deploy(dncnn, backend="cuda")
    with pytest.raises(ValueError, match="max_density=2"):
        dp.deploy(dncnn, max_density=2)
    dep = dp.deploy(dncnn)
    with pytest.raises(ValueError, match=r"expects 1 input channels, got 3 \(input shape \(1, 3, 8, 8\)\)"):
        dep(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="expects float32 input, got torch.float64"):
        dep(torch.rand(1, 1, 8, 8, dtype=torch.float64))


@pytest.fixture(scope="module")
def deployed_with_kernel(dncnn):
    return dp.deploy(dncnn, max_density=0.5)


def test_without_kernel_runs_dense_with_one_warning(dncnn, deployed_with_kernel, no_kernel):
    with pytest.warns(RuntimeWarning, match="N:M CPU kernel unavailable.*DYNPRUNE_ISA=none"):
        fallback = dp.deploy(dncnn, max_density=0.5)
    assert fallback.deploy_report.kernel == {"available": False, "isa": None, "reason": "DYNPRUNE_ISA=none"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the reason was given once; running warns no more
        x = torch.rand(1, 1, 20, 20)
        assert max(_max_diff_per_branch(deployed_with_kernel, fallback, x)) <= 1e-4


def test_save_requires_a_deployed_model(dncnn, tmp_path):
    with pytest.raises(ValueError, match="was not made by dynprune.deploy"):
        save_deployed(dncnn, tmp_path / "x.pt", {}, {})
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a deployed dynprune model"):
        load_deployed(tmp_path / "other.pt")


@pytest.fixture
def artifact(tmp_path):
    """A deployed tiny ClassPruning model saved to a file, and its outputs on a fixed batch."""
    from dynprune.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run")
    model = build_model(cfg).eval()
    dep = dp.deploy(model, max_density=0.5, min_out_channels=1)
    assert any(lp.paths[0] == "nm_cpu" for lp in dep.deploy_report.layers)
    path = save_deployed(dep, tmp_path / "deployed.pt", cfg.model_dump(mode="json"), model.restorer.arch)
    x = torch.rand(3, 1, 21, 19)
    with torch.no_grad():
        return path, x, dep(x)


def test_artifact_roundtrip_is_bit_identical(artifact):
    path, x, want = artifact
    assert torch.load(path, weights_only=True)["deploy"]["max_density"] == 0.5
    with torch.no_grad():
        assert torch.equal(load_deployed(path)(x), want)


def test_artifact_loads_without_the_kernel_with_a_warning_and_same_outputs(artifact, no_kernel):
    path, x, want = artifact
    with pytest.warns(RuntimeWarning, match="running the dense masked weights instead: DYNPRUNE_ISA=none"):
        fallback = load_deployed(path)
    with torch.no_grad():
        assert (fallback(x) - want).abs().max().item() <= 1e-4


@pytest.fixture(scope="module", params=["vector16", "vector8", "vector32-shared"])
def dncnn_vector(request):
    torch.manual_seed(0)
    base = dp.create_model("dncnn", depth=6, width=32).eval()
    randomize_bn(base)
    return dp.convert(base, pattern=request.param).eval()


def test_vector_pattern_deploys_on_the_vector_kernel_and_equals_dynamic(dncnn_vector):
    dep = dp.deploy(dncnn_vector)
    assert max(_max_diff_per_branch(dncnn_vector, dep, torch.rand(2, 1, 37, 29))) <= 1e-4
    rep = dep.deploy_report
    middle = [lp for lp in rep.layers if lp.shape == (32, 32, 3, 3)]
    assert len(middle) == 4 and all(lp.paths == ["vector_cpu", "vector_cpu", "onednn"] for lp in middle)
    assert rep.sparse_layers(1) == [lp.name for lp in middle] and rep.options["pattern"] == str(
        dncnn_vector.dncnn[2].nm_pattern)
    last = rep.layers[-1]      # 1 output channel: fewer than min_out_channels, the only reason given
    assert last.paths == ["onednn"] * 3 and last.reasons[0] == "1 output channels < min_out_channels=16 (oneDNN faster)"


def test_vector_pattern_backend_choice_follows_options_and_restrictions(dncnn_vector):
    rep = dp.deploy(dncnn_vector, max_density_vector=0.25).deploy_report
    assert rep.layers[1].paths == ["vector_cpu", "onednn", "onednn"] and "max_density_vector=0.25" in rep.layers[1].reasons[1]
    rep = dp.deploy(dncnn_vector, backend="nm_cpu").deploy_report   # the element kernel cannot run this pattern
    assert rep.layers[1].paths == ["onednn"] * 3
    assert "no allowed sparse backend runs pattern vector" in rep.layers[1].reasons[0]
    assert dp.deploy(dncnn_vector, backend=["onednn"]).deploy_report.layers[1].paths == ["onednn"] * 3


def test_vector_pattern_without_kernel_runs_dense(dncnn_vector, no_kernel):
    with pytest.warns(RuntimeWarning, match="N:M CPU kernel unavailable"):
        fallback = dp.deploy(dncnn_vector)
    assert fallback.deploy_report.layers[1].paths[0] == "vector_cpu"     # packed for it, run densely here
    assert max(_max_diff_per_branch(dncnn_vector, fallback, torch.rand(1, 1, 20, 20))) <= 1e-4


def test_vector_artifact_roundtrip_and_pattern_mismatch(tmp_path):
    from dynprune.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run")
    cfg.convert.pattern = "vector8"
    model = build_model(cfg).eval()
    dep = dp.deploy(model, min_out_channels=1)
    assert any("vector_cpu" in lp.paths for lp in dep.deploy_report.layers)
    config = cfg.model_dump(mode="json")
    path = save_deployed(dep, tmp_path / "vec.pt", config, model.restorer.arch)
    x = torch.rand(3, 1, 21, 19)
    with torch.no_grad():
        assert torch.equal(load_deployed(path)(x), dep(x))
    obj = load_file(path)
    obj["config"]["convert"]["pattern"] = "element"       # a file whose parts disagree
    save_atomic(obj, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="packed for mask pattern 'vector8', but its config converts with pattern "
                                         "'element'"):
        load_deployed(tmp_path / "mixed.pt")


def test_a_registered_backend_runs_its_branches(dncnn):
    import torch.nn.functional as F

    from dynprune.deploy.backends import _REGISTRY, Backend, register_backend

    class Halves(Backend):       # a toy backend: the dense weight, stored in float16
        name, sparse = "halves", True

        def supports(self, conv, ratio, pattern, opts):
            return "" if ratio.n == 2 else "halves: 2:4 only"

        def pack(self, weight, mask, bias, ratio, pattern):
            return {"half": weight.half()}

        def run(self, layer, branch, x, buffers):
            y = F.conv2d(x, buffers["half"].float(), buffers["bias"], layer.stride, layer.padding, layer.dilation)
            return F.relu(y) if layer.relu else y

        def dense_weight(self, layer, buffers):
            return buffers["half"].float()

    try:
        register_backend(Halves())
        dep = dp.deploy(dncnn, backend=["halves", "nm_cpu", "onednn"])
        assert dep.deploy_report.layers[1].paths == ["nm_cpu", "halves", "onednn"]
        assert "halves: 2:4 only" in dep.deploy_report.layers[1].reasons[0]
        assert max(_max_diff_per_branch(dncnn, dep, torch.rand(1, 1, 16, 16))) <= 1e-2
        with pytest.raises(TypeError, match="needs a dynprune Backend"):
            register_backend(object())
    finally:
        _REGISTRY.pop("halves", None)


def test_an_artifact_written_before_backends_existed_still_loads(artifact, tmp_path):
    path, x, want = artifact
    obj = load_file(path)
    for key in ("pattern", "paths", "backends", "max_density_vector"):   # what the first format lacked
        obj["deploy"].pop(key)
    torch.save(obj, tmp_path / "old.pt")  # nor had it a digest
    with torch.no_grad():
        assert torch.equal(load_deployed(tmp_path / "old.pt")(x), want)


def test_a_deployed_model_is_inference_only(artifact):
    path, x, want = artifact
    model = dp.load(path)
    model.eval()  # accepted
    with pytest.raises(RuntimeError, match="a deployed model is inference-only .* train the dynamic model instead"):
        model.train()


def _tampered(tmp_path, pattern: str, backend="cpu"):
    """A deployed tiny model of ``pattern`` saved to a file; returns (path, content, layer prefix) for crafting."""
    from dynprune.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run")
    cfg.convert.pattern = pattern
    model = build_model(cfg).eval()
    dep = dp.deploy(model, backend=backend, max_density=0.5, min_out_channels=1)
    path = save_deployed(dep, tmp_path / f"{pattern}.pt", cfg.model_dump(mode="json"), model.restorer.arch)
    name = next(n for n, m in dep.named_modules() if isinstance(m, SparseConv2d) and m.in_channels == 8)
    return load_file(path), f"{name}."


@pytest.mark.parametrize("pattern, key", [("element", "index"), ("vector8", "vindex")])
def test_a_crafted_artifact_is_refused_before_any_kernel_runs(tmp_path, pattern, key):
    """Indices out of range (the element kernel would read outside its input), a group that keeps the
    same channel twice (not N:M), branches that are not nested: each refused at load, with the reason."""
    obj, layer = _tampered(tmp_path, pattern)
    good = {k: v.clone() for k, v in obj["model"].items()}
    k0, k1 = f"{layer}{key}_0", f"{layer}{key}_1"  # branches 1:4 and 2:4
    cases = []
    bad = good[k0].clone()
    bad.view(-1)[0] = 30000 if pattern == "element" else 10 ** 6
    cases.append((bad, "breaks 1:4"))
    bad = good[k1].clone()
    bad[..., 1] = bad[..., 0]
    cases.append((bad, "breaks 2:4"))
    bad = good[k0].clone()
    free = [c for c in range(4) if c not in good[k1].reshape(-1, good[k1].shape[-1])[0, :2].tolist()]
    bad.view(-1, bad.shape[-1])[0, 0] = free[0]  # a channel of group 0 that the 2:4 branch prunes
    cases.append((bad, "keeps weights that branch 2:4 prunes: the branches are not nested"))
    for n, (tensor, reason) in enumerate(cases):
        target = k1 if "2:4" in reason and "nested" not in reason else k0
        obj["model"] = {**good, target: tensor}
        save_atomic(obj, tmp_path / f"bad{n}.pt")  # a crafted file: its digest is recomputed
        with pytest.raises(ValueError, match=f"is damaged or crafted: layer {layer[:-1]}, branch .*{reason}"):
            load_deployed(tmp_path / f"bad{n}.pt")


def test_a_dense_packed_sparse_branch_must_keep_at_most_n_of_m(tmp_path):
    obj, layer = _tampered(tmp_path, "element", backend="onednn")
    obj["model"][f"{layer}weight_0"].fill_(0.5)  # every weight kept on the 1:4 branch
    save_atomic(obj, tmp_path / "dense.pt")
    with pytest.raises(ValueError, match=r"branch 1:4 \(onednn\): weight keeps 4 of 4 in group 0"):
        load_deployed(tmp_path / "dense.pt")


def test_a_checkpoint_with_a_crafted_pinned_order_is_refused(tmp_path):
    from dynprune.layers import dynamic_layers, pin_order
    from dynprune.models import build_model, load_trained

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run")
    model = build_model(cfg)
    name, layer = list(dynamic_layers(model.restorer))[1]
    rank = pin_order(layer)
    state = model.state_dict()
    state[f"restorer.{name}.nm_rank"] = torch.zeros_like(rank)  # every weight rank 0: kept on every branch
    save_atomic({"config": cfg.model_dump(mode="json"), "arch": model.restorer.arch, "model": state}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=f"is damaged or crafted: layer restorer.{name}: pinned N:M order: rank group .* "
                                         "is not a permutation of 0..3"):
        load_trained(tmp_path / "ckpt.pt")


def test_deploy_refuses_a_model_off_the_cpu(dncnn):
    meta = copy.deepcopy(dncnn).to("meta")  # any non-CPU device: the check reads where the tensors live
    with pytest.raises(ValueError, match="packs for the CPU kernels, and this model is on meta: deploy model.cpu()"):
        dp.deploy(meta)


# --- int8 (issue 37) ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dncnn_int8():
    """A vector16 DnCNN (width 32) deployed at fp32 and at int8, calibrated on noisy smooth images."""
    net, cal = vector_dncnn_int8()
    return net, dp.deploy(net), dp.deploy(net, precision="int8", calibration=cal), cal


def test_int8_deploy_runs_every_branch_of_the_wide_layers_in_int8(dncnn_int8):
    net, fp32, int8, cal = dncnn_int8
    rep = int8.deploy_report
    assert rep.options["precision"] == "int8"
    wide = [lp for lp in rep.layers if lp.shape[:2] == (32, 32)]
    assert len(wide) == 4 and all(lp.paths == ["int8_cpu"] * 3 for lp in wide)
    last = [lp for lp in rep.layers if lp.shape[0] == 1]   # 32 -> 1: int8 too (min_out_channels is 1 at int8)
    assert len(last) == 1 and last[0].paths == ["int8_cpu"] * 3
    kept = dp.deploy(net, precision="int8", calibration=cal[:3], min_out_channels=16).deploy_report
    last = [lp for lp in kept.layers if lp.shape[0] == 1][0]
    assert last.paths == ["onednn"] * 3 and "int8_cpu: 1 output channels < min_out_channels=16" in last.reasons[0]
    # calibrated per branch: past the first (its input comes from the unconverted first layer), every int8
    # layer's input range differs between branches
    assert set(rep.calibration) == {lp.name for lp in rep.layers if "int8_cpu" in lp.paths}
    ranges = [rep.calibration[lp.name] for lp in wide]
    assert len(set(ranges[0])) == 1 and all(len(set(rng)) == 3 for rng in ranges[1:])
    x = cal[:4]
    with torch.no_grad():
        for i in range(3):
            with dp.use_branch(i):
                want, got = fp32(x), int8(x)
            err = (got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()
            assert 0 < err < 0.02, (i, float(err))     # int8, not fp32, and within 34 dB of it


def test_int8_layers_chain_in_uint8_and_the_last_writes_float(dncnn_int8):
    _, _, int8, cal = dncnn_int8
    layers = [m for m in int8.modules() if isinstance(m, SparseConv2d) and "int8_cpu" in m.paths]
    acts = [m.branch_buffers(0)["q8act"].tolist() for m in layers]
    assert all(a[2] > 0 for a in acts[:-1]) and acts[-1][2] == 0       # uint8 out, then float out
    for a, b in zip(acts, acts[1:]):
        assert a[2:] == b[:2]                    # written at the next layer's input quantization
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype)) for m in layers]
    with torch.no_grad():
        int8(torch.rand(1, 1, 16, 16))
    for h in hooks:
        h.remove()
    assert seen == [torch.uint8] * (len(layers) - 1) + [torch.float32]
    # the ReLU after the unconverted fp32 first conv is dropped: the int8 layer's quantization clamps at 0
    seq = int8.get_submodule("dncnn")
    assert type(seq[0]) is nn.Conv2d and type(seq[1]) is nn.Identity
    with_relu = copy.deepcopy(int8)
    with_relu.get_submodule("dncnn")[1] = nn.ReLU()
    with torch.no_grad():
        assert float(seq[0](cal[:2]).min()) < 0 and torch.equal(with_relu(cal[:2]), int8(cal[:2]))


def test_int8_keeps_the_layers_it_measures_as_sensitive_in_fp32(dncnn_int8):
    """One channel before dncnn.5 blown up 1000x (its weights in dncnn.5 scaled down to match): the float network
    computes the same, but dncnn.5's per-tensor uint8 input range is spent on that channel. The measured SQNR
    of dncnn.5 drops by > 30 dB on every branch, a threshold below every other layer keeps only dncnn.5's
    affected branches in fp32, and those branches get closer to the fp32 deployment."""
    net, _, _, cal = dncnn_int8
    clean = dp.deploy(net, precision="int8", calibration=cal, int8_min_sqnr=0.0).deploy_report.sensitivity
    net = copy.deepcopy(net)
    bn, conv = net.get_submodule("dncnn.3"), net.get_submodule("dncnn.5")
    with torch.no_grad():
        for norm in [bn, *bn.aux_norms]:
            norm.weight[0] *= 1000
            norm.bias[0] *= 1000
        conv.dense_weight[:, 0] /= 1000
    base = dp.deploy(net, precision="int8", calibration=cal, int8_min_sqnr=0.0)
    sens = base.deploy_report.sensitivity
    assert base.deploy_report.kept_fp32 == [] and set(sens) == set(base.deploy_report.calibration)
    assert all(d < c - 30 for d, c in zip(sens["dncnn.5"], clean["dncnn.5"])), (sens, clean)
    others = min(min(d) for n, d in sens.items() if n != "dncnn.5")
    low = [i for i, d in enumerate(sens["dncnn.5"]) if d < others - 1]
    assert len(low) >= 1
    kept = dp.deploy(net, precision="int8", calibration=cal, int8_min_sqnr=others - 1)
    rep = kept.deploy_report
    assert rep.kept_fp32 == [("dncnn.5", i) for i in low] and "(fp32)" in str(rep)
    paths = next(lp for lp in rep.layers if lp.name == "dncnn.5").paths
    assert [i for i, p in enumerate(paths) if p != "int8_cpu"] == low and paths[-1] in ("int8_cpu", "onednn")
    x = cal[:4]
    fp32 = dp.deploy(net)
    with torch.no_grad():
        for i in low:
            with dp.use_branch(i):
                ref = fp32(x)
                assert (kept(x) - ref).abs().mean() < 0.7 * (base(x) - ref).abs().mean()


def test_int8_deploy_errors(dncnn_int8):
    net, _, _, cal = dncnn_int8
    with pytest.raises(ValueError, match=r"unknown deploy precision 'int4': use one of \['fp32', 'bf16', 'int8'\]"):
        dp.deploy(net, precision="int4")
    with pytest.raises(ValueError, match="needs calibration images"):
        dp.deploy(net, precision="int8")
    with pytest.raises(ValueError, match="int8_min_sqnr applies to precision='int8', not 'bf16'"):
        dp.deploy(net, precision="bf16", int8_min_sqnr=40.0)
    with pytest.raises(ValueError, match=r"calibration images have 3 channels, the model takes 1"):
        dp.deploy(net, precision="int8", calibration=torch.rand(2, 3, 16, 16))
    bad = cal[:2].clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="calibration images must be finite"):
        dp.deploy(net, precision="int8", calibration=bad)


def test_int8_artifact_roundtrip_and_the_reference_path_without_the_kernel(tmp_path, no_lowp_kernels):
    from dynprune.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run")
    cfg.model.kwargs["width"] = 16
    cfg.convert.pattern = "vector16"
    model = build_model(cfg).eval()
    cal = torch.rand(6, 1, 24, 24)
    dep = dp.deploy(model, precision="int8", calibration=cal)
    assert any("int8_cpu" in lp.paths for lp in dep.deploy_report.layers)
    path = save_deployed(dep, tmp_path / "int8.pt", cfg.model_dump(mode="json"), model.restorer.arch)
    assert torch.load(path, weights_only=True)["deploy"]["precision"] == "int8"
    x = torch.rand(3, 1, 21, 19)
    with torch.no_grad():
        want = dep(x)
        assert torch.equal(load_deployed(path)(x), want)
        with no_lowp_kernels():
            with pytest.warns(RuntimeWarning, match="int8 CPU kernel unavailable.*reference arithmetic"):
                ref = load_deployed(path)
            assert torch.equal(ref(x), want)     # the kernel is bit-exact, so the outputs are identical
    obj = load_file(path)
    key = next(k for k in obj["model"] if k.endswith("q8act_0"))
    obj["model"][key] = torch.tensor([-1.0, 0.0, 0.0, 0.0])     # a crafted scale
    save_atomic(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="q8act is not a finite calibration"):
        load_deployed(tmp_path / "bad.pt")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_deploys_the_classifier_folded_and_in_bf16(precision):
    from dynprune.deploy.classifier import LowPrecisionClassifier

    torch.manual_seed(0)
    cp = dp.ClassPruning(dp.convert(dp.create_model("dncnn", depth=4, width=16)), DifficultyClassifier(1, 3))
    for m in cp.classifier.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    cp.eval()
    dep = dp.deploy(cp, precision=precision, calibration=torch.rand(3, 1, 24, 24))
    assert isinstance(dep.classifier, LowPrecisionClassifier) and isinstance(dp.deploy(cp).classifier,
                                                                             DifficultyClassifier)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.classifier.modules())   # folded: 4 convs
    x = torch.rand(4, 1, 48, 40)
    with torch.no_grad():
        want, got = cp.classifier(x), dep.classifier(x)
    assert got.dtype == torch.float32
    err = float((got - want).abs().max() / want.abs().max())
    assert (0 < err < 0.02) if sparse_cpu.has_bf16_kernel() else err < 1e-5, err


def test_bf16_deploy_chains_bf16_and_stays_within_bf16_error(dncnn_int8):
    net, fp32, _, cal = dncnn_int8
    dep = dp.deploy(net, precision="bf16")
    lows = [m for m in dep.modules() if isinstance(m, SparseConv2d) and "bf16_cpu" in m.paths]
    assert len(lows) == 5 and all(m.paths == ["bf16_cpu"] * 3 for m in lows)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype)) for m in lows]
    x = cal[:4]
    with torch.no_grad():
        dep(x[:1])
        assert seen == [torch.bfloat16] * 4 + [torch.float32]
        for h in hooks:
            h.remove()
        for i in range(3):
            with dp.use_branch(i):
                want, got = fp32(x), dep(x)
            err = (got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()
            assert 0 < err < 4e-3, (i, float(err))     # bf16 (8-bit mantissa), fp32 accumulation


def test_bf16_artifact_roundtrip_and_fallback_without_the_instructions(tmp_path, no_lowp_kernels):
    from dynprune.models import build_model

    from .conftest import tiny_config

    cfg = tiny_config(tmp_path / "run")
    cfg.model.kwargs["width"] = 16
    cfg.convert.pattern = "vector16"
    model = build_model(cfg).eval()
    dep = dp.deploy(model, precision="bf16")
    path = save_deployed(dep, tmp_path / "bf16.pt", cfg.model_dump(mode="json"), model.restorer.arch)
    x = torch.rand(3, 1, 21, 19)
    with torch.no_grad():
        want = dep(x)
        assert torch.equal(load_deployed(path)(x), want)
        with no_lowp_kernels():
            with pytest.warns(RuntimeWarning, match="bf16 CPU kernel unavailable"):
                ref = load_deployed(path)
            assert (ref(x) - want).abs().max() <= 2e-2 * want.abs().max()   # bf16 roundings in another order


def test_calibration_images_degrade_every_level_of_a_folder(tmp_path):
    from dynprune.deploy.calibration import calibration_images
    from dynprune.imageio import write_image
    from dynprune.registry import create

    for k in range(3):
        write_image(torch.full((1, 40, 50), 0.1 * (k + 1)), tmp_path / f"{k}.png")
    deg = create("degradations", "gaussian_noise", sigmas=[15, 50])
    cal = calibration_images(tmp_path, deg, count=2, size=32)
    assert cal.shape == (4, 1, 32, 32)                       # 2 images x 2 levels
    noise = (cal - cal.mean((2, 3), keepdim=True)).std((1, 2, 3))
    assert 0.04 < noise[0] < 0.08 and 0.15 < noise[1] < 0.25  # sigma 15 and 50 on the 0-255 scale
    assert calibration_images(tmp_path, deg, size=64).shape == (6, 1, 40, 40)   # the smallest side
    with pytest.raises(FileNotFoundError, match="does not exist"):
        calibration_images(tmp_path / "none", deg)
