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
    _check_kernel(lambda xx, relu: sparse_cpu.nm_conv2d(xx, packed, weight.shape[0], k, pad, dil, relu=relu),
                  x, F.conv2d(x, weight * mask, bias, padding=pad, dilation=dil))


def _check_kernel(run, x, ref):
    """``run(x, relu)`` equals ``ref`` (ReLU'd for relu=True) to float tolerance, channels_last out, also for an
    NCHW input (one copy inside)."""
    for relu in (False, True):
        y = run(x, relu)
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        want = ref.relu() if relu else ref
        assert (y - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert (run(x.contiguous(), False) - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


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


# Vector pattern: (Cin, Cout, kernel, padding, dilation, N, M, H, W, batch, V, shared): every V, both tap
# modes, Cout a multiple of V, not one (partial block), below V (one partial block), Cin 64 (the compiled
# channel stride) and not, dilation, 5x5, 1x1, unpadded, rows shorter than a tile, narrow images.
VECTOR_SHAPES = [
    (64, 64, 3, 1, 1, 1, 4, 17, 41, 2, 16, False),
    (64, 64, 3, 1, 1, 2, 4, 9, 30, 1, 8, False),
    (64, 64, 3, 1, 1, 1, 4, 13, 29, 1, 32, True),
    (48, 40, 3, 1, 1, 2, 4, 11, 19, 2, 16, False),
    (64, 1, 3, 1, 1, 1, 4, 10, 22, 1, 16, False),
    (32, 24, 5, 2, 1, 1, 4, 12, 40, 1, 8, True),
    (64, 64, 3, 2, 2, 2, 4, 15, 33, 1, 16, False),
    (64, 48, 3, 0, 1, 1, 4, 9, 9, 1, 16, False),
    (64, 70, 1, 0, 1, 2, 4, 5, 31, 1, 32, False),
    (16, 32, 3, 1, 1, 3, 8, 3, 4, 1, 32, False),
    (64, 64, 3, 1, 1, 1, 4, 4, 2, 1, 16, False),
]


def _vector_case(cin, cout, k, pad, dil, n, m, h, w, b, v, shared):
    weight, bias = torch.randn(cout, cin, k, k), torch.randn(cout)
    mask = nm_mask(weight, f"{n}:{m}", pattern=f"vector{v}" + ("-shared" if shared else ""))
    x = torch.randn(b, cin, h, w).contiguous(memory_format=torch.channels_last)
    return weight, bias, mask, x


def test_compress_vector_roundtrip_and_layout():
    weight = torch.randn(40, 32, 3, 3)
    mask = nm_mask(weight, "1:4", pattern="vector16")
    values, index, bias = sparse_cpu.compress_vector(weight, mask, 16, torch.arange(40.0))
    assert values.shape == (3, 9, 8, 16) and index.shape == (3, 9, 8) and index.dtype == torch.int32
    assert bias.shape == (48,) and torch.equal(bias[:40], torch.arange(40.0)) and not bias[40:].any()
    assert not values[2, :, :, 8:].any()                                   # the partial block's padding
    assert bool((index.diff(dim=-1) > 0).all())                            # ascending input channels
    assert torch.equal(sparse_cpu.decompress_vector(values, index, 40, 32, (3, 3)), weight * mask)
    with pytest.raises(ValueError, match="not a vector16 pattern"):
        sparse_cpu.compress_vector(weight, nm_mask(weight, "1:4"), 16)
    with pytest.raises(ValueError, match="V=12 is not one of 8, 16, 32"):
        sparse_cpu.compress_vector(weight, mask, 12)


@ISAS
@pytest.mark.parametrize("shape", VECTOR_SHAPES,
                         ids=lambda s: "x".join(map(str, s[:3])) + f"_{s[5]}of{s[6]}_v{s[10]}" + "s" * s[11])
def test_vector_kernel_equals_conv2d_on_masked_weight(isa, shape):
    weight, bias, mask, x = _vector_case(*shape)
    k, pad, dil = (shape[2],) * 2, (shape[3],) * 2, (shape[4],) * 2
    packed = sparse_cpu.compress_vector(weight, mask, shape[10], bias)
    _check_kernel(lambda xx, relu: sparse_cpu.vec_conv2d(xx, packed, weight.shape[0], k, pad, dil, relu=relu),
                  x, F.conv2d(x, weight * mask, bias, padding=pad, dilation=dil))


@ISAS
def test_vector_kernel_threads_give_identical_outputs(isa):
    weight, bias, mask, x = _vector_case(64, 64, 3, 1, 1, 1, 4, 23, 37, 2, 16, False)
    packed = sparse_cpu.compress_vector(weight, mask, 16, bias)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sparse_cpu.vec_conv2d(x, packed, 64, (3, 3), (1, 1), (1, 1))
        torch.set_num_threads(2)
        two = sparse_cpu.vec_conv2d(x, packed, 64, (3, 3), (1, 1), (1, 1))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)          # rows are split, each output computed the same way


def test_vector_kernel_rejects_bad_packing():
    if not sparse_cpu.kernel_status()["available"]:
        pytest.skip(f"N:M CPU kernel cannot run here: {sparse_cpu.kernel_status()['reason']}")
    weight, bias, mask, x = _vector_case(64, 32, 3, 1, 1, 1, 4, 8, 8, 1, 16, False)
    values, index, b = sparse_cpu.compress_vector(weight, mask, 16, bias)
    bad = index.clone()
    bad[0, 0, 0] = 64
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, 64\)"):
        sparse_cpu.vec_conv2d(x, (values, bad, b), 32, (3, 3), (1, 1), (1, 1))
    with pytest.raises(RuntimeError, match="do not fit cout=48"):
        sparse_cpu.vec_conv2d(x, (values, index, b), 48, (3, 3), (1, 1), (1, 1))


