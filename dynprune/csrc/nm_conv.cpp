// dynprune: PyTorch binding of the direct N:M sparse convolution (inference only, fp32, channels last).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "nm_conv.h"

namespace {

// Whether the CPU runs the int8 kernel's instructions: AVX-512 VNNI dot products and VBMI byte permutes.
bool cpu_has_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi");
}

// Whether the CPU runs the bf16 kernel's instructions: AVX-512 BF16 dot products (and BW/VL).
bool cpu_has_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

// 512 when the CPU runs AVX-512F, 256 for AVX2 + FMA, 0 otherwise.
int64_t cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 256;
  return 0;
}

// Threads a call over `items` output rows uses: at::get_num_threads() (torch.set_num_threads), at most one per row.
int64_t num_workers(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
}

// Output rows [0, items) split evenly over at::get_num_threads() workers (torch.set_num_threads), on torch's own
// OpenMP pool: the extension builds with -fopenmp and resolves libgomp.so.1 to the copy torch loaded (one runtime,
// one pool). Its own std::threads used to compete with torch's OpenMP workers, which spin for a while after
// every torch operation: a deployed DnCNN-B (int8, 1:4, 2 threads) ran 133 ms against 116 ms without the spin.
template <class F>
void split_rows(int64_t items, const F& rows) {
  const int64_t workers = num_workers(items);
  at::parallel_for(0, items, (items + workers - 1) / workers, [&](int64_t begin, int64_t end) { rows(begin, end); });
}

void check_input(const torch::Tensor& x, int64_t isa, const char* what) {
  TORCH_CHECK(isa == 512 || isa == 256, what, ": isa must be 512 or 256, got ", isa);
  TORCH_CHECK(isa <= cpu_isa(), what, ": this CPU does not run the ", isa, "-bit kernel");
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              what, ": expected a 4-D float32 CPU input, got ", x.sizes(), " ", x.scalar_type());
}

