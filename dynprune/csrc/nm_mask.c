/* dynprune: N:M masks of a dense weight from a cached, packed magnitude ordering (plain C, no torch).
 *
 * A weight is viewed as (pre, G, m, post): groups of m consecutive entries along its reduction axis in
 * dim 2 (dynprune.nm.grouped); the m entries of one group are `post` floats apart. The ordering stores
 * each entry's rank inside its group (0 = largest magnitude, ties to the lower index) in `bits` bits
 * (1, 2, 4 or 8), entry j of the flat (pre, G, m, post) order at byte j >> lp, shift (j & (per - 1)) *
 * bits, per = 8 / bits = 1 << lp (dynprune.nm.pack_order). Threads are plain pthreads per call (an
 * OpenMP pool here fights torch's own: measured 30x slower on small layers).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline int log2_per(int bits) { return bits == 1 ? 3 : bits == 2 ? 2 : bits == 4 ? 1 : 0; }

static inline int get_rank(const uint8_t* packed, int64_t j, int bits, int lp) {
  return (packed[j >> lp] >> ((j & ((1 << lp) - 1)) * bits)) & ((1 << bits) - 1);
}

static inline void set_rank(uint8_t* packed, int64_t j, int bits, int lp, int r) {
  const int shift = (int)(j & ((1 << lp) - 1)) * bits;
  packed[j >> lp] = (uint8_t)((packed[j >> lp] & ~(((1 << bits) - 1) << shift)) | (r << shift));
}

/* Fresh ranks of the group at flat offset `base` (entries base + i * post), written into `packed`. */
static void rank_group(const float* w, int64_t base, int64_t m, int64_t post, uint8_t* packed, int bits, int lp) {
  for (int64_t i = 0; i < m; ++i) {
    const float ai = fabsf(w[base + i * post]);
    int r = 0;
    for (int64_t k = 0; k < m; ++k) {
      const float ak = fabsf(w[base + k * post]);
      r += (k < i) ? (ak >= ai) : (ak > ai);
    }
    set_rank(packed, base + i * post, bits, lp, r);
  }
}

/* The packed ranks of every entry of w (pre, G, m, post). m <= 256. */
void nm_order_pack(const float* w, int64_t pre, int64_t G, int64_t m, int64_t post, int bits, uint8_t* packed) {
  const int lp = log2_per(bits);
  const int64_t total = pre * G * m * post;
  memset(packed, 0, (size_t)((total + (1 << lp) - 1) >> lp));
  for (int64_t pg = 0; pg < pre * G; ++pg)
    for (int64_t q = 0; q < post; ++q) rank_group(w, pg * m * post + q, m, post, packed, bits, lp);
}

typedef struct {
  const float* w;
  uint8_t* packed;
  int bits, repair;
  int64_t pg0, pg1, m, post, n;
  float* out;
  uint8_t* keep;
  int64_t repaired;
} job_t;

/* Check (and re-rank) groups [pg0, pg1), then mask their entries. */
static void* run_job(void* arg) {
  job_t* j = (job_t*)arg;
  const float* w = j->w;
  uint8_t* packed = j->packed;
  const int bits = j->bits, lp = log2_per(bits), mask = (1 << bits) - 1;
  const int64_t m = j->m, post = j->post, n = j->n;
  int64_t repaired = 0;
  if (j->repair && post == 1) { /* groups contiguous (Linear, 1x1 conv) */
    for (int64_t pg = j->pg0; pg < j->pg1; ++pg) {
      const int64_t base = pg * m;
      float kmin = INFINITY, dmax = -1.0f;
      for (int64_t i = 0; i < m; ++i) {
        const float a = fabsf(w[base + i]);
        const int kept = get_rank(packed, base + i, bits, lp) < n; /* branchless: kept is a coin flip */
        const float as_kept = kept ? a : INFINITY, as_dropped = kept ? -1.0f : a;
        kmin = as_kept < kmin ? as_kept : kmin;
        dmax = as_dropped > dmax ? as_dropped : dmax;
      }
      if (!(kmin > dmax || (kmin == 0.0f && dmax == 0.0f))) {
        rank_group(w, base, m, 1, packed, bits, lp);
        ++repaired;
      }
    }
  } else if (j->repair) { /* groups `post` apart: check all `post` of them row by row, contiguously */
    float* restrict kmin = (float*)malloc(sizeof(float) * (size_t)(2 * post));
    float* restrict dmax = kmin + post;
    for (int64_t pg = j->pg0; pg < j->pg1; ++pg) {
      const int64_t base = pg * m * post;
      for (int64_t q = 0; q < post; ++q) {
        kmin[q] = INFINITY;
        dmax[q] = -1.0f;
      }
      for (int64_t i = 0; i < m; ++i) {
        const int64_t row = base + i * post;
        for (int64_t q = 0; q < post; ++q) {
          const float a = fabsf(w[row + q]);
          const int kept = get_rank(packed, row + q, bits, lp) < n;
          const float as_kept = kept ? a : INFINITY, as_dropped = kept ? -1.0f : a;
          kmin[q] = as_kept < kmin[q] ? as_kept : kmin[q];
          dmax[q] = as_dropped > dmax[q] ? as_dropped : dmax[q];
        }
      }
      for (int64_t q = 0; q < post; ++q) {
        if (!(kmin[q] > dmax[q] || (kmin[q] == 0.0f && dmax[q] == 0.0f))) {
          rank_group(w, base + q, m, post, packed, bits, lp);
          ++repaired;
        }
      }
    }
    free(kmin);
  }
  const int64_t e1 = j->pg1 * m * post;
  for (int64_t e = j->pg0 * m * post; e < e1; ++e) {
    const int kept = get_rank(packed, e, bits, lp) < n;
    j->out[e] = w[e] * (float)kept; /* a float multiply, like torch's w * mask (-0.0, NaN alike) */
    if (j->keep) j->keep[e] = (uint8_t)kept;
  }
  j->repaired = repaired;
  return NULL;
}

/* out = w * keep and, if keep != NULL, keep = rank < n (0/1 bytes), for the packed ordering of w.
 * With `repair`, first checks every group: the ordering must still select its n largest magnitudes
 * (every kept entry strictly larger than every dropped one, or both 0); a group that fails is ranked
 * afresh in `packed`. Splits the groups over up to `threads` threads when no packed byte spans two
 * groups. Returns the number of groups ranked afresh. */
int64_t nm_apply(const float* w, uint8_t* packed, int bits, int64_t pre, int64_t G, int64_t m, int64_t post,
                 int64_t n, int repair, float* out, uint8_t* keep, int threads) {
  const int64_t groups = pre * G;
  if ((m * post * bits) % 8 != 0 || groups * m * post < (1 << 16)) threads = 1;
  if (threads > 16) threads = 16;
  job_t jobs[16];
  pthread_t tid[16];
  for (int t = 0; t < threads; ++t) {
    jobs[t] = (job_t){w, packed, bits, repair, groups * t / threads, groups * (t + 1) / threads, m, post, n, out,
                      keep, 0};
  }
  for (int t = 1; t < threads; ++t) {
    if (pthread_create(&tid[t], NULL, run_job, &jobs[t]) != 0) { /* run it here instead */
      run_job(&jobs[t]);
      tid[t] = 0;
    }
  }
  run_job(&jobs[0]);
  int64_t repaired = jobs[0].repaired;
  for (int t = 1; t < threads; ++t) {
    if (tid[t]) pthread_join(tid[t], NULL);
    repaired += jobs[t].repaired;
  }
  return repaired;
}
