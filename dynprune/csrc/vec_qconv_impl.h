// dynprune: the low-precision direct convolutions for the vector-wise N:M pattern, int8 (u8 activations x s8
// weights -> s32) and bf16 (bf16 x bf16 -> fp32), written once over a traits type Q and instantiated by
// nm_conv_vnni.cpp (AVX-512 VNNI + VBMI) and nm_conv_bf16.cpp (AVX-512 BF16).
//
// Q provides: reg (L 32-bit accumulator lanes), wreg (the register of inputs and weights), L, ES (bytes per element), G (elements per 4-byte group: 4 for int8, 2 for
// bf16), pad (the byte that fills zero padding), load_acc0, load_w (one register of weights: L output channels
// x one group), bcast4 (4 bytes from memory to every lane), dot (reg += group . group per lane: vpdpbusd or
// vdpbf16ps), gather (the compaction below) and the epilogue stores store_low / store_f32 of the first n lanes.
//
// A block of V output channels keeps the same K input channels per tap, so one output pixel of a block
// needs, per tap, those K input elements side by side: a group of them is one 32-bit broadcast, and one
// dot-product instruction multiplies it by a group of weights of each of the block's output channels (4x
// the MACs of an fp32 FMA per instruction for int8, 2x for bf16). The kept elements are scattered over the
// pixel's channels, so each tile first *compacts* them: per tap and pixel, a permute of the pixel's
// channels (vpermb / vpermt2w, up to 64 channels) writes the kept elements of every block (`cb` bytes:
// blocks x K x ES rounded up to whole 64-byte chunks) into a small buffer; the dot loop then reads its
// broadcasts from there. A dense layer (every block keeps every channel in order) reads the pixels directly.
//
// int8 arithmetic (bit-exact against dynprune.quant.qconv_reference): acc = acc0[o] + sum x_u8 * w_s8 over the
// kept entries (zero padding reads the input's zero point zin; acc0 = -zin * sum_w carries the offset);
// f = float(acc) * scale[o] + shift[o] (two roundings, no FMA: the sources build with -ffp-contract=off);
// float output: relu?(f); u8 output: f clamped to [relu ? 0 : -zout, 255 - zout], rounded half to even,
// plus zout. bf16: acc = bias[o] + sum x * w in fp32 (exact products, the instruction's sums), relu, fp32 or
// bf16 output (rounded to nearest even).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "nm_conv.h"
#include "tile_rows.h"

#define DYNPRUNE_QPRAGMA(x) _Pragma(#x)
#define QUNROLL DYNPRUNE_QPRAGMA(GCC unroll 16)