// y = relu?(conv2d(x, W) + bias), W packed by dynprune.sparse_cpu.pack_for_kernel for this ISA's lanes.
torch::Tensor nm_conv2d(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& index,
                        const torch::Tensor& bias, int64_t cout, int64_t kh, int64_t kw, int64_t pad_h,
                        int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t J, bool relu, int64_t isa) {
  check_input(x, isa, "nm_conv2d");
  const int64_t L = isa == 512 ? 16 : 8;
  const auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t chunks = (cin + L - 1) / L, blocks = (cout + L - 1) / L;
  TORCH_CHECK(values.scalar_type() == at::kFloat && values.is_contiguous() &&
                  values.numel() == blocks * kh * kw * chunks * J * L,
              "nm_conv2d: values do not match (", blocks, ", ", kh * kw, ", ", chunks, ", ", J, ", ", L, ")");
  TORCH_CHECK(index.scalar_type() == at::kInt && index.is_contiguous() && index.numel() == values.numel(),
              "nm_conv2d: index must be contiguous int32 shaped like values");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == blocks * L,
              "nm_conv2d: bias must hold ", blocks * L, " floats");
  const int64_t ho = h + 2 * pad_h - dil_h * (kh - 1), wo = w + 2 * pad_w - dil_w * (kw - 1);
  TORCH_CHECK(ho > 0 && wo > 0, "nm_conv2d: input ", h, "x", w, " is smaller than the kernel's extent");
  auto y = at::empty({n, cout, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto zeros = at::zeros({chunks * L}, x.options());

  dynprune::NMConvParams p;
  p.x = xc.data_ptr<float>();
  p.y = y.data_ptr<float>();
  p.values = values.data_ptr<float>();
  p.index = index.data_ptr<int32_t>();
  p.bias = bias.data_ptr<float>();
  p.zeros = zeros.data_ptr<float>();
  p.n = n; p.h = h; p.w = w; p.cin = cin; p.ho = ho; p.wo = wo; p.cout = cout;
  p.kh = int(kh); p.kw = int(kw); p.pad_h = int(pad_h); p.pad_w = int(pad_w);
  p.dil_h = int(dil_h); p.dil_w = int(dil_w);
  p.chunks = int(chunks); p.J = int(J); p.relu = relu;
  split_rows(n * ho, [&](int64_t begin, int64_t end) {
    if (isa == 512) dynprune::nm_conv_rows_avx512(p, begin, end);
    else dynprune::nm_conv_rows_avx2(p, begin, end);
  });
  return y;
}

// y = relu?(conv2d(x, W) + bias) for the vector N:M pattern, W packed by dynprune.sparse_cpu.pack_vector:
// values (blocks, taps, K, V) float32, index (blocks, taps, K) int32 input channels, bias (blocks * V).
torch::Tensor vec_conv2d(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& index,
                         const torch::Tensor& bias, int64_t cout, int64_t kh, int64_t kw, int64_t pad_h,
                         int64_t pad_w, int64_t dil_h, int64_t dil_w, bool relu, int64_t isa) {
  check_input(x, isa, "vec_conv2d");
  const auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(values.dim() == 4 && values.scalar_type() == at::kFloat && values.is_contiguous(),
              "vec_conv2d: values must be contiguous float32 (blocks, taps, K, V), got ", values.sizes());
  const int64_t blocks = values.size(0), K = values.size(2), V = values.size(3);
  TORCH_CHECK(V == 8 || V == 16 || V == 32, "vec_conv2d: V must be 8, 16 or 32, got ", V);
  TORCH_CHECK(kh >= 1 && kh <= 16 && kw >= 1, "vec_conv2d: kernel height must be 1..16, got ", kh);
  TORCH_CHECK(values.size(1) == kh * kw && blocks == (cout + V - 1) / V && K >= 1,
              "vec_conv2d: values ", values.sizes(), " do not fit cout=", cout, " and a ", kh, "x", kw, " kernel");
  TORCH_CHECK(index.scalar_type() == at::kInt && index.is_contiguous() && index.dim() == 3 &&
                  index.size(0) == blocks && index.size(1) == kh * kw && index.size(2) == K,
              "vec_conv2d: index must be contiguous int32 (blocks, taps, K) = (", blocks, ", ", kh * kw, ", ", K, ")");
  TORCH_CHECK(index.numel() == 0 || (index.min().item<int32_t>() >= 0 && index.max().item<int32_t>() < cin),
              "vec_conv2d: input-channel indices must lie in [0, ", cin, ")");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == blocks * V,
              "vec_conv2d: bias must hold ", blocks * V, " floats");
  const int64_t ho = h + 2 * pad_h - dil_h * (kh - 1), wo = w + 2 * pad_w - dil_w * (kw - 1);
  TORCH_CHECK(ho > 0 && wo > 0, "vec_conv2d: input ", h, "x", w, " is smaller than the kernel's extent");
  auto y = at::empty({n, cout, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));

  dynprune::VecConvParams p;
  p.x = xc.data_ptr<float>();
  p.y = y.data_ptr<float>();
  p.values = values.data_ptr<float>();
  p.index = index.data_ptr<int32_t>();
  p.bias = bias.data_ptr<float>();
  p.n = n; p.h = h; p.w = w; p.cin = cin; p.ho = ho; p.wo = wo; p.cout = cout;
  p.kh = int(kh); p.kw = int(kw); p.pad_h = int(pad_h); p.pad_w = int(pad_w);
  p.dil_h = int(dil_h); p.dil_w = int(dil_w);
  p.V = int(V); p.K = int(K); p.relu = relu;
  split_rows(n * ho, [&](int64_t begin, int64_t end) {
    if (isa == 512) dynprune::vec_conv_rows_avx512(p, begin, end);
    else dynprune::vec_conv_rows_avx2(p, begin, end);
  });
  return y;
}

