// AVX2 + FMA instantiation of the N:M convolution (8 lanes: 8 output channels, chunks of 8 inputs).
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "nm_conv_impl.h"
#include "vec_conv_impl.h"

namespace dynprune {
namespace {

struct V256 {
  using reg = __m256;
  using ireg = __m256i;
  static constexpr int L = 8;
  static inline __m256i head(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline reg load_part(const float* p, int n) { return _mm256_maskload_ps(p, head(n)); }
  static inline ireg load_index(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static inline reg permute(ireg i, reg x) { return _mm256_permutevar8x32_ps(x, i); }
  static inline reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg relu(reg a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static inline void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static inline void store_part(float* p, reg a, int n) { _mm256_maskstore_ps(p, head(n), a); }
  static inline reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
};

}  // namespace

void nm_conv_rows_avx2(const NMConvParams& p, int64_t begin, int64_t end) { nm_rows<V256, 4>(p, begin, end); }

// Tiles within 16 registers: V = 8: 12 pixels x 1 ymm; V = 16 and 32: 6 pixels x 2 ymm (V = 32 in two passes).
void vec_conv_rows_avx2(const VecConvParams& p, int64_t begin, int64_t end) {
  if (p.V == 8) vec_rows<V256, 1, 12>(p, begin, end);
  else vec_rows<V256, 2, 6>(p, begin, end);
}

}  // namespace dynprune
