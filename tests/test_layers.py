"""Dynamic N:M layers: the mask cache never goes stale, never leaks inference tensors, costs little
memory; converted models pickle and deepcopy."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune.layers import dynamic_layers
from dynprune.nm import nm_mask

from .conftest import requires_compile


def _fresh_branch_out(model, x, branch):
    """The branch output of a freshly converted copy holding ``model``'s current weights."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = dp.convert(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)))
    fresh.load_state_dict(state)
    with torch.no_grad(), dp.use_branch(branch):
        return fresh(x)


@pytest.mark.parametrize("change", ["data_mul", "data_copy", "data_assign", "param_no_grad", "load_state_dict"])
def test_mask_cache_cannot_go_stale(change, mask_path):
    net = dp.convert(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)))
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad(), dp.use_branch("1:4"):
        before = net(x)
    layer, new = net[0], torch.randn_like(net[0].dense_weight)
    if change == "data_mul":  # does not bump the parameter's version counter
        layer.dense_weight.data.mul_(new.sign())
    elif change == "data_copy":
        layer.dense_weight.data.copy_(new)
    elif change == "data_assign":
        layer.dense_weight.data = new
    elif change == "param_no_grad":
        with torch.no_grad():
            layer.dense_weight.copy_(new)
    else:
        net.load_state_dict({**net.state_dict(), "0.weight": new})
    with torch.no_grad(), dp.use_branch("1:4"):
        after = net(x)
        assert torch.equal(layer.weight, layer.dense_weight * nm_mask(layer.dense_weight, "1:4"))
    assert not torch.equal(after, before)
    assert torch.equal(after, _fresh_branch_out(net, x, "1:4"))


def test_cache_made_in_inference_mode_does_not_break_autograd(mask_path):
    net = dp.convert(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)))
    x = torch.randn(2, 8, 6, 6)
    with torch.inference_mode(), dp.use_branch(0):
        net(x)
    with dp.use_branch(0):
        net(x).square().mean().backward()  # raised "Inference tensors cannot be saved for backward"
    assert net[0].dense_weight.grad is not None


def test_eval_memory_is_bounded_whatever_the_number_of_branches(mask_path):
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Conv2d(64, 64, 3))
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    net = dp.convert(model, ["1:4", "2:4", "3:4", "4:4"])
    with torch.no_grad():
        for b in range(4):
            with dp.use_branch(b):
                net(torch.randn(1, 64, 8, 8))
    cached = sum(l._nm_order_cache[0].numel() for _, l in dynamic_layers(net))
    assert cached == sum(l.dense_weight.numel() for _, l in dynamic_layers(net)) // 4  # 2 bits per weight
    total = dense_bytes + cached
    assert total <= 1.25 * dense_bytes


def test_pickle_and_deepcopy_round_trip():
    net = dp.convert(nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))).eval()
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad(), dp.use_branch(0):
        ref = net(x)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net), torch.load(buf, weights_only=False)):
        assert type(clone[0]).__name__ == "NMConv2d" and type(clone[1]).__name__ == "VariableBatchNorm2d"
        assert clone[0]._nm_order_cache is None  # caches are not pickled
        with torch.no_grad(), dp.use_branch(0):
            assert torch.equal(clone(x), ref)


def _small(pattern="element"):
    return dp.convert(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 8, 3, padding=1)), pattern=pattern).eval()


@requires_compile
@pytest.mark.parametrize("pattern", ["element", "vector8"])
def test_compile_default_backend_recompiles_once_per_branch(pattern):
    from torch._dynamo.utils import counters

    net, x = _small(pattern), torch.randn(1, 8, 12, 12)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(net, fullgraph=True)
    with torch.no_grad():
        for _ in range(2):  # a second round reuses the graphs
            for b in range(3):
                with dp.use_branch(b):
                    torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 3


@requires_compile
def test_unknown_branch_inside_compiled_region():
    net, x = _small(), torch.randn(1, 8, 6, 6)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")
    with torch.no_grad(), dp.use_branch(5), pytest.raises(IndexError, match="branch index 5 out of range for 3"):
        compiled(x)
    with torch.no_grad(), dp.use_branch("3:4"), pytest.raises(ValueError, match="3:4 is not one of the ratios"):
        compiled(x)
    torch._dynamo.reset()
    strict = torch.compile(net, backend="eager", fullgraph=True)  # dynamo wraps it, our message inside
    with torch.no_grad(), dp.use_branch(-4), pytest.raises(RuntimeError, match="branch index -4 out of range for 3"):
        strict(x)


@pytest.mark.parametrize("pattern", ["element", "vector8"])
def test_onnx_export_every_branch(pattern):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    net, x = _small(pattern), torch.randn(1, 8, 12, 12)
    for b in ("1:4", "2:4", "4:4"):
        with torch.no_grad(), dp.use_branch(b):
            program = torch.onnx.export(net, (x,), dynamo=True, verbose=False)
            ref = net(x)
        session = ort.InferenceSession(program.model_proto.SerializeToString())
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), ref, rtol=1e-5, atol=1e-5)


