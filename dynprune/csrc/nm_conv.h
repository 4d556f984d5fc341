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

// Work items are output rows (batch index, output row), item = b * ho + oy; [begin, end).
void nm_conv_rows_avx512(const NMConvParams& p, int64_t begin, int64_t end);
void nm_conv_rows_avx2(const NMConvParams& p, int64_t begin, int64_t end);
void vec_conv_rows_avx512(const VecConvParams& p, int64_t begin, int64_t end);
void vec_conv_rows_avx2(const VecConvParams& p, int64_t begin, int64_t end);

}  // namespace dynprune
