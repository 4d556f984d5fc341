// dynprune: where a tile of the direct convolutions reads its input rows (shared by the fp32 vector kernel and the
// low-precision ones).
#pragma once
#include <cstdint>
#include <cstring>

namespace dynprune {

// For output row oy of image b and the tile whose first tap column is ix0 (span input columns), rows[ky] points
// at the tile's first input pixel in tap row ky. A tap row outside the image gets `pad_row` (nullptr: skip the
// row, its contribution being zero). A tile reaching past the left or right edge reads a copy of its pixels in
// `scratch` (kh * span * cs elements), with `pad` (cs elements; nullptr: zeros) outside the image; cs is the
// elements per pixel. Geometry from p: h, w, kh, pad_h, dil_h.
template <class T, class Params>
inline void tile_rows(const Params& p, const T* x, int64_t cs, int64_t b, int64_t oy, int64_t ix0, int64_t span,
                      T* scratch, const T* pad_row, const T* pad, const T** rows) {
  const bool inside = ix0 >= 0 && ix0 + span <= p.w;
  for (int ky = 0; ky < p.kh; ++ky) {
    const int64_t iy = oy - p.pad_h + int64_t(ky) * p.dil_h;
    if (iy < 0 || iy >= p.h) {
      rows[ky] = pad_row;
      continue;
    }
    const T* row = x + (b * p.h + iy) * p.w * cs;
    if (inside) {
      rows[ky] = row + ix0 * cs;
      continue;
    }
    T* dst = scratch + ky * span * cs;
    for (int64_t j = 0; j < span; ++j) {
      const int64_t ix = ix0 + j;
      if (ix >= 0 && ix < p.w) std::memcpy(dst + j * cs, row + ix * cs, size_t(cs) * sizeof(T));
      else if (pad) std::memcpy(dst + j * cs, pad, size_t(cs) * sizeof(T));
      else std::memset(dst + j * cs, 0, size_t(cs) * sizeof(T));
    }
    rows[ky] = dst;
  }
}

}  // namespace dynprune
