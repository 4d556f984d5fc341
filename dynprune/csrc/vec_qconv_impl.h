// dynprune: the int8 direct convolution for the vector-wise N:M pattern (u8 activations x s8 weights -> s32),
// written once over an ISA traits type Q and instantiated by nm_conv_vnni.cpp (AVX-512 VNNI + VBMI).
//
// Q provides: reg (L int32 lanes), L, zero, load_w (one register of weights: L output channels x 4 inputs),
// bcast4 (4 bytes from memory to every lane), dot (reg += u8x4 . s8x4 per lane, exact), gather (the
// compaction below), epilogue stores (store_u8 / store_f32 of the first n lanes).
//
// A block of V output channels keeps the same K input channels per tap, so one output pixel of a block
// needs, per tap, those K input bytes side by side: groups of 4 become one 32-bit broadcast, and one
// u8 x s8 dot-product instruction (vpdpbusd) multiplies them by 4 weights of each of the block's output
// channels: 4 times the MACs of an fp32 FMA per instruction. The kept bytes are scattered over the pixel's
// channels, so each tile first *compacts* them: per tap and pixel, one byte permute of the pixel's channels
// (vpermb, up to 64 channels) writes the kept bytes of every block (`cb` bytes: blocks x K rounded up to
// whole 64-byte chunks) into a small buffer; the dot loop then reads its broadcasts from there. The cost:
// one permute per 64 kept bytes against 16 dot products per 64 kept bytes and output block.
//
// Arithmetic (bit-exact against dynprune.quant.qconv_reference): acc = acc0[o] + sum x_u8 * w_s8 over the
// kept entries (zero padding reads the input's zero point zin; acc0 = -zin * sum_w carries the offset);
// f = float(acc) * scale[o] + shift[o] (two roundings, no FMA: the sources build with -ffp-contract=off);
// float output: relu?(f); u8 output: f clamped to [relu ? 0 : -zout, 255 - zout], rounded half to even,
// plus zout.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "nm_conv.h"

#define DYNPRUNE_QPRAGMA(x) _Pragma(#x)
#define QUNROLL DYNPRUNE_QPRAGMA(GCC unroll 16)