namespace dynprune {
namespace {

// The tile's kept elements: buf[(t * P + q) * cb + (b * K + e) * ES] = input channel gidx[t][b * K + e] of the
// pixel that tap t of output pixel q reads. rows[ky]: input pixel of column ox - pad_w in tap row ky (a
// padding row where the tap row lies outside the image).
template <class Q, int P, int CB>
inline void q_compact(const VecQConvParams& p, const uint8_t* const* rows, uint8_t* buf, int cb_rt) {
  const int cb = CB > 0 ? CB : cb_rt;
  const int taps = p.kh * p.kw;
  const int64_t cs = p.cin * Q::ES;
  for (int t = 0; t < taps; ++t) {
    const uint8_t* base = rows[t / p.kw] + int64_t(t % p.kw) * p.dil_w * cs;
    const uint8_t* ti = p.gidx + int64_t(t) * cb / Q::ES * Q::IS;
    uint8_t* bt = buf + int64_t(t) * P * cb;
    if (CB > 0 && CB <= 256 && p.cin <= 64) {   // index vectors loaded once per tap, chunks unrolled
      typename Q::Gather g(ti, int(p.cin), CB);
      for (int q = 0; q < P; ++q) g.run(base + q * cs, bt + q * CB);
    } else {
      for (int q = 0; q < P; ++q) Q::gather(base + q * cs, int(p.cin), ti, bt + q * cb, cb);
    }
  }
}

// Tap t of output pixel q reads its groups at tb[t] + q * qs + bo + 4 * e: the compacted buffer (qs = cb,
// bo = the block's offset) or, for a dense layer, the input pixels themselves (qs = cin * ES, bo = 0).
// QS > 0: the pixel stride as a compile-time constant, so every broadcast of the unrolled loop addresses one
// base register plus a constant displacement (a run-time stride costs a register per pixel, and spills).
template <class Q, int NR, int P, int QS>
inline void q_tile(const VecQConvParams& p, const uint8_t* const* tb, int64_t qs_rt, int64_t bo, int64_t b,
                   int64_t oy, int64_t ox, int64_t ob, int off, int keep) {
  const int64_t qs = QS > 0 ? QS : qs_rt;
  using reg = typename Q::reg;
  constexpr int L = Q::L;
  const int KG = p.K / Q::G, V = p.V, taps = p.kh * p.kw;
  reg acc[P][NR];
  QUNROLL for (int r = 0; r < NR; ++r) {
    const reg a0 = Q::load_acc0(p, ob * V + off + r * L);
    QUNROLL for (int q = 0; q < P; ++q) acc[q][r] = a0;
  }
  const uint8_t* wblock = static_cast<const uint8_t*>(p.values) + (ob * taps * int64_t(KG) * V + off) * 4;
  for (int t = 0; t < taps; ++t) {
    const uint8_t* wt = wblock + int64_t(t) * KG * V * 4;
    const uint8_t* xt = tb[t] + bo;
#pragma GCC unroll 4
    for (int e = 0; e < KG; ++e) {
      typename Q::wreg wv[NR];
      QUNROLL for (int r = 0; r < NR; ++r) wv[r] = Q::load_w(wt + (int64_t(e) * V + r * L) * 4);
      QUNROLL for (int q = 0; q < P; ++q) {
        const typename Q::wreg xb = Q::bcast4(xt + q * qs + e * 4);
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
      const int64_t at = (pix + q) * p.cout + oc;
      if (p.out_low) Q::store_low(static_cast<uint8_t*>(p.y) + at * Q::ES, acc[q][r], p, oc, n);
      else Q::store_f32(static_cast<float*>(p.y) + at, acc[q][r], p, oc, n);
    }
  }
}

// One output row in tiles of P pixels; per tile one compaction, then every block of output channels.
template <class Q, int NR, int P, int QS, int CB>
inline void q_row(const VecQConvParams& p, uint8_t* scratch, const uint8_t* padrow, uint8_t* buf, int cb,
                  int64_t b, int64_t oy) {
  constexpr int SUB = NR * Q::L;
  const int64_t blocks = (p.cout + p.V - 1) / p.V;
  const int64_t span = P + int64_t(p.kw - 1) * p.dil_w;
  const int64_t cs = p.cin * Q::ES;
  const int taps = p.kh * p.kw;
  const uint8_t* x = static_cast<const uint8_t*>(p.x);
  const uint8_t* rows[16];
  const uint8_t* tb[256];
  for (int64_t ox = 0; ox < p.wo; ox += P) {
    tile_rows<uint8_t>(p, x, cs, b, oy, ox - p.pad_w, span, scratch, padrow, padrow, rows);
    for (int t = 0; t < taps; ++t)
      tb[t] = p.dense ? rows[t / p.kw] + int64_t(t % p.kw) * p.dil_w * cs : buf + int64_t(t) * P * cb;
    if (!p.dense) q_compact<Q, P, CB>(p, rows, buf, cb);
    const int keep = int(p.wo - ox < P ? p.wo - ox : P);
    for (int64_t ob = 0; ob < blocks; ++ob)
      for (int off = 0; off < p.V && ob * p.V + off < p.cout; off += SUB)
        q_tile<Q, NR, P, QS>(p, tb, p.dense ? cs : cb, p.dense ? 0 : ob * p.K * Q::ES, b, oy, ox, ob, off, keep);
  }
}

template <class Q, int NR, int P, int QS, int CB>
void q_rows_s(const VecQConvParams& p, int64_t begin, int64_t end) {
  const int64_t span = P + int64_t(p.kw - 1) * p.dil_w;
  const int64_t cs = p.cin * Q::ES;
  std::vector<uint8_t> scratch(size_t(p.kh) * span * cs + 128);
  std::vector<uint8_t> padrow(size_t(span) * cs + 128);
  for (size_t j = 0; j < padrow.size(); ++j) padrow[j] = Q::pad_byte(p, j);
  // spare bytes: the permute path loads whole 64-byte registers from a pixel
  std::vector<uint8_t> buf(size_t(p.kh) * p.kw * P * p.cb + 128);
  for (int64_t item = begin; item < end; ++item)
    q_row<Q, NR, P, QS, CB>(p, scratch.data(), padrow.data(), buf.data(), p.cb, item / p.ho, item % p.ho);
}

// Compile-time pixel strides for the common shapes (64 channels: 64, 128 or 256 bytes per pixel), else run time.
template <class Q, int NR, int P>
void q_rows(const VecQConvParams& p, int64_t begin, int64_t end) {
  const int64_t qs = p.dense ? p.cin * Q::ES : p.cb;
  if (qs == 64) q_rows_s<Q, NR, P, 64, 64>(p, begin, end);
  else if (qs == 128) q_rows_s<Q, NR, P, 128, 128>(p, begin, end);
  else if (qs == 256) q_rows_s<Q, NR, P, 256, 256>(p, begin, end);
  else q_rows_s<Q, NR, P, 0, 0>(p, begin, end);
}

}  // namespace
}  // namespace dynprune
