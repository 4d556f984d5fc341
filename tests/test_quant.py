"""dynprune.quant and the int8 vector kernel: quantization arithmetic, packing, and bit-exactness."""

import pytest
import torch

from dynprune import quant, sparse_cpu
from dynprune.nm import nm_mask


def test_act_qparams_cover_the_range_with_zero_exact():
    q = quant.act_qparams(0.0, 2.55)
    assert q.zero == 0 and q.scale == pytest.approx(0.01)
    q = quant.act_qparams(-1.0, 1.55)            # signed input: asymmetric, 0 maps to an integer
    assert q.zero == 100 and q.scale == pytest.approx(0.01)
    assert quant.act_qparams(0.5, 0.7) == quant.act_qparams(0.0, 0.7)    # widened to contain 0
    with pytest.raises(ValueError, match=r"activation range \[nan, 1.0\] is not a finite interval"):
        quant.act_qparams(float("nan"), 1.0)


def test_quantize_rounds_half_to_even_and_clamps():
    q = quant.ActQuant(0.5, 3)
    x = torch.tensor([0.25, 0.75, -0.25, 200.0, -9.0, 1.0])   # 0.5, 1.5, -0.5 steps; above 255; below 0
    assert quant.quantize(x, q).tolist() == [3, 5, 3, 255, 0, 5]
    assert torch.equal(quant.dequantize(quant.quantize(x, q), q)[:2], torch.tensor([0.0, 1.0]))


def test_weights_quantize_per_output_channel_symmetrically():
    w = torch.randn(8, 4, 3, 3)
    w[3] = 0
    wq, s = quant.quantize_weight(w)
    assert wq.dtype == torch.int8 and s.shape == (8,) and s[3] == 1
    assert wq.abs().reshape(8, -1).amax(1).tolist() == [127] * 3 + [0] + [127] * 4
    assert (wq.float() * s.view(-1, 1, 1, 1) - w).abs().max() <= s.max() / 2 + 1e-7


@pytest.mark.parametrize("pattern, ratio", [("vector16", "1:4"), ("vector8", "2:4"), ("vector32", "1:2")])
def test_pack_unpack_roundtrip(pattern, ratio):
    w = torch.randn(40, 24, 3, 3)
    mask = nm_mask(w, ratio, pattern=pattern)
    wq, _ = quant.quantize_weight(w * mask)
    values, gidx, wsum = quant.pack_int8_weights(wq, mask, int(pattern[6:]))
    assert torch.equal(quant.unpack_int8(values, gidx, 40, 24, (3, 3)), wq * mask)
    assert wsum[:40].tolist() == (wq.long() * mask).sum((1, 2, 3)).tolist() and not wsum[40:].any()


def test_the_reference_matches_float_convolution_to_quantization_error():
    torch.manual_seed(0)
    x, w, b = torch.rand(1, 16, 12, 12), torch.randn(16, 16, 3, 3) * 0.1, torch.randn(16) * 0.1
    want = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
    a_in, a_out = quant.act_qparams(0, 1), quant.act_qparams(0, float(want.max()))
    wq, ws = quant.quantize_weight(w)
    mask = torch.ones_like(w, dtype=torch.bool)
    p = quant.pack_int8(wq, mask, 16, ws, b, a_in, a_out)
    got = quant.dequantize(quant.qconv_reference(quant.quantize(x, a_in), a_in, wq, p, (1, 1), (1, 1), True, a_out), a_out)
    # worst case: every input off by half a step, every weight by half its channel's step, output by half a step
    bound = (w.abs().sum((1, 2, 3)) * a_in.scale / 2 + 144 * ws / 2).max() + a_out.scale / 2
    err = got - want
    assert err.abs().max() <= bound and err.abs().max() > 0
    assert err.pow(2).mean().sqrt() <= 0.02 * want.pow(2).mean().sqrt()   # >= 34 dB signal to error (37.7 here)
    f = quant.qconv_reference(quant.quantize(x, a_in), a_in, wq, quant.pack_int8(wq, mask, 16, ws, b, a_in, None),
                              (1, 1), (1, 1), True, None)
    assert f.dtype == torch.float32 and (f - want).abs().max() <= bound - a_out.scale / 2


