// AVX-512 instantiation of the N:M convolution (16 lanes: 16 output channels, chunks of 16 inputs).
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma,avx2")
#include <immintrin.h>

#include "nm_conv_impl.h"
#include "vec_conv_impl.h"

namespace dynprune {
namespace {

struct V512 {
  using reg = __m512;
  using ireg = __m512i;
  static constexpr int L = 16;
  static inline __mmask16 head(int n) { return __mmask16((1u << n) - 1u); }
  static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  static inline reg load_part(const float* p, int n) { return _mm512_maskz_loadu_ps(head(n), p); }
  static inline ireg load_index(const int32_t* p) { return _mm512_loadu_si512(p); }
  static inline reg permute(ireg i, reg x) { return _mm512_permutexvar_ps(i, x); }
  static inline reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline reg relu(reg a) { return _mm512_max_ps(a, _mm512_setzero_ps()); }
  static inline void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static inline void store_part(float* p, reg a, int n) { _mm512_mask_storeu_ps(p, head(n), a); }
  static inline reg bcast(const float* p) { return _mm512_set1_ps(*p); }  // folded into the FMA ({1to16})
};

// 8 lanes with AVX-512VL: the V = 8 vector pattern, with all 32 registers.
struct Y512 {
  using reg = __m256;
  static constexpr int L = 8;
  static inline __mmask8 head(int n) { return __mmask8((1u << n) - 1u); }
  static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline reg bcast(const float* p) { return _mm256_set1_ps(*p); }
  static inline reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg relu(reg a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static inline void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static inline void store_part(float* p, reg a, int n) { _mm256_mask_storeu_ps(p, head(n), a); }
};

}  // namespace

void nm_conv_rows_avx512(const NMConvParams& p, int64_t begin, int64_t end) { nm_rows<V512, 8>(p, begin, end); }

// Tiles within 32 registers: V = 8: 14 pixels x 1 ymm; V = 16: 14 x 1 zmm; V = 32: 12 x 2 zmm (+ weights);
// 10 to 16 pixels measured within 5% of each other for V = 16 on a Zen 4, 20 and more spill. On a Zen 4
// (512-bit ops on 256-bit units) the AVX2 tiles are 3-5% faster: dynprune.sparse_cpu.vector_isa measures.
void vec_conv_rows_avx512(const VecConvParams& p, int64_t begin, int64_t end) {
  if (p.V == 8) vec_rows<Y512, 1, 14>(p, begin, end);
  else if (p.V == 16) vec_rows<V512, 1, 14>(p, begin, end);
  else vec_rows<V512, 2, 12>(p, begin, end);
}

}  // namespace dynprune