// What the int8 and bf16 convolutions share: the checks of x (4-D CPU, `xtype`), values (blocks, taps, K/G, V, G)
// of `xtype`'s weight type and gidx (taps, cb/ES) of `itype`, and p's geometry (shape, strides, the dense flag:
// K == cin and every block's index is 0..cin-1). Returns x in channels-last memory (it must outlive the call).
torch::Tensor lowp_setup(dynprune::VecQConvParams& p, const char* what, const torch::Tensor& x, at::ScalarType xtype,
                         const torch::Tensor& values, at::ScalarType wtype, int64_t G, const torch::Tensor& gidx,
                         at::ScalarType itype, int64_t es, int64_t cout, int64_t kh, int64_t kw, int64_t pad_h,
                         int64_t pad_w, int64_t dil_h, int64_t dil_w) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == xtype && x.device().is_cpu(),
              what, ": expected a 4-D ", xtype, " CPU input, got ", x.sizes(), " ", x.scalar_type());
  auto xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t cin = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(values.dim() == 5 && values.scalar_type() == wtype && values.is_contiguous() && values.size(4) == G,
              what, ": values must be contiguous ", wtype, " (blocks, taps, K/", G, ", V, ", G, "), got ", values.sizes());
  const int64_t blocks = values.size(0), K = values.size(2) * G, V = values.size(3);
  TORCH_CHECK(V == 8 || V == 16 || V == 32, what, ": V must be 8, 16 or 32, got ", V);
  TORCH_CHECK(kh >= 1 && kh <= 16 && kw >= 1 && kw <= 16, what, ": kernel sides must be 1..16, got ", kh, "x", kw);
  TORCH_CHECK(values.size(1) == kh * kw && blocks == (cout + V - 1) / V && K >= G,
              what, ": values ", values.sizes(), " do not fit cout=", cout, " and a ", kh, "x", kw, " kernel");
  const int64_t cb = (blocks * K * es + 63) / 64 * 64;
  TORCH_CHECK(gidx.scalar_type() == itype && gidx.is_contiguous() && gidx.dim() == 2 && gidx.size(0) == kh * kw &&
                  gidx.size(1) == cb / es, what, ": gidx must be contiguous ", itype, " (", kh * kw, ", ", cb / es, ")");
  const auto idx = gidx.to(at::kInt);
  TORCH_CHECK(cin <= 256 && (gidx.numel() == 0 || (idx.min().item<int32_t>() >= 0 && idx.max().item<int32_t>() < cin)),
              what, ": input-channel indices must lie in [0, ", cin, ") and cin <= 256");
  const int64_t ho = h + 2 * pad_h - dil_h * (kh - 1), wo = w + 2 * pad_w - dil_w * (kw - 1);
  TORCH_CHECK(ho > 0 && wo > 0, what, ": input ", h, "x", w, " is smaller than the kernel's extent");
  p.x = xc.data_ptr();
  p.values = values.data_ptr();
  p.gidx = static_cast<const uint8_t*>(gidx.data_ptr());
  p.n = x.size(0); p.h = h; p.w = w; p.cin = cin; p.ho = ho; p.wo = wo; p.cout = cout;
  p.kh = int(kh); p.kw = int(kw); p.pad_h = int(pad_h); p.pad_w = int(pad_w);
  p.dil_h = int(dil_h); p.dil_w = int(dil_w);
  p.V = int(V); p.K = int(K); p.cb = int(cb);
  p.dense = K == cin && at::equal(idx.narrow(1, 0, blocks * K),
                                  at::arange(cin, idx.options()).repeat({blocks}).unsqueeze(0).expand({kh * kw, blocks * K}));
  return xc;
}

// The int8 vector-pattern convolution (vec_qconv_impl.h): x (n, cin, h, w) uint8 channels last with zero point zin,
// values (blocks, taps, K/4, V, 4) int8, gidx (taps, cb) uint8, acc0/scale/shift (blocks * V). Returns uint8
// (zero point zout) when out_u8, else float32, (n, cout, ho, wo) channels last.
torch::Tensor vec_qconv2d(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& gidx,
                          const torch::Tensor& acc0, const torch::Tensor& scale, const torch::Tensor& shift,
                          int64_t cout, int64_t kh, int64_t kw, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                          int64_t dil_w, int64_t zin, int64_t zout, bool relu, bool out_u8) {
  TORCH_CHECK(cpu_has_vnni(), "vec_qconv2d: this CPU lacks AVX-512 VNNI/VBMI");
  dynprune::VecQConvParams p;
  const auto xc = lowp_setup(p, "vec_qconv2d", x, at::kByte, values, at::kChar, 4, gidx, at::kByte, 1, cout, kh, kw,
                             pad_h, pad_w, dil_h, dil_w);
  const int64_t n = values.size(0) * values.size(3);
  for (const auto* t : {&acc0, &scale, &shift})
    TORCH_CHECK(t->is_contiguous() && t->numel() == n, "vec_qconv2d: acc0/scale/shift must hold ", n);
  TORCH_CHECK(acc0.scalar_type() == at::kInt && scale.scalar_type() == at::kFloat && shift.scalar_type() == at::kFloat,
              "vec_qconv2d: acc0 int32, scale and shift float32");
  TORCH_CHECK(zin >= 0 && zin <= 255 && zout >= 0 && zout <= 255, "vec_qconv2d: zero points must lie in 0..255");
  auto y = at::empty({p.n, cout, p.ho, p.wo}, x.options().dtype(out_u8 ? at::kByte : at::kFloat)
                                                .memory_format(at::MemoryFormat::ChannelsLast));
  p.y = y.data_ptr();
  p.acc0 = acc0.data_ptr<int32_t>();
  p.scale = scale.data_ptr<float>();
  p.shift = shift.data_ptr<float>();
  p.zin = int(zin); p.zout = int(zout); p.relu = relu; p.out_low = out_u8;
  split_rows(p.n * p.ho, [&](int64_t begin, int64_t end) { dynprune::vec_qconv_rows_vnni(p, begin, end); });
  return y;
}