needs_int8 = pytest.mark.skipif(not sparse_cpu.has_int8_kernel(),
                                reason="the int8 kernel needs AVX-512 VNNI + VBMI and the built extension; this "
                                       "machine runs only the reference path")

CASES = [  # cin, cout, k, ratio, V, pad, dilation, relu, uint8 output, input zero point
    (64, 64, 3, "1:4", 16, 1, 1, True, True, 0), (64, 64, 3, "2:4", 16, 1, 1, True, False, 0),
    (64, 64, 3, "4:4", 16, 1, 1, False, True, 7), (64, 40, 3, "1:4", 16, 1, 1, True, True, 0),
    (64, 64, 3, "1:4", 8, 2, 2, True, True, 5), (64, 64, 3, "2:4", 32, 0, 1, False, False, 3),
    (32, 48, 5, "2:4", 16, 2, 1, True, True, 0), (128, 64, 3, "1:4", 16, 1, 1, True, True, 0),
    (12, 16, 1, "1:4", 16, 0, 1, True, False, 9), (64, 64, 3, "1:2", 16, 1, 1, True, True, 0),
    (24, 20, 3, "2:8", 8, 1, 1, False, True, 128)]


@needs_int8
@pytest.mark.parametrize("cin, cout, k, ratio, v, pad, dil, relu, out_u8, zin", CASES)
def test_int8_kernel_is_bit_exact_against_the_reference(cin, cout, k, ratio, v, pad, dil, relu, out_u8, zin):
    torch.manual_seed(cin * cout + k)
    w = torch.randn(cout, cin, k, k)
    mask = nm_mask(w, ratio, pattern=f"vector{v}")
    wq, ws = quant.quantize_weight(w * mask)
    a_in = quant.ActQuant(0.02, zin)
    a_out = quant.ActQuant(0.05, 0 if relu else 3) if out_u8 else None
    p = quant.pack_int8(wq, mask, v, ws, torch.randn(cout), a_in, a_out)
    x = torch.randint(0, 256, (2, cin, 13, 37), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    want = quant.qconv_reference(x, a_in, wq * mask, p, (pad, pad), (dil, dil), relu, a_out)
    got = sparse_cpu.vec_qconv2d(x, p, cout, (k, k), (pad, pad), (dil, dil), zin, a_out and a_out.zero, relu)
    assert got.dtype == want.dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)


def _packed(channels: int, ratio: str, act_out: quant.ActQuant | None) -> quant.QConvPacked:
    """A random vector16 3x3 layer of ``channels`` in and out, packed for input zero point 0."""
    w = torch.randn(channels, channels, 3, 3)
    mask = nm_mask(w, ratio, pattern="vector16")
    wq, ws = quant.quantize_weight(w * mask)
    return quant.pack_int8(wq, mask, 16, ws, torch.zeros(channels), quant.ActQuant(0.02, 0), act_out)


@needs_int8
def test_int8_kernel_threads_give_identical_outputs():
    p = _packed(32, "2:4", quant.ActQuant(0.02, 0))
    x = torch.randint(0, 256, (1, 32, 29, 31), dtype=torch.uint8)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(sparse_cpu.vec_qconv2d(x, p, 32, (3, 3), (1, 1), (1, 1), 0, 0, True))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])


@needs_int8
def test_int8_kernel_rejects_inputs_that_do_not_fit():
    p = _packed(16, "1:4", None)
    with pytest.raises(RuntimeError, match="expected a 4-D Byte CPU input"):
        sparse_cpu.vec_qconv2d(torch.rand(1, 16, 8, 8), p, 16, (3, 3), (1, 1), (1, 1), 0, None, True)
    with pytest.raises(RuntimeError, match=r"input-channel indices must lie in \[0, 8\)"):
        sparse_cpu.vec_qconv2d(torch.zeros(1, 8, 8, 8, dtype=torch.uint8), p, 16, (3, 3), (1, 1), (1, 1), 0, None, True)