def test_each_environment_and_torch_version_builds_into_its_own_folder(monkeypatch, tmp_path):
    import sys

    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path))
    here = sparse_cpu.build_dir()
    assert here.parent == tmp_path / "kernels" and here == sparse_cpu.build_dir()       # stable
    monkeypatch.setattr(sys, "prefix", "/elsewhere/venv")
    other_env = sparse_cpu.build_dir()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert len({here, other_env, sparse_cpu.build_dir()}) == 3


def test_vector_isa_is_measured_once_per_machine_and_shape(monkeypatch, tmp_path):
    import json

    status = sparse_cpu.kernel_status()
    if not status["available"]:
        pytest.skip(f"N:M CPU kernel cannot run here: {status['reason']}")
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(sparse_cpu, "_PROBES", {})
    weight, bias, mask, _ = _vector_case(32, 16, 3, 1, 1, 1, 4, 8, 8, 1, 16, False)
    packed = sparse_cpu.compress_vector(weight, mask, 16, bias)
    isa = sparse_cpu.vector_isa(packed, 32, 16, (3, 3), (1, 1))
    if status["isa"] != "avx512":                     # nothing to choose: the active path, untimed
        assert isa == 256 and not (tmp_path / "vector_isa.json").exists()
        return
    assert isa in (512, 256)
    saved = json.loads((tmp_path / "vector_isa.json").read_text())
    assert list(saved.values()) == [isa] and sparse_cpu.cpu_name() in next(iter(saved))

    def no_timing(*args, **kwargs):
        raise AssertionError("the cached answer must not be measured again")

    monkeypatch.setattr(sparse_cpu, "vec_conv2d", no_timing)
    monkeypatch.setattr(sparse_cpu, "_PROBES", {})            # a new process: read back from the file
    assert sparse_cpu.vector_isa(packed, 32, 16, (3, 3), (1, 1)) == isa


@ISAS
def test_a_forced_isa_is_never_probed_away(isa):
    weight, bias, mask, _ = _vector_case(32, 16, 3, 1, 1, 1, 4, 8, 8, 1, 16, False)
    packed = sparse_cpu.compress_vector(weight, mask, 16, bias)
    assert sparse_cpu.vector_isa(packed, 32, 16, (3, 3), (1, 1)) == {"avx512": 512, "avx2": 256}[isa]


needs_bf16 = pytest.mark.skipif(not sparse_cpu.has_bf16_kernel(),
                                reason="the bf16 kernel needs AVX-512 BF16 and the built extension")


@needs_bf16
@pytest.mark.parametrize("cin, cout, k, ratio, v, pad, dil, relu, out_bf16", [
    (64, 64, 3, "1:4", 16, 1, 1, True, True), (64, 64, 3, "2:4", 16, 1, 1, True, False),
    (64, 64, 3, "4:4", 16, 1, 1, False, False), (64, 40, 3, "1:4", 16, 1, 1, True, False),
    (64, 64, 3, "1:4", 8, 2, 2, True, False), (64, 64, 3, "2:4", 32, 0, 1, False, True),
    (32, 48, 5, "2:4", 16, 2, 1, True, False), (128, 64, 3, "1:4", 16, 1, 1, True, False),
    (12, 16, 1, "1:4", 16, 0, 1, True, False), (20, 16, 3, "1:4", 16, 1, 1, False, False)])
def test_bf16_kernel_matches_exact_products_within_fp32_accumulation(cin, cout, k, ratio, v, pad, dil, relu, out_bf16):
    torch.manual_seed(cin + cout + k)
    w, b = torch.randn(cout, cin, k, k), torch.randn(cout)
    mask = nm_mask(w, ratio, pattern=f"vector{v}")
    packed = sparse_cpu.pack_bf16(w * mask, mask, v, b)
    x = torch.randn(2, cin, 13, 37).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wb = (w * mask).to(torch.bfloat16).double()
    want = F.conv2d(x.double(), wb, b.double(), padding=pad, dilation=dil)
    want = want.clamp_min(0) if relu else want
    got = sparse_cpu.vec_bf16conv2d(x, packed, cout, (k, k), (pad, pad), (dil, dil), relu, out_bf16)
    assert got.dtype == (torch.bfloat16 if out_bf16 else torch.float32)
    scale = F.conv2d(x.double().abs(), wb.abs(), b.double().abs(), padding=pad, dilation=dil)
    # fp32 accumulation of exact bf16 products: a few fp32 ulps of the magnitude; a bf16 output half a bf16 ulp
    rel = ((got.double() - want).abs() / (scale + 1e-30)).max().item()
    assert rel <= (2 ** -8 if out_bf16 else 2 ** -20)
