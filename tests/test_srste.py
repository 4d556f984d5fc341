"""SR-STE's decay enters once per optimizer update (Zhou et al. 2021, eq. 4), whatever the number of uses
of a weight, of micro-batches, or the loss scale."""

import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune import srste
from dynprune.nm import nm_mask


class Shared(nn.Module):
    """One conv applied ``uses`` times (RESCAN's stages, SRN's scales, USRNet's unrolled prior)."""

    def __init__(self, uses: int):
        super().__init__()
        self.conv, self.uses = nn.Conv2d(8, 8, 3, padding=1), uses

    def forward(self, x):
        for _ in range(self.uses):
            x = torch.tanh(self.conv(x))
        return x


def _step(uses=1, micro=1, scaler=False, decay=0.1, lr=0.5, branches=(0,), bf16=False, skip=False):
    """One SGD update (after a step the GradScaler skips, with ``skip``); ``bf16``: the forward under CPU
    bf16 autocast. Returns (weight before, weight after)."""
    torch.manual_seed(0)
    net = dp.convert(Shared(uses), ["1:4", "2:4", "4:4"], srste_decay=decay)
    w0 = net.conv.dense_weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gs = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16) if scaler else None
    xs = torch.randn(micro, 2, 8, 6, 6)
    for attempt in range(2 if skip else 1):
        opt.zero_grad(set_to_none=True)
        for x in xs:
            for b in branches:
                with dp.use_branch(b), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = net(x).square().mean() / micro
                (gs.scale(loss) if gs else loss).backward()
        if skip and attempt == 0:
            net.conv.dense_weight.grad.view(-1)[0] = float("inf")  # an overflow: the scaler skips this update
        if gs:
            gs.step(opt)
            gs.update()
        else:
            opt.step()
        if skip and attempt == 0:
            assert torch.equal(net.conv.dense_weight, w0)  # skipped: no update, and no decay either
    return w0, net.conv.dense_weight.detach()


@pytest.mark.parametrize("case", [dict(uses=3), dict(micro=4), dict(scaler=True), dict(uses=2, micro=3, scaler=True),
                                  dict(bf16=True), dict(uses=2, bf16=True, scaler=True),
                                  dict(scaler=True, skip=True), dict(uses=2, micro=2, scaler=True, skip=True)])
def test_decay_once_per_update(case):
    w0, with_decay = _step(**case)
    _, without = _step(**case, decay=0.0)
    pruned = ~nm_mask(w0, "1:4")
    expected = -0.5 * 0.1 * pruned * w0  # lr * lambda_w * (1 - m) * W, once
    torch.testing.assert_close(with_decay - without, expected, rtol=1e-4, atol=1e-6)
    assert (with_decay - without).abs().sum() > 0


def test_each_nested_branch_adds_its_own_term_once():
    w0, with_decay = _step(branches=(0, 1, 2, 0))  # branch 0 twice, the dense branch has no decay
    _, without = _step(branches=(0, 1, 2, 0), decay=0.0)
    expected = -0.5 * 0.1 * ((~nm_mask(w0, "1:4")).float() + (~nm_mask(w0, "2:4")).float()) * w0
    torch.testing.assert_close(with_decay - without, expected, rtol=1e-4, atol=1e-6)


def test_record_cleared_and_manual_update():
    net = dp.convert(Shared(2), ["2:4", "4:4"], srste_decay=0.1)
    with dp.use_branch(0):
        net(torch.randn(1, 8, 5, 5)).sum().backward()
    assert srste.pending(net) == {"conv": [0]}
    g = net.conv.dense_weight.grad.clone()
    assert srste.apply_decay(net) == 1
    w = net.conv.dense_weight.detach()
    torch.testing.assert_close(net.conv.dense_weight.grad - g, 0.1 * ~nm_mask(w, "2:4") * w)
    assert srste.pending(net) == {} and srste.apply_decay(net) == 0
    with torch.no_grad(), dp.use_branch(0):  # inference records nothing
        net(torch.randn(1, 8, 5, 5))
    assert srste.pending(net) == {}


def test_other_optimizer_does_not_apply_decay():
    net = dp.convert(Shared(1), ["2:4", "4:4"], srste_decay=0.1)
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with dp.use_branch(0):
        net(torch.randn(1, 8, 5, 5)).sum().backward()
    other.step()
    assert srste.pending(net) == {"conv": [0]}
