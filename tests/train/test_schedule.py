"""The warm-up + cosine schedule: today's closed form, linear warm-up, resumed and stretched phases."""

import pytest
import torch

from dynprune.train.schedule import WarmupCosine, cosine_lr


def _rates(sched_steps, run_steps, warmup=0, lr0=1e-3, lr1=1e-5, state=None):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=lr0)
    sched = WarmupCosine(opt, sched_steps, lr1, warmup)
    if state is not None:
        opt.load_state_dict(state[0])
        sched.load_state_dict(state[1])
    rates = []
    for _ in range(run_steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates, (opt.state_dict(), sched.state_dict())


def test_without_warmup_it_is_the_cosine_every_run_used():
    rates, _ = _rates(10, 10)
    assert rates == [cosine_lr(s, 9, 1e-3, 1e-5) for s in range(10)]  # bit for bit
    assert rates[0] == 1e-3 and rates[-1] == pytest.approx(1e-5)


def test_warmup_rises_linearly_then_anneals_over_the_rest():
    rates, _ = _rates(12, 12, warmup=3)
    assert rates[:3] == pytest.approx([1e-3 / 4, 2e-3 / 4, 3e-3 / 4])
    assert rates[3:] == [cosine_lr(s, 8, 1e-3, 1e-5) for s in range(9)]
    with pytest.raises(ValueError, match="warmup_steps=12 must be smaller than the phase's 12 steps"):
        _rates(12, 1, warmup=12)


def test_a_resumed_phase_continues_and_an_extended_one_follows_the_longer_curve():
    whole, _ = _rates(10, 10)
    head, state = _rates(10, 4)
    tail, _ = _rates(10, 6, state=state)
    assert head + tail == whole
    longer, _ = _rates(20, 16, state=state)  # 10 -> 20 steps after step 4: the 20-step curve from step 4 on
    assert longer == [cosine_lr(s, 19, 1e-3, 1e-5) for s in range(4, 20)]
