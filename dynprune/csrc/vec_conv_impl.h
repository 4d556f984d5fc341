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
// A tile addresses pixel q as base + q * CS: with CS a compile-time channel count the offsets are constant
// displacements and no register per pixel is spent. Tiles whose taps reach the zero padding read a small
// zero-padded copy of their pixels instead, so borders run the same code at the same speed.
#pragma once
#include <cstdint>
#include <vector>

#include "nm_conv.h"
#include "tile_rows.h"

// Every loop over pixels and registers unrolled, so the accumulators stay in registers (GCC keeps an
// array in memory, storing it after every FMA, once any access to it uses a run-time index).
#define DYNPRUNE_PRAGMA(x) _Pragma(#x)
#define UNROLL DYNPRUNE_PRAGMA(GCC unroll 16)

namespace dynprune {
namespace {

// One tile: output pixels ox .. ox+P-1 of row oy, output channels ob*V + off .. + NR*L. rows[ky] points at
// the input pixel of column ox - pad_w in the input row of tap row ky (nullptr: that row lies in the zero
// padding); pixel q at tap kx reads rows[ky] + (q + kx * dil_w) * CS. Only the first `keep` pixels are stored.
template <class R, int NR, int P, int CS>
inline void vec_tile(const VecConvParams& p, const float* const* rows, int64_t b, int64_t oy, int64_t ox, int64_t ob,
                     int off, int keep) {
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
    if (rows[ky] == nullptr) continue;
    for (int kx = 0; kx < p.kw; ++kx) {
      const int t = ky * p.kw + kx;
      const float* vt = vblock + int64_t(t) * K * V;
      const int32_t* it = iblock + int64_t(t) * K;
      const float* base = rows[ky] + int64_t(kx) * p.dil_w * cs;
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
    }
  }
  float* out = p.y + ((b * p.ho + oy) * p.wo + ox) * p.cout;
  UNROLL for (int q = 0; q < P; ++q) {
    if (q >= keep) break;
    UNROLL for (int r = 0; r < NR; ++r) {
      const reg v = p.relu ? R::relu(acc[q][r]) : acc[q][r];
      const int64_t oc = ob * V + off + r * L;
      if (oc + L <= p.cout) R::store(out + q * p.cout + oc, v);
      else if (oc < p.cout) R::store_part(out + q * p.cout + oc, v, int(p.cout - oc));
    }
  }
}

// One output row in tiles of P pixels (the last one stores only the pixels the row has); per tile every
// block of output channels, so the tile's input stays in L1 while the blocks' weights stream from L2. A
// tile whose taps reach outside the image reads a copy of the pixels it needs, zeros outside (`scratch`:
// kh * span * cin floats, span = P + (kw - 1) * dil_w), so every tile runs the same code.
template <class R, int NR, int P, int CS>
inline void vec_row(const VecConvParams& p, float* scratch, int64_t b, int64_t oy) {
  constexpr int SUB = NR * R::L;  // output channels per pass; V / SUB passes share the block's index list
  const int64_t blocks = (p.cout + p.V - 1) / p.V;
  const int64_t cs = CS > 0 ? CS : p.cin;
  const int64_t span = P + int64_t(p.kw - 1) * p.dil_w;
  const float* rows[16];
  for (int64_t ox = 0; ox < p.wo; ox += P) {
    tile_rows<float>(p, p.x, cs, b, oy, ox - p.pad_w, span, scratch, nullptr, nullptr, rows);
    const int keep = int(p.wo - ox < P ? p.wo - ox : P);
    for (int64_t ob = 0; ob < blocks; ++ob)
      for (int off = 0; off < p.V && ob * p.V + off < p.cout; off += SUB)
        vec_tile<R, NR, P, CS>(p, rows, b, oy, ox, ob, off, keep);
  }
}

template <class R, int NR, int P, int CS>
void vec_rows_cs(const VecConvParams& p, int64_t begin, int64_t end) {
  std::vector<float> scratch(size_t(p.kh) * (P + size_t(p.kw - 1) * p.dil_w) * size_t(p.cin));
  for (int64_t item = begin; item < end; ++item) vec_row<R, NR, P, CS>(p, scratch.data(), item / p.ho, item % p.ho);
}

// Compile-time channel stride for 64 input channels (DnCNN, GCANet, CARN), run-time otherwise.
template <class R, int NR, int P>
void vec_rows(const VecConvParams& p, int64_t begin, int64_t end) {
  if (p.cin == 64) vec_rows_cs<R, NR, P, 64>(p, begin, end);
  else vec_rows_cs<R, NR, P, 0>(p, begin, end);
}

}  // namespace
}  // namespace dynprune