def test_torch_func_grad_matches_autograd():
    from torch.func import functional_call, grad

    net, x = _small(), torch.randn(2, 8, 6, 6)  # eval: BatchNorm does not update its statistics in place
    params = {k: v.detach() for k, v in net.named_parameters()}
    with dp.use_branch(0):
        g = grad(lambda p: functional_call(net, p, (x,)).square().mean())(params)
        net(x).square().mean().backward()
    torch.testing.assert_close(g["0.weight"], net[0].dense_weight.grad)


def test_exported_branch_scripts_with_torchscript():
    import warnings

    net, x = _small(), torch.randn(1, 8, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in recent torch
        scripted = torch.jit.script(dp.export_branch(net, "1:4"))
    with torch.no_grad(), dp.use_branch("1:4"):
        assert torch.equal(scripted(x), net(x))


def test_export_branch_and_audit_errors():
    with pytest.raises(ValueError, match="holds no dynamic N:M layer"):
        dp.export_branch(nn.Sequential(nn.Conv2d(8, 8, 3)), 0)
    net = _small()
    with pytest.raises(RuntimeError, match=r"audit: tracing Sequential on input \(1, 3, 8, 8\) failed: .*channels"):
        dp.audit(net, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("m", [2, 4, 8, 16])
def test_mask_kernel_matches_torch_ops(m):
    from dynprune import mask_cpu
    from dynprune.nm import mask_from_order, nm_order, pack_order

    if not mask_cpu.available():
        pytest.skip("the mask kernel cannot build here (no C compiler)")
    w = torch.randn(6, 3 * m, 3, 3)
    w[0, :m] = 0.5  # ties: the lower index ranks first
    w[1, :m] = 0.0
    rank = nm_order(w, 1, m)
    packed, dims = mask_cpu.order(w, 1, m)
    assert torch.equal(packed, pack_order(rank)) and dims == tuple(rank.shape)
    for n in range(1, m):
        out, keep, repaired = mask_cpu.apply(w, packed, dims, n, True, True)
        mask = mask_from_order(rank, n, w.shape, 1)
        assert torch.equal(keep, mask) and torch.equal(out, w * mask)
    # a tie between non-zero weights at the boundary fails the check: that group is re-ranked (to the same
    # stable order) on every call; all-zero groups pass
    assert mask_cpu.apply(w, packed, dims, 1, True, False)[2] == 9
    changed = w.clone()
    changed[2, :m] = torch.arange(m, dtype=torch.float32).view(m, 1, 1) * 10  # the last index is the new top
    stale = int((nm_order(w, 1, m)[2, 0, m - 1] != 0).sum())  # groups of row 2 whose top-1 moves
    out, keep, repaired = mask_cpu.apply(changed, packed, dims, 1, True, True)
    assert stale > 0 and repaired == 9 + stale and torch.equal(keep, nm_mask(changed, f"1:{m}"))
    for n in range(2, m):  # each n re-ranks the groups whose top n moved: then the whole order is fresh
        assert torch.equal(mask_cpu.apply(changed, packed, dims, n, True, True)[1], nm_mask(changed, f"{n}:{m}"))
    assert torch.equal(packed, pack_order(nm_order(changed, 1, m)))  # re-ranked in place


@pytest.mark.parametrize("mode", ["sr-ste", "masked"])
def test_kernel_and_torch_paths_train_alike(mode, mask_path):
    torch.manual_seed(0)
    net = dp.convert(nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 8, 3)), mask_grad=mode)
    with dp.use_branch(0):
        net(torch.randn(2, 8, 7, 7)).square().mean().backward()
    g = net[0].dense_weight.grad
    mask = nm_mask(net[0].dense_weight, "1:4")
    assert g.abs().sum() > 0
    if mode == "masked":
        assert (g[~mask] == 0).all()
    else:
        assert (g[~mask] != 0).any()


def test_use_branch_with_a_model_checks_it_at_once():
    with pytest.raises(ValueError, match="use_branch: Sequential holds no dynamic N:M layer.*dynprune.convert"):
        with dp.use_branch("1:4", nn.Sequential(nn.Conv2d(8, 8, 3))):
            pass
    net = _small()
    with pytest.raises(ValueError, match="3:4"):
        with dp.use_branch("3:4", net):
            pass
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad(), dp.use_branch("1:4", net):
        assert torch.equal(net(x), dp.export_branch(net, "1:4")(x))


def test_frozen_norm_stats_train_what_eval_runs():
    """freeze_norm_stats: in training mode each branch normalizes with its own running statistics (eval mode's
    output exactly, statistics not updated) while the affine parameters get gradients; unfrozen, batch
    statistics again."""
    from dynprune.layers import freeze_norm_stats

    torch.manual_seed(0)
    net = dp.convert(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 4, 3, padding=1)))
    norm = net[1]
    norm.running_mean.uniform_(-1, 1), norm.aux_norms[0].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 4, 6, 6)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert freeze_norm_stats(net) == 1
    for branch in ("1:4", "4:4"):
        with dp.use_branch(branch):
            train = net.train()(x)
            train.square().mean().backward()
            with torch.no_grad():
                assert torch.equal(train.detach(), net.eval()(x))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # nothing updated
    assert norm.weight.grad.abs().sum() > 0 and norm.aux_norms[0].weight.grad.abs().sum() > 0
    assert freeze_norm_stats(net, False) == 1
    with dp.use_branch("1:4"):
        assert not torch.allclose(net.train()(x), net.eval()(x))
