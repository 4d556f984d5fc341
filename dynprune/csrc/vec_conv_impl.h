// dynprune: the direct convolution for the vector-wise N:M pattern, written once over a SIMD register
// traits type R and instantiated by each ISA file (nm_conv_avx512.cpp, nm_conv_avx2.cpp) under its own
// target pragma.
//
// R provides: reg, L (fp32 lanes), load, bcast (one float from memory to every lane), fma, relu, store,
// store_part (the first n lanes).
//
// A block of V output channels keeps the same K input channels per tap (the vector pattern), so per kept
// entry one input value is broadcast (a load-port operation, folded into the FMA on AVX-512) and
// multiplied by the block's V weights: a dense direct convolution that visits only the kept input
// channels, with no permute. A tile is P consecutive output pixels x NR registers (NR * L output
// channels of a block; V = 32 on AVX2 runs as two such sub-blocks over the same index list).
// Interior tiles address pixel q as base + q * CS: with CS a compile-time channel count the offsets
// are constant displacements and no register per pixel is spent; border pixels (a tap on the zero
// padding) read a zero vector through a per-pixel pointer instead.
#pragma once
#include <cstdint>

#include "nm_conv.h"

// Every loop over pixels and registers unrolled, so the accumulators stay in registers (GCC keeps an
// array in memory, storing it after every FMA, once any access to it uses a run-time index).
#define DYNPRUNE_PRAGMA(x) _Pragma(#x)
#define UNROLL DYNPRUNE_PRAGMA(GCC unroll 16)

namespace dynprune {
namespace {

template <class R, int NR, int P, int CS, bool INTERIOR>
inline void vec_tile(const VecConvParams& p, int64_t b, int64_t oy, int64_t ox, int64_t ob, int off) {
  using reg = typename R::reg;
  constexpr int L = R::L;
  const int64_t cs = CS > 0 ? CS : p.cin;
  const int K = p.K, V = p.V;
  const int taps = p.kh * p.kw;
  reg acc[P][NR];
  UNROLL for (int r = 0; r < NR; ++r) {
    const reg bv = R::load(p.bias + ob * V + off + r * L);
    UNROLL for (int q = 0; q < P; ++q) acc[q][r] = bv;
  }
  const float* vblock = p.values + ob * taps * int64_t(K) * V + off;
  const int32_t* iblock = p.index + ob * taps * int64_t(K);
  for (int ky = 0; ky < p.kh; ++ky) {
    const int64_t iy = oy - p.pad_h + int64_t(ky) * p.dil_h;
    if (iy < 0 || iy >= p.h) continue;
    const float* row = p.x + (b * p.h + iy) * p.w * cs;
    for (int kx = 0; kx < p.kw; ++kx) {
      const int t = ky * p.kw + kx;
      const float* vt = vblock + int64_t(t) * K * V;
      const int32_t* it = iblock + int64_t(t) * K;
      const int64_t ix0 = ox - p.pad_w + int64_t(kx) * p.dil_w;
      if constexpr (INTERIOR) {
        const float* base = row + ix0 * cs;
#pragma GCC unroll 4
        for (int e = 0; e < K; ++e) {
          const float* xe = base + it[e];
          reg wv[NR];
          UNROLL for (int r = 0; r < NR; ++r) wv[r] = R::load(vt + int64_t(e) * V + r * L);
          UNROLL for (int q = 0; q < P; ++q) {
            const reg xb = R::bcast(xe + q * cs);
            UNROLL for (int r = 0; r < NR; ++r) acc[q][r] = R::fma(xb, wv[r], acc[q][r]);
          }
        }
      } else {
        const float* src[P];
        UNROLL for (int q = 0; q < P; ++q) {
          const int64_t ix = ix0 + q;
          src[q] = (ix >= 0 && ix < p.w) ? row + ix * cs : p.zeros;
        }
        for (int e = 0; e < K; ++e) {
          const int c = it[e];
          reg wv[NR];
          UNROLL for (int r = 0; r < NR; ++r) wv[r] = R::load(vt + int64_t(e) * V + r * L);
          UNROLL for (int q = 0; q < P; ++q) {
            const reg xb = R::bcast(src[q] + c);
            UNROLL for (int r = 0; r < NR; ++r) acc[q][r] = R::fma(xb, wv[r], acc[q][r]);
          }
        }
      }
    }
  }
  float* out = p.y + ((b * p.ho + oy) * p.wo + ox) * p.cout;
  UNROLL for (int q = 0; q < P; ++q) {
    UNROLL for (int r = 0; r < NR; ++r) {
      const reg v = p.relu ? R::relu(acc[q][r]) : acc[q][r];
      const int64_t oc = ob * V + off + r * L;
      if (oc + L <= p.cout) R::store(out + q * p.cout + oc, v);
      else if (oc < p.cout) R::store_part(out + q * p.cout + oc, v, int(p.cout - oc));
    }
  }
}

// One output row of one sub-block: border pixels one at a time, the interior in tiles of P (the last
// interior tile overlaps its neighbour instead of running a narrower tile: the same values are stored twice).
template <class R, int NR, int P, int CS>
inline void vec_row(const VecConvParams& p, int64_t b, int64_t oy, int64_t ob, int off) {
  const int64_t lo = p.pad_w;                                                 // first interior output pixel
  const int64_t hi = p.w - 1 + p.pad_w - int64_t(p.kw - 1) * p.dil_w;         // last one
  int64_t ox = 0;
  if (hi - lo + 1 >= P) {
    for (; ox < lo; ++ox) vec_tile<R, NR, 1, CS, false>(p, b, oy, ox, ob, off);
    for (; ox + P - 1 <= hi; ox += P) vec_tile<R, NR, P, CS, true>(p, b, oy, ox, ob, off);
    if (ox <= hi) {
      vec_tile<R, NR, P, CS, true>(p, b, oy, hi - P + 1, ob, off);
      ox = hi + 1;
    }
  }
  for (; ox < p.wo; ++ox) vec_tile<R, NR, 1, CS, false>(p, b, oy, ox, ob, off);
}

template <class R, int NR, int P, int CS>
void vec_rows_cs(const VecConvParams& p, int64_t begin, int64_t end) {
  constexpr int SUB = NR * R::L;  // output channels per pass; V / SUB passes share the block's index list
  const int64_t blocks = (p.cout + p.V - 1) / p.V;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / p.ho, oy = item % p.ho;
    for (int64_t ob = 0; ob < blocks; ++ob)
      for (int off = 0; off < p.V && ob * p.V + off < p.cout; off += SUB) vec_row<R, NR, P, CS>(p, b, oy, ob, off);
  }
}

// Compile-time channel stride for 64 input channels (DnCNN, GCANet, CARN), run-time otherwise.
template <class R, int NR, int P>
void vec_rows(const VecConvParams& p, int64_t begin, int64_t end) {
  if (p.cin == 64) vec_rows_cs<R, NR, P, 64>(p, begin, end);
  else vec_rows_cs<R, NR, P, 0>(p, begin, end);
}

}  // namespace
}  // namespace dynprune
