// dynprune: the direct N:M convolution, written once over a SIMD traits type V and instantiated by
// each ISA file (nm_conv_avx512.cpp, nm_conv_avx2.cpp) under its own target pragma.
//
// V provides: reg, ireg, L (lanes), load, load_part, load_index (L int32 lanes), permute
// (lane o takes x[index[o]]), fma, relu, store, store_part.
//
// Per output tile of P consecutive pixels x NB blocks of L output channels, for every tap and chunk
// of L input channels: load each pixel's L input channels once; for every kept entry j, one permute
// gives each output lane its own kept input channel, one FMA multiplies it by that lane's weight.
// Taps falling on the zero padding read a zero vector instead, so any padding and dilation work on
// unpadded channels-last activations.
#pragma once
#include <cstdint>

#include "nm_conv.h"

namespace dynprune {
namespace {

// JT > 0: the kept entries per chunk as a compile-time constant (fully unrolled); JT == 0: p.J.
template <class V, int JT, int P, int NB>
inline void nm_tile(const NMConvParams& p, int64_t b, int64_t oy, int64_t ox, int64_t ob) {
  using reg = typename V::reg;
  using ireg = typename V::ireg;
  constexpr int L = V::L;
  const int J = JT > 0 ? JT : p.J;
  const int64_t taps = int64_t(p.kh) * p.kw;
  const int64_t per_tap = int64_t(p.chunks) * J * L;
  const int64_t per_block = taps * per_tap;
  const int rem = int(p.cin - int64_t(p.chunks - 1) * L);  // channels in the last chunk, 1..L

  reg acc[P][NB];
  for (int nb = 0; nb < NB; ++nb) {
    const reg bv = V::load(p.bias + (ob + nb) * L);
    for (int q = 0; q < P; ++q) acc[q][nb] = bv;
  }
  for (int ky = 0; ky < p.kh; ++ky) {
    const int64_t iy = oy - p.pad_h + int64_t(ky) * p.dil_h;
    if (iy < 0 || iy >= p.h) continue;
    const float* row = p.x + (b * p.h + iy) * p.w * p.cin;
    for (int kx = 0; kx < p.kw; ++kx) {
      const float* src[P];
      for (int q = 0; q < P; ++q) {
        const int64_t ix = ox + q - p.pad_w + int64_t(kx) * p.dil_w;
        src[q] = (ix >= 0 && ix < p.w) ? row + ix * p.cin : p.zeros;
      }
      const int64_t t = int64_t(ky) * p.kw + kx;
      const float* vals = p.values + ob * per_block + t * per_tap;
      const int32_t* idxs = p.index + ob * per_block + t * per_tap;
      for (int c = 0; c < p.chunks; ++c) {
        reg xv[P];
        if (c + 1 < p.chunks || rem == L) {
          for (int q = 0; q < P; ++q) xv[q] = V::load(src[q] + c * L);
        } else {
          for (int q = 0; q < P; ++q) xv[q] = V::load_part(src[q] + c * L, rem);
        }
        const float* vc = vals + int64_t(c) * J * L;
        const int32_t* ic = idxs + int64_t(c) * J * L;
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
          for (int nb = 0; nb < NB; ++nb) {
            const ireg iv = V::load_index(ic + nb * per_block + j * L);
            const reg wv = V::load(vc + nb * per_block + j * L);
            for (int q = 0; q < P; ++q) acc[q][nb] = V::fma(V::permute(iv, xv[q]), wv, acc[q][nb]);
          }
        }
      }
    }
  }
  float* out = p.y + ((b * p.ho + oy) * p.wo + ox) * p.cout;
  for (int q = 0; q < P; ++q) {
    for (int nb = 0; nb < NB; ++nb) {
      const reg r = p.relu ? V::relu(acc[q][nb]) : acc[q][nb];
      const int64_t oc = (ob + nb) * L;
      if (oc + L <= p.cout) V::store(out + q * p.cout + oc, r);
      else V::store_part(out + q * p.cout + oc, r, int(p.cout - oc));
    }
  }
}

// The row's last pixels (fewer than PMAX) as one tile of exactly that compile-time width.
template <class V, int JT, int K, int NB>
inline void nm_tail(const NMConvParams& p, int64_t b, int64_t oy, int64_t ox, int64_t ob, int left) {
  if constexpr (K >= 1) {
    if (left == K) nm_tile<V, JT, K, NB>(p, b, oy, ox, ob);
    else nm_tail<V, JT, K - 1, NB>(p, b, oy, ox, ob, left);
  }
}

template <class V, int JT, int PMAX, int NB>
inline void nm_row_blocks(const NMConvParams& p, int64_t b, int64_t oy, int64_t ob) {
  int64_t ox = 0;
  for (; ox + PMAX <= p.wo; ox += PMAX) nm_tile<V, JT, PMAX, NB>(p, b, oy, ox, ob);
  nm_tail<V, JT, PMAX - 1, NB>(p, b, oy, ox, ob, int(p.wo - ox));
}

template <class V, int JT, int PMAX>
void nm_rows_j(const NMConvParams& p, int64_t begin, int64_t end) {
  constexpr int L = V::L;
  const int64_t blocks = (p.cout + L - 1) / L;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / p.ho, oy = item % p.ho;
    int64_t ob = 0;
    for (; ob + 2 <= blocks; ob += 2) nm_row_blocks<V, JT, PMAX, 2>(p, b, oy, ob);
    if (ob < blocks) nm_row_blocks<V, JT, PMAX, 1>(p, b, oy, ob);
  }
}

// Compile-time J for the common ratios (1:4 and 2:4 on 8 or 16 lanes), run-time otherwise.
template <class V, int PMAX>
void nm_rows(const NMConvParams& p, int64_t begin, int64_t end) {
  switch (p.J) {
    case 2: return nm_rows_j<V, 2, PMAX>(p, begin, end);
    case 4: return nm_rows_j<V, 4, PMAX>(p, begin, end);
    case 8: return nm_rows_j<V, 8, PMAX>(p, begin, end);
    default: return nm_rows_j<V, 0, PMAX>(p, begin, end);
  }
}

}  // namespace
}  // namespace dynprune
