"""The N:M CPU kernel against F.conv2d on the masked weight, on both ISA paths."""

import pytest
import torch
import torch.nn.functional as F

from dynprune import sparse_cpu
from dynprune.nm import nm_mask

ISAS = pytest.mark.parametrize("isa", ["avx512", "avx2"], indirect=True)

# (Cin, Cout, kernel, padding, dilation, N, M, H, W, batch): 3x3 and 1x1, odd sizes, Cin not a multiple of
# the lanes, Cout not a multiple of the lanes, dilation, a 5x5 with padding 2, an unpadded ("valid") conv.
SHAPES = [
    (64, 64, 3, 1, 1, 1, 4, 17, 23, 2),
    (64, 64, 3, 1, 1, 2, 4, 9, 8, 1),
    (20, 13, 3, 2, 2, 1, 4, 11, 7, 3),
    (36, 40, 1, 0, 1, 2, 4, 5, 9, 1),
    (8, 24, 5, 2, 1, 1, 4, 12, 12, 1),
    (48, 16, 3, 0, 1, 2, 4, 20, 31, 1),
    (32, 17, (1, 3), (0, 1), 1, 1, 2, 6, 10, 2),
    (64, 32, 3, 1, 1, 3, 8, 7, 9, 1),
]


def _case(cin, cout, k, pad, dil, n, m, h, w, b):
    k = (k, k) if isinstance(k, int) else k
    pad = (pad, pad) if isinstance(pad, int) else pad
    weight, bias = torch.randn(cout, cin, *k), torch.randn(cout)
    mask = nm_mask(weight, f"{n}:{m}")
    x = torch.randn(b, cin, h, w).contiguous(memory_format=torch.channels_last)
    return weight, bias, mask, x, k, pad, (dil, dil)


def test_compress_roundtrip_keeps_exactly_the_mask():
    weight = torch.randn(16, 12, 3, 3)
    mask = nm_mask(weight, "1:4")
    values, index = sparse_cpu.compress(weight, mask, 1, 4)
    assert values.shape == index.shape == (16, 9, 3) and index.dtype == torch.int16
    assert torch.equal(sparse_cpu.decompress(values, index, 12, (3, 3)), weight * mask)
    with pytest.raises(ValueError, match="expected exactly 2"):
        sparse_cpu.compress(weight, mask, 2, 4)
    with pytest.raises(ValueError, match="divisible by M=8"):
        sparse_cpu.compress(weight, nm_mask(weight, "1:4"), 1, 8)


@ISAS
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])) + f"_{s[5]}of{s[6]}")
def test_kernel_equals_conv2d_on_masked_weight(isa, shape):
    weight, bias, mask, x, k, pad, dil = _case(*shape)
    n, m = shape[5], shape[6]
    values, index = sparse_cpu.compress(weight, mask, n, m)
    packed = sparse_cpu.pack_for_kernel(values, index, bias, weight.shape[1], n, m, sparse_cpu.lanes())
    ref = F.conv2d(x, weight * mask, bias, padding=pad, dilation=dil)
    for relu in (False, True):
        y = sparse_cpu.nm_conv2d(x, packed, weight.shape[0], k, pad, dil, relu=relu)
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        want = ref.relu() if relu else ref
        assert (y - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    # an NCHW input gives the same result (one copy inside)
    y2 = sparse_cpu.nm_conv2d(x.contiguous(), packed, weight.shape[0], k, pad, dil)
    assert torch.allclose(y2, ref, atol=1e-4 * max(1.0, ref.abs().max().item()))


@ISAS
def test_kernel_threads_give_identical_output(isa):
    weight, bias, mask, x, k, pad, dil = _case(64, 64, 3, 1, 1, 1, 4, 33, 21, 2)
    values, index = sparse_cpu.compress(weight, mask, 1, 4)
    packed = sparse_cpu.pack_for_kernel(values, index, bias, 64, 1, 4, sparse_cpu.lanes())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sparse_cpu.nm_conv2d(x, packed, 64, k, pad, dil)
        torch.set_num_threads(2)
        two = sparse_cpu.nm_conv2d(x, packed, 64, k, pad, dil)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # rows are independent: no reduction across threads
    ext = sparse_cpu.kernel()
    try:
        torch.set_num_threads(2)
        assert (ext.num_workers(481), ext.num_workers(1)) == (2, 1)   # threads follow torch.set_num_threads
        torch.set_num_threads(1)
        assert ext.num_workers(481) == 1
    finally:
        torch.set_num_threads(threads)


def test_pack_rejects_m_that_does_not_fit_the_lanes():
    weight = torch.randn(16, 32, 3, 3)
    values, index = sparse_cpu.compress(weight, nm_mask(weight, "1:32"), 1, 32)
    with pytest.raises(ValueError, match="M=32 does not divide"):
        sparse_cpu.pack_for_kernel(values, index, None, 32, 1, 32, 16)


def test_forced_unknown_isa_is_a_clear_error(no_kernel, monkeypatch):
    monkeypatch.setenv("DYNPRUNE_ISA", "sse9")
    with pytest.raises(ValueError, match="DYNPRUNE_ISA='sse9' is not one of"):
        sparse_cpu.kernel_status()