// The bf16 vector-pattern convolution (vec_qconv_impl.h): x (n, cin, h, w) bfloat16 channels last, values
// (blocks, taps, K/2, V, 2) bfloat16, gidx (taps, cb/2) int16, bias (blocks * V) float32. Returns bfloat16 when
// out_bf16, else float32, (n, cout, ho, wo) channels last.
torch::Tensor vec_bf16conv2d(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& gidx,
                             const torch::Tensor& bias, int64_t cout, int64_t kh, int64_t kw, int64_t pad_h,
                             int64_t pad_w, int64_t dil_h, int64_t dil_w, bool relu, bool out_bf16) {
  TORCH_CHECK(cpu_has_bf16(), "vec_bf16conv2d: this CPU lacks AVX-512 BF16");
  dynprune::VecQConvParams p;
  const auto xc = lowp_setup(p, "vec_bf16conv2d", x, at::kBFloat16, values, at::kBFloat16, 2, gidx, at::kShort, 2,
                             cout, kh, kw, pad_h, pad_w, dil_h, dil_w);
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == values.size(0) * values.size(3),
              "vec_bf16conv2d: bias must hold ", values.size(0) * values.size(3), " floats");
  auto y = at::empty({p.n, cout, p.ho, p.wo}, x.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat)
                                                .memory_format(at::MemoryFormat::ChannelsLast));
  p.y = y.data_ptr();
  p.acc0 = bias.data_ptr<float>();
  p.scale = nullptr;
  p.shift = nullptr;
  p.zin = 0; p.zout = 0; p.relu = relu; p.out_low = out_bf16;
  split_rows(p.n * p.ho, [&](int64_t begin, int64_t end) { dynprune::vec_bf16conv_rows(p, begin, end); });
  return y;
}

// uint8 quantization of a float32 tensor (any shape, memory format kept): clamp(round(x * inv_scale) + zero, 0, 255).
torch::Tensor quantize_u8(const torch::Tensor& x, double inv_scale, int64_t zero) {
  TORCH_CHECK(cpu_has_vnni(), "quantize_u8: this CPU lacks AVX-512 VNNI/VBMI");
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "quantize_u8: expected a float32 CPU tensor");
  TORCH_CHECK(zero >= 0 && zero <= 255, "quantize_u8: zero point must lie in 0..255");
  const auto fmt = x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                                                    : at::MemoryFormat::Contiguous;
  const auto xc = x.contiguous(fmt);
  auto y = at::empty(x.sizes(), x.options().dtype(at::kByte).memory_format(fmt));
  const int64_t n = x.numel(), items = std::max<int64_t>(1, n / 65536);
  const float* src = xc.data_ptr<float>();
  uint8_t* dst = y.data_ptr<uint8_t>();
  split_rows(items, [&](int64_t begin, int64_t end) {
    const int64_t a = begin * n / items, b = end * n / items;
    dynprune::quantize_u8_vnni(src + a, dst + a, b - a, float(inv_scale), int(zero));
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", &cpu_isa, "SIMD width the CPU runs: 512 (AVX-512F), 256 (AVX2+FMA) or 0");
  m.def("num_workers", &num_workers, "threads a call over that many output rows uses");
  m.def("nm_conv2d", &nm_conv2d, "direct N:M sparse conv2d: stride 1, groups 1, fp32 channels last");
  m.def("cpu_has_vnni", &cpu_has_vnni, "whether the CPU runs the int8 kernel (AVX-512 VNNI and VBMI)");
  m.def("cpu_has_bf16", &cpu_has_bf16, "whether the CPU runs the bf16 kernel (AVX-512 BF16)");
  m.def("vec_bf16conv2d", &vec_bf16conv2d, "bf16 vector-pattern N:M conv2d: fp32 accumulation, channels last");
  m.def("quantize_u8", &quantize_u8, "uint8 quantization of a float32 tensor (rounded half to even)");
  m.def("vec_qconv2d", &vec_qconv2d, "int8 vector-pattern N:M conv2d: u8 x s8, requantized, channels last");
  m.def("vec_conv2d", &vec_conv2d, "direct vector-pattern N:M conv2d: stride 1, groups 1, fp32 channels last");
}
