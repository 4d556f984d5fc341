// AVX-512 BF16 instantiation of the bf16 vector-pattern convolution (vec_qconv_impl.h): vdpbf16ps dot products
// of bf16 pairs into 16 fp32 lanes (16 output channels), vpermt2w compaction of up to 64 input channels.
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,fma,avx2")
#include <immintrin.h>

#include "vec_qconv_impl.h"

namespace dynprune {
namespace {

// out[j] = src[idx[j]] for cb / 2 16-bit elements (cb a multiple of 64 bytes): one vpermt2w per 32 elements up
// to 64 channels
inline void gather16(const uint8_t* src8, int cin, const uint8_t* idx8, uint8_t* out8, int cb) {
  const uint16_t* src = reinterpret_cast<const uint16_t*>(src8);
  const uint16_t* idx = reinterpret_cast<const uint16_t*>(idx8);
  uint16_t* out = reinterpret_cast<uint16_t*>(out8);
  if (cin <= 64) {
    const int a = cin < 32 ? cin : 32, b = cin - a;
    const __m512i lo = _mm512_maskz_loadu_epi16(a == 32 ? ~__mmask32(0) : (__mmask32(1) << a) - 1, src);
    const __m512i hi = _mm512_maskz_loadu_epi16(b == 32 ? ~__mmask32(0) : (__mmask32(1) << b) - 1, src + 32);
    for (int c = 0; c < cb / 2; c += 32)
      _mm512_storeu_si512(out + c, _mm512_permutex2var_epi16(lo, _mm512_loadu_si512(idx + c), hi));
  } else {
    for (int j = 0; j < cb / 2; ++j) out[j] = src[idx[j]];
  }
}

// The compaction of one tap for cin <= 64 (bf16): index vectors loaded once, then per pixel two masked loads
// and one vpermt2w per 32 compacted elements.
struct Gather16 {
  __m512i idx[8];
  __mmask32 ma, mb;
  int n;
  Gather16(const uint8_t* ti, int cin, int cb) : n(cb / 64) {
    const int a = cin < 32 ? cin : 32, b = cin - a;
    ma = a == 32 ? ~__mmask32(0) : (__mmask32(1) << a) - 1;
    mb = b == 32 ? ~__mmask32(0) : (__mmask32(1) << b) - 1;
    for (int c = 0; c < n; ++c) idx[c] = _mm512_loadu_si512(ti + 64 * c);
  }
  inline void run(const uint8_t* src, uint8_t* out) const {
    const __m512i lo = _mm512_maskz_loadu_epi16(ma, src), hi = _mm512_maskz_loadu_epi16(mb, src + 64);
    for (int c = 0; c < n; ++c) _mm512_storeu_si512(out + 64 * c, _mm512_permutex2var_epi16(lo, idx[c], hi));
  }
};

struct B512 {
  using reg = __m512;
  using wreg = __m512i;
  static constexpr int L = 16, ES = 2, G = 2, IS = 2;
  using Gather = Gather16;
  static inline __mmask16 head(int n) { return __mmask16((1u << n) - 1u); }
  static inline uint8_t pad_byte(const VecQConvParams&, size_t) { return 0; }
  static inline reg load_acc0(const VecQConvParams& p, int64_t oc) {
    return _mm512_loadu_ps(static_cast<const float*>(p.acc0) + oc);
  }
  static inline __m512i load_w(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static inline __m512i bcast4(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static inline reg dot(reg acc, __m512i x, __m512i w) { return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w); }
  static inline void gather(const uint8_t* src, int cin, const uint8_t* idx, uint8_t* out, int cb) {
    gather16(src, cin, idx, out, cb);
  }
  static inline void store_f32(float* y, reg acc, const VecQConvParams& p, int64_t, int n) {
    _mm512_mask_storeu_ps(y, head(n), p.relu ? _mm512_max_ps(acc, _mm512_setzero_ps()) : acc);
  }
  static inline void store_low(uint8_t* y, reg acc, const VecQConvParams& p, int64_t, int n) {
    const __m256bh h = _mm512_cvtneps_pbh(p.relu ? _mm512_max_ps(acc, _mm512_setzero_ps()) : acc);
    _mm256_mask_storeu_epi16(y, head(n), (__m256i)h);
  }
};

struct B256 {
  using reg = __m256;
  using wreg = __m256i;
  static constexpr int L = 8, ES = 2, G = 2, IS = 2;
  using Gather = Gather16;
  static inline __mmask8 head(int n) { return __mmask8((1u << n) - 1u); }
  static inline uint8_t pad_byte(const VecQConvParams&, size_t) { return 0; }
  static inline reg load_acc0(const VecQConvParams& p, int64_t oc) {
    return _mm256_loadu_ps(static_cast<const float*>(p.acc0) + oc);
  }
  static inline __m256i load_w(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static inline __m256i bcast4(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
  static inline reg dot(reg acc, __m256i x, __m256i w) { return _mm256_dpbf16_ps(acc, (__m256bh)x, (__m256bh)w); }
  static inline void gather(const uint8_t* src, int cin, const uint8_t* idx, uint8_t* out, int cb) {
    gather16(src, cin, idx, out, cb);
  }
  static inline void store_f32(float* y, reg acc, const VecQConvParams& p, int64_t, int n) {
    _mm256_mask_storeu_ps(y, head(n), p.relu ? _mm256_max_ps(acc, _mm256_setzero_ps()) : acc);
  }
  static inline void store_low(uint8_t* y, reg acc, const VecQConvParams& p, int64_t, int n) {
    const __m128bh h = _mm256_cvtneps_pbh(p.relu ? _mm256_max_ps(acc, _mm256_setzero_ps()) : acc);
    _mm_mask_storeu_epi16(y, head(n), (__m128i)h);
  }
};

}  // namespace

// Tiles within 32 registers: V = 8: 14 pixels x 1 ymm; V = 16: 12 x 1 zmm; V = 32: 12 x 2 zmm.
void vec_bf16conv_rows(const VecQConvParams& p, int64_t begin, int64_t end) {
  if (p.V == 8) q_rows<B256, 1, 14>(p, begin, end);
  else if (p.V == 16) q_rows<B512, 1, 12>(p, begin, end);
  else q_rows<B512, 2, 12>(p, begin, end);
}

}  // namespace dynprune
