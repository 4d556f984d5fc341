import pytest
import torch

from dynprune.nm import (NMRatio, apply_mask, nm_mask, nm_order, order_keeps_top, pack_order, parse_ratios,
                         unpack_order)


@pytest.mark.parametrize("text,expected", [("2:4", (2, 4)), (" 1 : 4 ", (1, 4)), ("4:4", (4, 4)), ((2, 8), (2, 8))])
def test_parse(text, expected):
    r = NMRatio.parse(text)
    assert (r.n, r.m) == expected and str(r) == f"{expected[0]}:{expected[1]}"


@pytest.mark.parametrize("bad", ["0:4", "5:4", "2-4", "a:b", "2:", "", "2:4:8", "-1:4"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="N:M ratio"):
        NMRatio.parse(bad)


def test_parse_ratios_orders_and_rejects_duplicates():
    assert [str(r) for r in parse_ratios(["4:4", "1:4", "2:4"])] == ["1:4", "2:4", "4:4"]
    with pytest.raises(ValueError, match="duplicate"):
        parse_ratios(["2:4", "1:2"])
    with pytest.raises(ValueError, match="empty"):
        parse_ratios([])


def test_mask_keeps_top_n_per_group_along_input_channels():
    w = torch.randn(6, 8, 3, 3)
    for n in (1, 2, 3, 4):
        m = nm_mask(w, f"{n}:4", axis=1)
        groups = m.permute(0, 2, 3, 1).reshape(-1, 2, 4)
        assert (groups.sum(-1) == n).all()
        # kept weights are the n largest magnitudes of their group
        a = w.abs().permute(0, 2, 3, 1).reshape(-1, 2, 4)
        kept_min = torch.where(groups, a, torch.inf).amin(-1)
        dropped_max = torch.where(groups, -torch.inf, a).amax(-1)
        assert (kept_min >= dropped_max).all()


def test_masks_are_nested_and_ties_deterministic():
    w = torch.randn(16, 32, 3, 3)
    m1, m2, m4 = (nm_mask(w, f"{n}:4") for n in (1, 2, 4))
    assert (m1 <= m2).all() and (m2 <= m4).all() and m4.all()
    tied = torch.ones(1, 4, 1, 1)
    assert nm_mask(tied, "2:4")[0, :, 0, 0].tolist() == [True, True, False, False]


def test_transposed_axis_and_divisibility_error():
    w = torch.randn(8, 3, 2, 2)  # ConvTranspose: (Cin, Cout, kh, kw), reduction over dim 0
    m = nm_mask(w, "1:4", axis=0)
    assert (m.reshape(2, 4, 3, 2, 2).sum(1) == 1).all()
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(torch.randn(4, 6), "2:4", axis=1)


@pytest.mark.parametrize("mode", ["sr-ste", "ste", "masked"])
def test_gradients(mode):
    w = torch.randn(4, 8, requires_grad=True)
    m = nm_mask(w, "2:4")
    upstream = torch.randn(4, 8)
    out = apply_mask(w, m, mode)
    assert torch.equal(out, w.detach() * m)
    out.backward(upstream)
    expected = upstream * m if mode == "masked" else upstream  # SR-STE's decay enters at the update (test_srste)
    torch.testing.assert_close(w.grad, expected, rtol=0, atol=0)


def test_mixed_m_rejected_dense_any_k_accepted():
    with pytest.raises(ValueError, match=r"\['1:4', '3:8', '8:8'\] mix M=4, 8"):
        parse_ratios(["1:4", "3:8", "8:8"])
    assert [str(r) for r in parse_ratios(["2:4", "1:4", "8:8"])] == ["1:4", "2:4", "8:8"]


def test_partial_mask_covers_divisible_part_only():
    w = torch.randn(5, 10, 3, 3)  # K=10, M=4: N:M on the first 8 channels, channels 8-9 dense
    m = nm_mask(w, "1:4", axis=1, partial=True)
    assert m[:, 8:].all()
    assert torch.equal(m[:, :8], nm_mask(w[:, :8], "1:4", axis=1))
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(w, "1:4", axis=1)
    with pytest.raises(ValueError, match="length 3"):
        nm_mask(torch.randn(2, 3), "1:4", axis=1, partial=True)


@pytest.mark.parametrize("m", [2, 4, 8, 16, 32])
def test_pack_order_round_trip_and_size(m):
    w = torch.randn(7, 3 * m, 3)  # odd element count: padding in the packed form
    rank = nm_order(w, 1, m)
    packed = pack_order(rank)
    assert torch.equal(unpack_order(packed, rank.shape), rank)
    bits = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8}[m]
    assert packed.numel() == -(-rank.numel() * bits // 8) and packed.dtype == torch.uint8


def test_order_keeps_top_detects_changes_and_allows_zero_ties():
    w = torch.randn(8, 16)
    rank = nm_order(w, 1, 4)
    assert order_keeps_top(w, rank, 2, 1)
    w2 = w.clone()
    w2[0, :4] = torch.tensor([0.1, 0.2, 3.0, 4.0])  # a different top-2 in one group
    assert not order_keeps_top(w2, rank, 2, 1)
    z = torch.zeros(8, 16)  # all-zero groups: any choice gives the same masked weight
    assert order_keeps_top(z, nm_order(w, 1, 4), 2, 1)
    tie = torch.ones(1, 4)  # a tie between non-zero weights: only the stable order is accepted
    assert not order_keeps_top(tie, torch.tensor([3, 2, 1, 0], dtype=torch.uint8).view(1, 1, 4, 1), 2, 1)


def test_unknown_mode():
    with pytest.raises(ValueError, match="sr-ste"):
        apply_mask(torch.ones(4), torch.ones(4, dtype=torch.bool), "bogus")


def test_pattern_names_parse_and_bad_ones_list_the_valid():
    from dynprune.nm import ELEMENT, NMPattern

    assert NMPattern.parse("element") is ELEMENT and str(NMPattern.parse("vector")) == "vector16"
    assert NMPattern.parse("vector8-shared") == NMPattern(8, True) and str(NMPattern(32)) == "vector32"
    with pytest.raises(ValueError, match=r"V=12 is not supported: V must be one of \[8, 16, 32\]"):
        NMPattern.parse("vector12")
    with pytest.raises(ValueError, match="unknown mask pattern 'blocky': valid patterns are 'element', 'vector8'"):
        NMPattern.parse("blocky")
    with pytest.raises(ValueError, match="no taps to share"):
        NMPattern(1, True)
    with pytest.raises(TypeError, match="expected a name like 'element'"):
        NMPattern.parse(16)


def _block_topn(w, n, m, v, shared):
    """The vector mask written out loop by loop: per block of v rows, per tap (or all taps), per group of m
    input channels, keep the n channels of largest block L2 norm (ties: lower channel)."""
    cout, cin = w.shape[:2]
    taps = w.reshape(cout, cin, -1)
    keep = torch.zeros_like(taps, dtype=torch.bool)
    for b0 in range(0, cout, v):
        block = taps[b0:b0 + v]
        for t in range(taps.shape[2]):
            norm = block.square().sum(dim=(0, 2)) if shared else block[:, :, t].square().sum(0)
            for g in range(0, cin, m):
                order = sorted(range(g, g + m), key=lambda c: (-float(norm[c]), c))
                keep[b0:b0 + v, order[:n], t] = True
    return keep.reshape(w.shape)


@pytest.mark.parametrize("v,shared,cout", [(16, False, 32), (8, True, 24), (16, False, 20), (32, False, 5)])
def test_vector_mask_equals_the_block_l2_rule(v, shared, cout):
    w = torch.randn(cout, 16, 3, 3)
    pattern = f"vector{v}" + ("-shared" if shared else "")
    for n in (1, 2, 3):
        mask = nm_mask(w, f"{n}:4", pattern=pattern)
        assert torch.equal(mask, _block_topn(w, n, 4, v, shared))
        assert bool((mask.reshape(cout, 4, 4, 9).sum(2) == n).all())        # exactly N per group, every row
    one, two = nm_mask(w, "1:4", pattern=pattern), nm_mask(w, "2:4", pattern=pattern)
    assert bool((one <= two).all())                                           # nested


def test_vector_mask_of_a_transposed_weight_blocks_its_output_axis():
    w = torch.randn(16, 32, 3, 3)              # ConvTranspose2d(16, 32): (Cin, Cout, kh, kw), reduction axis 0
    mask = nm_mask(w, "1:4", axis=0, pattern="vector16")
    assert torch.equal(mask.transpose(0, 1), _block_topn(w.transpose(0, 1), 1, 4, 16, False))
