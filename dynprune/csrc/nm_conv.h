// dynprune: direct N:M sparse 2-D convolution for CPU inference (fp32, stride 1, groups 1, channels last).
// Shared by the ISA kernels (compiled without ATen, so no inline ATen code is built for a wider ISA)
// and the PyTorch binding.
#pragma once
#include <cstdint>

namespace dynprune {

// One convolution call. Activations are NHWC (a channels_last tensor's memory). Packed weights
// (dynprune/sparse_cpu.py, pack_for_kernel): for every block of L output channels (L = SIMD lanes),
// tap, chunk of L input channels and kept entry j < J, one L-lane vector of weight values and one of
// input-channel indices inside the chunk (int32, no widening shuffle in the loop): lane o of entry j multiplies input channel idx[j][o]
// of the chunk into output channel o.
struct NMConvParams {
  const float* x;         // (n, h, w, cin)
  float* y;               // (n, ho, wo, cout)
  const float* values;    // (ocb, taps, chunks, J, L)
  const int32_t* index;   // (ocb, taps, chunks, J, L)
  const float* bias;      // (ocb * L), zero-padded; never null
  const float* zeros;     // chunks * L zeros, read for taps that fall on the zero padding
  int64_t n, h, w, cin, ho, wo, cout;
  int kh, kw, pad_h, pad_w, dil_h, dil_w;
  int chunks, J;
  bool relu;
};

// One call of the vector-pattern convolution (dynprune/sparse_cpu.py, pack_vector): blocks of V output
// channels keep the same K input channels per tap; per block, tap and kept entry e < K one input channel
// index[e] and the block's V weights values[e][0..V).
struct VecConvParams {
  const float* x;         // (n, h, w, cin)
  float* y;               // (n, ho, wo, cout)
  const float* values;    // (blocks, taps, K, V), zero-padded to blocks * V output channels
  const int32_t* index;   // (blocks, taps, K): input channel, 0 <= index < cin
  const float* bias;      // (blocks * V), zero-padded; never null
  int64_t n, h, w, cin, ho, wo, cout;
  int kh, kw, pad_h, pad_w, dil_h, dil_w;  // kh <= 16
  int V, K;
  bool relu;
};

// One call of a low-precision vector-pattern convolution (arithmetic in vec_qconv_impl.h): int8 (u8
// activations with zero point zin x s8 weights, dynprune/quant.py) or bf16 (dynprune/sparse_cpu.py, pack_bf16).
// Elements are ES bytes (1 or 2); a group of 4 bytes (4 int8 or 2 bf16 elements) is one broadcast.
struct VecQConvParams {
  const void* x;          // (n, h, w, cin) u8 or bf16
  void* y;                // (n, ho, wo, cout): u8 / bf16 when out_low, else float
  const void* values;     // (blocks, taps, K / G, V, G): per group of kept entries, G weights per output channel
  const uint8_t* gidx;    // (taps, cb / ES) u8 (int8) or u16 (bf16): input channel of each compacted element
  const void* acc0;       // (blocks * V) initial accumulators: int32 -zin * sum_w (int8) or float bias (bf16)
  const float* scale;     // (blocks * V) int8 requantization multipliers (unused for bf16)
  const float* shift;     // (blocks * V) int8 requantization offsets (unused for bf16)
  int64_t n, h, w, cin, ho, wo, cout;
  int kh, kw, pad_h, pad_w, dil_h, dil_w;  // kh, kw <= 16
  int V, K, cb;            // K a multiple of G; cb bytes of compacted elements per pixel and tap (64-byte chunks)
  bool dense;              // every block keeps channels 0..cin-1 in order (K == cin): read the pixels directly
  int zin, zout;
  bool relu, out_low;
};

// Work items are output rows (batch index, output row), item = b * ho + oy; [begin, end).
void nm_conv_rows_avx512(const NMConvParams& p, int64_t begin, int64_t end);
void nm_conv_rows_avx2(const NMConvParams& p, int64_t begin, int64_t end);
void vec_conv_rows_avx512(const VecConvParams& p, int64_t begin, int64_t end);
void vec_conv_rows_avx2(const VecConvParams& p, int64_t begin, int64_t end);
void vec_qconv_rows_vnni(const VecQConvParams& p, int64_t begin, int64_t end);
void quantize_u8_vnni(const float* x, uint8_t* y, int64_t n, float inv_scale, int zero);
void vec_bf16conv_rows(const VecQConvParams& p, int64_t begin, int64_t end);

}  // namespace dynprune