namespace dynprune {
namespace {

// The tile's kept bytes: buf[(t * P + q) * cb + b * K + e] = input channel index[b][t][e] of the pixel that
// tap t of output pixel q reads. rows[ky]: input pixel of column ox - pad_w in tap row ky (a row of zin
// where the tap row lies in the padding).
template <class Q, int P>
inline void q_compact(const VecQConvParams& p, const uint8_t* const* rows, const uint8_t* gidx, uint8_t* buf,
                      int cb) {
  const int taps = p.kh * p.kw;
  for (int t = 0; t < taps; ++t) {
    const int ky = t / p.kw, kx = t % p.kw;
    const uint8_t* base = rows[ky] + int64_t(kx) * p.dil_w * p.cin;
    const uint8_t* ti = gidx + int64_t(t) * cb;
    uint8_t* bt = buf + int64_t(t) * P * cb;
    for (int q = 0; q < P; ++q) Q::gather(base + int64_t(q) * p.cin, int(p.cin), ti, bt + q * cb, cb);
  }
}

// Tap t of output pixel q reads its 4-byte groups at tb[t] + q * qs + bo + 4 * e: the compacted buffer (qs = cb,
// bo = the block's offset) or, for a dense layer (every block keeps every channel in order), the input pixels
// themselves (qs = cin, bo = 0: no compaction).
template <class Q, int NR, int P>
inline void q_tile(const VecQConvParams& p, const uint8_t* const* tb, int64_t qs, int64_t bo, int64_t b, int64_t oy,
                   int64_t ox, int64_t ob, int off, int keep) {
  using reg = typename Q::reg;
  constexpr int L = Q::L;
  const int K4 = p.K / 4, V = p.V, taps = p.kh * p.kw;
  reg acc[P][NR];
  QUNROLL for (int r = 0; r < NR; ++r) {
    const reg a0 = Q::load_i32(p.acc0 + ob * V + off + r * L);
    QUNROLL for (int q = 0; q < P; ++q) acc[q][r] = a0;
  }
  const int8_t* wblock = p.values + (ob * taps * int64_t(K4) * V + off) * 4;
  for (int t = 0; t < taps; ++t) {
    const int8_t* wt = wblock + int64_t(t) * K4 * V * 4;
    const uint8_t* xt = tb[t] + bo;
#pragma GCC unroll 4
    for (int e = 0; e < K4; ++e) {
      reg wv[NR];
      QUNROLL for (int r = 0; r < NR; ++r) wv[r] = Q::load_w(wt + (int64_t(e) * V + r * L) * 4);
      QUNROLL for (int q = 0; q < P; ++q) {
        const reg xb = Q::bcast4(xt + q * qs + e * 4);
        QUNROLL for (int r = 0; r < NR; ++r) acc[q][r] = Q::dot(acc[q][r], xb, wv[r]);
      }
    }
  }
  const int64_t pix = (b * p.ho + oy) * p.wo + ox;
  QUNROLL for (int q = 0; q < P; ++q) {
    if (q >= keep) break;
    QUNROLL for (int r = 0; r < NR; ++r) {
      const int64_t oc = ob * V + off + r * L;
      if (oc >= p.cout) continue;
      const int n = int(p.cout - oc < L ? p.cout - oc : L);
      if (p.out_u8) Q::store_u8(static_cast<uint8_t*>(p.y) + (pix + q) * p.cout + oc, acc[q][r], p, oc, n);
      else Q::store_f32(static_cast<float*>(p.y) + (pix + q) * p.cout + oc, acc[q][r], p, oc, n);
    }
  }
}

// One output row in tiles of P pixels; per tile one compaction, then every block of output channels.
template <class Q, int NR, int P>
inline void q_row(const VecQConvParams& p, uint8_t* scratch, const uint8_t* padrow, uint8_t* buf, int cb,
                  int64_t b, int64_t oy) {
  constexpr int SUB = NR * Q::L;
  const int64_t blocks = (p.cout + p.V - 1) / p.V;
  const int64_t span = P + int64_t(p.kw - 1) * p.dil_w;
  const uint8_t* rows[16];
  for (int64_t ox = 0; ox < p.wo; ox += P) {
    const int64_t ix0 = ox - p.pad_w;
    const bool inside = ix0 >= 0 && ix0 + span <= p.w;
    for (int ky = 0; ky < p.kh; ++ky) {
      const int64_t iy = oy - p.pad_h + int64_t(ky) * p.dil_h;
      if (iy < 0 || iy >= p.h) {
        rows[ky] = padrow;
        continue;
      }
      const uint8_t* row = p.x + (b * p.h + iy) * p.w * p.cin;
      if (inside) {
        rows[ky] = row + ix0 * p.cin;
        continue;
      }
      uint8_t* dst = scratch + ky * span * p.cin;
      for (int64_t j = 0; j < span; ++j) {
        const int64_t ix = ix0 + j;
        if (ix >= 0 && ix < p.w) std::memcpy(dst + j * p.cin, row + ix * p.cin, size_t(p.cin));
        else std::memset(dst + j * p.cin, p.zin, size_t(p.cin));
      }
      rows[ky] = dst;
    }
    const uint8_t* tb[256];
    const int taps = p.kh * p.kw;
    for (int t = 0; t < taps; ++t)
      tb[t] = p.dense ? rows[t / p.kw] + int64_t(t % p.kw) * p.dil_w * p.cin : buf + int64_t(t) * P * cb;
    if (!p.dense) q_compact<Q, P>(p, rows, p.gidx, buf, cb);
    const int keep = int(p.wo - ox < P ? p.wo - ox : P);
    for (int64_t ob = 0; ob < blocks; ++ob)
      for (int off = 0; off < p.V && ob * p.V + off < p.cout; off += SUB)
        q_tile<Q, NR, P>(p, tb, p.dense ? p.cin : cb, p.dense ? 0 : ob * p.K, b, oy, ox, ob, off, keep);
  }
}

template <class Q, int NR, int P>
void q_rows(const VecQConvParams& p, int64_t begin, int64_t end) {
  const int64_t span = P + int64_t(p.kw - 1) * p.dil_w;
  const int cb = p.cb;
  std::vector<uint8_t> scratch(size_t(p.kh) * span * p.cin + 64);
  std::vector<uint8_t> padrow(size_t(span) * p.cin + 64, uint8_t(p.zin));
  // 64 spare bytes: the permute path loads whole 64-byte pixels
  std::vector<uint8_t> buf(size_t(p.kh) * p.kw * P * cb + 64);
  for (int64_t item = begin; item < end; ++item)
    q_row<Q, NR, P>(p, scratch.data(), padrow.data(), buf.data(), cb, item / p.ho, item % p.ho);
}

}  // namespace
}  // namespace dynprune
