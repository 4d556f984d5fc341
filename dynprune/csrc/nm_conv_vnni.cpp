// AVX-512 VNNI + VBMI instantiation of the int8 vector-pattern convolution (vec_qconv_impl.h): vpdpbusd dot
// products on 16 int32 lanes (16 output channels), vpermb compaction of up to 64 input channels per pixel.
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512vbmi,fma,avx2")
#include <immintrin.h>

#include "vec_qconv_impl.h"

namespace dynprune {
namespace {

// The compaction of one tap for cin <= 64: its index vectors loaded once, then per pixel one masked load and one
// vpermb per 64 compacted bytes.
struct Gather8 {
  __m512i idx[4];
  __mmask64 m;
  int n;
  Gather8(const uint8_t* ti, int cin, int cb) : m(cin == 64 ? ~__mmask64(0) : (__mmask64(1) << cin) - 1), n(cb / 64) {
    for (int c = 0; c < n; ++c) idx[c] = _mm512_loadu_si512(ti + 64 * c);
  }
  inline void run(const uint8_t* src, uint8_t* out) const {
    const __m512i pix = _mm512_maskz_loadu_epi8(m, src);
    for (int c = 0; c < n; ++c) _mm512_storeu_si512(out + 64 * c, _mm512_permutexvar_epi8(idx[c], pix));
  }
};

struct QV512 {
  using reg = __m512i;
  using wreg = __m512i;
  static constexpr int L = 16, ES = 1, G = 4, IS = 1;
  using Gather = Gather8;
  static inline uint8_t pad_byte(const VecQConvParams& p, size_t) { return uint8_t(p.zin); }
  static inline reg load_acc0(const VecQConvParams& p, int64_t oc) {
    return _mm512_loadu_si512(static_cast<const int32_t*>(p.acc0) + oc);
  }
  static inline __mmask16 head(int n) { return __mmask16((1u << n) - 1u); }
  static inline reg load_w(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static inline reg bcast4(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static inline reg dot(reg acc, reg x_u8, reg w_s8) { return _mm512_dpbusd_epi32(acc, x_u8, w_s8); }
  // out[j] = src[idx[j]] for cb bytes (cb a multiple of 64): one vpermb per 64 bytes up to 64 channels
  static inline void gather(const uint8_t* src, int cin, const uint8_t* idx, uint8_t* out, int cb) {
    if (cin <= 64) {
      const __m512i pix = _mm512_maskz_loadu_epi8(cin == 64 ? ~__mmask64(0) : (__mmask64(1) << cin) - 1, src);
      for (int c = 0; c < cb; c += 64)
        _mm512_storeu_si512(out + c, _mm512_permutexvar_epi8(_mm512_loadu_si512(idx + c), pix));
    } else {
      for (int j = 0; j < cb; ++j) out[j] = src[idx[j]];
    }
  }
  static inline __m512 requant(reg acc, const VecQConvParams& p, int64_t oc) {
    const __m512 f = _mm512_cvtepi32_ps(acc);
    return _mm512_add_ps(_mm512_mul_ps(f, _mm512_loadu_ps(p.scale + oc)), _mm512_loadu_ps(p.shift + oc));
  }
  static inline void store_f32(float* y, reg acc, const VecQConvParams& p, int64_t oc, int n) {
    __m512 f = requant(acc, p, oc);
    if (p.relu) f = _mm512_max_ps(f, _mm512_setzero_ps());
    _mm512_mask_storeu_ps(y, head(n), f);
  }
  static inline void store_low(uint8_t* y, reg acc, const VecQConvParams& p, int64_t oc, int n) {
    // clamp above in float (no int32 overflow), round, below in int32: the same as clamping before rounding,
    // the bounds being integers; the unsigned-saturating narrow then stores bytes
    const __m512 f = _mm512_min_ps(requant(acc, p, oc), _mm512_set1_ps(float(255 - p.zout)));
    __m512i i = _mm512_cvtps_epi32(f);
    if (p.zout) i = _mm512_add_epi32(i, _mm512_set1_epi32(p.zout));
    i = _mm512_max_epi32(i, _mm512_set1_epi32(p.relu ? p.zout : 0));
    _mm512_mask_cvtusepi32_storeu_epi8(y, head(n), i);
  }
};

// 8 lanes (AVX-512VL on ymm): the V = 8 pattern.
struct QY256 {
  using reg = __m256i;
  using wreg = __m256i;
  static constexpr int L = 8, ES = 1, G = 4, IS = 1;
  using Gather = Gather8;
  static inline uint8_t pad_byte(const VecQConvParams& p, size_t) { return uint8_t(p.zin); }
  static inline reg load_acc0(const VecQConvParams& p, int64_t oc) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const int32_t*>(p.acc0) + oc));
  }
  static inline __mmask8 head(int n) { return __mmask8((1u << n) - 1u); }
  static inline reg load_w(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static inline reg bcast4(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
  static inline reg dot(reg acc, reg x_u8, reg w_s8) { return _mm256_dpbusd_epi32(acc, x_u8, w_s8); }
  static inline void gather(const uint8_t* src, int cin, const uint8_t* idx, uint8_t* out, int cb) {
    QV512::gather(src, cin, idx, out, cb);
  }
  static inline __m256 requant(reg acc, const VecQConvParams& p, int64_t oc) {
    const __m256 f = _mm256_cvtepi32_ps(acc);
    return _mm256_add_ps(_mm256_mul_ps(f, _mm256_loadu_ps(p.scale + oc)), _mm256_loadu_ps(p.shift + oc));
  }
  static inline void store_f32(float* y, reg acc, const VecQConvParams& p, int64_t oc, int n) {
    __m256 f = requant(acc, p, oc);
    if (p.relu) f = _mm256_max_ps(f, _mm256_setzero_ps());
    _mm256_mask_storeu_ps(y, head(n), f);
  }
  static inline void store_low(uint8_t* y, reg acc, const VecQConvParams& p, int64_t oc, int n) {
    const __m256 f = _mm256_min_ps(requant(acc, p, oc), _mm256_set1_ps(float(255 - p.zout)));
    __m256i i = _mm256_cvtps_epi32(f);
    if (p.zout) i = _mm256_add_epi32(i, _mm256_set1_epi32(p.zout));
    i = _mm256_max_epi32(i, _mm256_set1_epi32(p.relu ? p.zout : 0));
    _mm256_mask_cvtusepi32_storeu_epi8(y, head(n), i);
  }
};

}  // namespace

// y = clamp(round_half_even(x * inv_scale) + zero, 0, 255) for n floats: the clamp comes first in float (bounds
// -zero and 255 - zero are integers, so clamping before or after rounding agrees, and no int32 overflow).
void quantize_u8_vnni(const float* x, uint8_t* y, int64_t n, float inv_scale, int zero) {
  const __m512 s = _mm512_set1_ps(inv_scale), lo = _mm512_set1_ps(float(-zero)), hi = _mm512_set1_ps(float(255 - zero));
  const __m512i z = _mm512_set1_epi32(zero);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1u);
    __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), s);
    t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
    _mm512_mask_cvtusepi32_storeu_epi8(y + i, m, _mm512_add_epi32(_mm512_cvtps_epi32(t), z));
  }
}

// Tiles within 32 registers: V = 8: 14 pixels x 1 ymm; V = 16: 12 x 1 zmm (10 to 16 within 8% on a Zen 4); V = 32: 12 x 2 zmm.
void vec_qconv_rows_vnni(const VecQConvParams& p, int64_t begin, int64_t end) {
  if (p.V == 8) q_rows<QY256, 1, 14>(p, begin, end);
  else if (p.V == 16) q_rows<QV512, 1, 12>(p, begin, end);
  else q_rows<QV512, 2, 12>(p, begin, end);
}

}  // namespace dynprune
