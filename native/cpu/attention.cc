// Fused attention on the CPU: flash-style forward (online softmax over key blocks, never an N x M
// score matrix) and backward (recomputes probabilities from the saved log-sum-exp).
//
// Layout: q [B, H, N, hd], k/v [B, H, M, hd], any strides (permuted views are read in place and
// packed per head into small dense buffers). o is dense [B, H, N, hd], lse dense [B, H, N].
// The visibility rule (kv_len, causal with q_offset, MergeAR keep + window) and the online softmax
// update live in kernels/online_softmax.h, shared with the CUDA kernels.
//
// Blocking: query blocks of BQ rows x key blocks of BK keys. Scores come from a 6 x 16 AVX2/FMA
// register tile (6 query rows x 16 keys, K packed transposed in 16-key panels); P.V from a 6 x 16
// tile over the head dim (V packed row-major, head dim zero-padded to a multiple of 16, so every
// head dim is handled by the same kernels and 32/64/96/128 need no tail code). Probabilities use
// the vector expf of vexp.h (the nn families' one).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"
#include "../kernels/attention_args.h"
#include "../kernels/hd.h"
#include "../kernels/online_softmax.h"
#include "vexp.h"

namespace mvq {
namespace {

constexpr int RB = 6;    // query rows per register tile
constexpr int PW = 16;   // keys per panel (and head-dim columns per tile)
constexpr int BQ = 48;   // query rows per block (multiple of RB)
constexpr int BK = 64;   // keys per block (multiple of PW)
constexpr int64_t kRowPathMaxN = 3;  // N at or below this uses the per-row path (decode steps)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// C[R][16] = A[R][kdim] (row stride lda) . Bp, where Bp is a [kdim][16] panel.
template <int R>
inline void tile_dot_panel(const float* A, int64_t lda, const float* Bp, int64_t kdim, float* C, int64_t ldc) {
  __m256 c0[R], c1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    c0[r] = _mm256_setzero_ps();
    c1[r] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kdim; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp + k * PW);
    const __m256 b1 = _mm256_loadu_ps(Bp + k * PW + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(C + r * ldc, c0[r]);
    _mm256_storeu_ps(C + r * ldc + 8, c1[r]);
  }
}

// C[R][ncols] += A[R][kdim] . B[kdim][ncols] (B row stride ldb), ncols a multiple of 16.
template <int R>
inline void tile_nn_acc(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t kdim, float* C, int64_t ldc,
                        int64_t ncols) {
  for (int64_t c = 0; c < ncols; c += PW) {
    __m256 c0[R], c1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      c0[r] = _mm256_loadu_ps(C + r * ldc + c);
      c1[r] = _mm256_loadu_ps(C + r * ldc + c + 8);
    }
    for (int64_t k = 0; k < kdim; ++k) {
      const __m256 b0 = _mm256_loadu_ps(B + k * ldb + c);
      const __m256 b1 = _mm256_loadu_ps(B + k * ldb + c + 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
        c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(C + r * ldc + c, c0[r]);
      _mm256_storeu_ps(C + r * ldc + c + 8, c1[r]);
    }
  }
}

// S[rows][ncols16] = A[rows][kdim] . panels (ncols16 / 16 panels of [kdim][16]).
void gemm_panels(const float* A, int64_t lda, int64_t rows, const float* panels, int64_t kdim, int64_t ncols16, float* C,
                 int64_t ldc) {
  // panel outer: one [kdim][16] panel stays in L1 while every row tile of A (a query block) uses it
  for (int64_t c = 0; c < ncols16; c += PW) {
    const float* Bp = panels + (c / PW) * kdim * PW;
    for (int64_t r = 0; r < rows; r += RB) {
      const int64_t nr = std::min<int64_t>(RB, rows - r);
      const float* a = A + r * lda;
      float* o = C + r * ldc + c;
      switch (nr) {
        case 6: tile_dot_panel<6>(a, lda, Bp, kdim, o, ldc); break;
        case 5: tile_dot_panel<5>(a, lda, Bp, kdim, o, ldc); break;
        case 4: tile_dot_panel<4>(a, lda, Bp, kdim, o, ldc); break;
        case 3: tile_dot_panel<3>(a, lda, Bp, kdim, o, ldc); break;
        case 2: tile_dot_panel<2>(a, lda, Bp, kdim, o, ldc); break;
        default: tile_dot_panel<1>(a, lda, Bp, kdim, o, ldc); break;
      }
    }
  }
}

// C[rows][ncols] += A[rows][kdim] . B[kdim][ncols].
void gemm_nn_acc(const float* A, int64_t lda, int64_t rows, const float* B, int64_t ldb, int64_t kdim, float* C, int64_t ldc,
                 int64_t ncols) {
  // kdim in chunks of BK: a BK-row slice of B and the matching columns of A stay in L1 across
  // every row tile
  for (int64_t k0 = 0; k0 < kdim; k0 += BK) {
    const int64_t kc = std::min<int64_t>(BK, kdim - k0);
    const float* Bk = B + k0 * ldb;
    for (int64_t r = 0; r < rows; r += RB) {
      const int64_t nr = std::min<int64_t>(RB, rows - r);
      const float* a = A + r * lda + k0;
      float* o = C + r * ldc;
      switch (nr) {
        case 6: tile_nn_acc<6>(a, lda, Bk, ldb, kc, o, ldc, ncols); break;
        case 5: tile_nn_acc<5>(a, lda, Bk, ldb, kc, o, ldc, ncols); break;
        case 4: tile_nn_acc<4>(a, lda, Bk, ldb, kc, o, ldc, ncols); break;
        case 3: tile_nn_acc<3>(a, lda, Bk, ldb, kc, o, ldc, ncols); break;
        case 2: tile_nn_acc<2>(a, lda, Bk, ldb, kc, o, ldc, ncols); break;
        default: tile_nn_acc<1>(a, lda, Bk, ldb, kc, o, ldc, ncols); break;
      }
    }
  }
}

// Packs rows [0, nrows) of a strided [rows, hd] matrix into dense [nrows_pad][hdp] (zero padding),
// times `mul`.
void pack_rows(const float* src, int64_t srow, int64_t sd, int64_t nrows, int64_t hd, float* dst, int64_t nrows_pad,
               int64_t hdp, float mul = 1.f) {
  for (int64_t r = 0; r < nrows; ++r) {
    const float* s = src + r * srow;
    float* d = dst + r * hdp;
    if (sd == 1) {
      for (int64_t c = 0; c < hd; ++c) d[c] = s[c] * mul;
    } else {
      for (int64_t c = 0; c < hd; ++c) d[c] = s[c * sd] * mul;
    }
    for (int64_t c = hd; c < hdp; ++c) d[c] = 0.f;
  }
  if (nrows_pad > nrows) std::memset(dst + nrows * hdp, 0, sizeof(float) * (nrows_pad - nrows) * hdp);
}

// Packs keys [0, nkeys) of a strided [keys, hd] matrix as 16-key panels [hdp][16], zero padded.
// r[t] = column t of the 8 x 8 block held by rows r[0..8).
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

void pack_panels(const float* src, int64_t srow, int64_t sd, int64_t nkeys, int64_t hd, float* dst, int64_t hdp) {
  const int64_t np = round_up(nkeys, PW) / PW;
  int64_t j0 = 0;
  if (sd == 1 && hd % 8 == 0) {
    // dense rows: whole 8-key groups by 8 x 8 register transposes (padding columns hd..hdp zeroed)
    for (; j0 + 8 <= nkeys; j0 += 8) {
      float* panel = dst + (j0 / PW) * hdp * PW + (j0 % PW);
      for (int64_t c = 0; c < hd; c += 8) {
        __m256 r[8];
        for (int t = 0; t < 8; ++t) r[t] = _mm256_loadu_ps(src + (j0 + t) * srow + c);
        transpose8(r);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(panel + (c + t) * PW, r[t]);
      }
      for (int64_t c = hd; c < hdp; ++c) _mm256_storeu_ps(panel + c * PW, _mm256_setzero_ps());
    }
  }
  // remaining keys and the zero padding of the last panel
  float* tail = dst + (j0 / PW) * hdp * PW;
  std::memset(tail, 0, sizeof(float) * (np * hdp * PW - (j0 / PW) * hdp * PW));
  if (j0 % PW) {
    // the first 8 keys of this panel were written above: rewrite them after the memset
    j0 -= j0 % PW;
  }
  for (int64_t j = j0; j < nkeys; ++j) {
    float* panel = dst + (j / PW) * hdp * PW + (j % PW);
    const float* s = src + j * srow;
    for (int64_t c = 0; c < hd; ++c) panel[c * PW] = s[c * sd];
  }
}

// Scores of one row in place: s = s * scale + bias, -inf for keys the row may not see; returns the
// row max. Columns c < ncols16 belong to keys kb + c. keepf (or null) holds 0 for kept keys and
// -inf for duplicates, added only to keys older than the row's recent window.
float finish_scores(const AttnParams& p, int64_t i, int64_t kb, int64_t ncols16, const float* biasv, const float* keepf,
                    float* s, float scale) {
  const int64_t lim_i = std::min<int64_t>(ncols16, std::max<int64_t>(0, p.key_limit(i) - kb));
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 mx = ninf;
  if (!keepf && !p.bias && scale == 1.f) {
    // no scale, bias or keep mask: columns below lim only feed the row max, the rest become -inf
    __m256 mx1 = ninf;
    int64_t c = 0;
    for (; c + 16 <= lim_i; c += 16) {
      mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + c));
      mx1 = _mm256_max_ps(mx1, _mm256_loadu_ps(s + c + 8));
    }
    if (c < ncols16) {
      const __m256 limv = _mm256_set1_ps(static_cast<float>(lim_i));
      __m256 idx = _mm256_add_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps(static_cast<float>(c)));
      for (; c < ncols16; c += 8, idx = _mm256_add_ps(idx, _mm256_set1_ps(8.f))) {
        const __m256 x = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + c), _mm256_cmp_ps(idx, limv, _CMP_LT_OQ));
        _mm256_storeu_ps(s + c, x);
        mx = _mm256_max_ps(mx, x);
      }
    }
    return hmax(_mm256_max_ps(mx, mx1));
  }
  const float lim = static_cast<float>(lim_i);
  // keys j < qpos - window (column c < wlim) obey the keep mask
  const float wlim = static_cast<float>(std::min<int64_t>(ncols16, std::max<int64_t>(-1, p.q_offset + i - p.window - kb)));
  const __m256 sc = _mm256_set1_ps(scale);
  const __m256 limv = _mm256_set1_ps(lim), wlimv = _mm256_set1_ps(wlim);
  __m256 idx = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 eight = _mm256_set1_ps(8.f);
  for (int64_t c = 0; c < ncols16; c += 8, idx = _mm256_add_ps(idx, eight)) {
    __m256 x = _mm256_fmadd_ps(_mm256_loadu_ps(s + c), sc, _mm256_loadu_ps(biasv + kb + c));
    if (keepf) x = _mm256_add_ps(x, _mm256_and_ps(_mm256_loadu_ps(keepf + kb + c), _mm256_cmp_ps(idx, wlimv, _CMP_LT_OQ)));
    x = _mm256_blendv_ps(ninf, x, _mm256_cmp_ps(idx, limv, _CMP_LT_OQ));
    _mm256_storeu_ps(s + c, x);
    mx = _mm256_max_ps(mx, x);
  }
  return hmax(mx);
}

// Per-thread scratch buffers, reused across calls: kernels ask for slot i at a size and get a
// vector that keeps its capacity, so steady-state calls neither allocate nor page-fault.
template <class T>
std::vector<T>& scratch(int slot, size_t n) {
  thread_local std::vector<T> pool[16];
  std::vector<T>& v = pool[slot];
  v.resize(n);
  return v;
}
template <class T>
std::vector<T>& scratch_filled(int slot, size_t n, T value) {
  std::vector<T>& v = scratch<T>(slot, 0);
  v.assign(n, value);
  return v;
}

// Per-head gathered key bias (0 without key_bias) and keep mask as 0 / -inf, for keys [0, n).
void gather_key_extras(const AttnParams& p, int64_t b, int64_t n, std::vector<float>& biasv, std::vector<float>& keepf) {
  biasv.assign(round_up(std::max<int64_t>(n, 1), PW) + PW, 0.f);
  for (int64_t j = 0; j < n; ++j) biasv[j] = p.key_bias(b, j);
  if (p.keep) {
    keepf.assign(round_up(std::max<int64_t>(n, 1), PW) + PW, 0.f);
    for (int64_t j = 0; j < n; ++j) keepf[j] = p.keep[b * p.kps[0] + j * p.kps[1]] != 0 ? 0.f : -INFINITY;
  }
}

// ---------------------------------------------------------------- forward

// Blocked path: query rows [i0, i1) of head (b, h). When every key a row may see fits in one key
// block of at most kOnePassMaxKeys, the whole row of scores is finished at once (exact max, one exp
// pass, one P.V product, no rescaling); longer rows stream BK-key blocks with the online update.
// The softmax scale is folded into the packed queries.
constexpr int64_t kOnePassMaxKeys = 512;

void forward_block_task(const AttnParams& p, int64_t b, int64_t h, int64_t i0, int64_t i1, float* o, float* lse) {
  const int64_t hd = p.hd, hdp = round_up(hd, PW);
  const int64_t jmax = p.key_limit(i1 - 1);  // keys any row of this task can see
  const float* qh = p.q + b * p.qs[0] + h * p.qs[1];
  const float* kh = p.k + b * p.ks[0] + h * p.ks[1];
  const float* vh = p.v + b * p.vs[0] + h * p.vs[1];
  const int64_t jpad = round_up(std::max<int64_t>(jmax, 1), PW);
  const int64_t bk = jpad <= kOnePassMaxKeys ? jpad : BK;  // key block (S row stride)
  std::vector<float>& kt = scratch<float>(0, jpad * hdp);
  std::vector<float>& vp = scratch<float>(1, jpad * hdp);
  std::vector<float>& qb = scratch<float>(2, BQ * hdp);
  std::vector<float>& S = scratch<float>(3, BQ * bk);
  std::vector<float>& O = scratch<float>(4, BQ * hdp);
  std::vector<float>& m = scratch<float>(5, BQ);
  std::vector<float>& l = scratch<float>(6, BQ);
  std::vector<float>& biasv = scratch<float>(7, 0);
  std::vector<float>& keepv = scratch<float>(15, 0);
  if (jmax > 0) {
    pack_panels(kh, p.ks[2], p.ks[3], jmax, hd, kt.data(), hdp);
    pack_rows(vh, p.vs[2], p.vs[3], jmax, hd, vp.data(), jpad, hdp);
  }
  gather_key_extras(p, b, jmax, biasv, keepv);
  const float* kv = p.keep ? keepv.data() : nullptr;

  for (int64_t r0 = i0; r0 < i1; r0 += BQ) {
    const int64_t nr = std::min<int64_t>(BQ, i1 - r0);
    const int64_t nr6 = round_up(nr, RB);
    pack_rows(qh + r0 * p.qs[2], p.qs[2], p.qs[3], nr, hd, qb.data(), nr6, hdp, p.scale);
    std::fill(O.begin(), O.begin() + nr6 * hdp, 0.f);
    std::fill(m.begin(), m.end(), -INFINITY);
    std::fill(l.begin(), l.end(), 0.f);
    const int64_t blim = p.key_limit(r0 + nr - 1);
    for (int64_t kb = 0; kb < blim; kb += bk) {
      const int64_t nk = std::min<int64_t>(bk, blim - kb);
      const int64_t nk16 = round_up(nk, PW);
      gemm_panels(qb.data(), hdp, nr6, kt.data() + (kb / PW) * hdp * PW, hdp, nk16, S.data(), bk);
      for (int64_t r = 0; r < nr; ++r) {
        float* s = S.data() + r * bk;
        const float m_new = std::max(m[r], finish_scores(p, r0 + r, kb, nk16, biasv.data(), kv, s, 1.f));
        if (m_new == -INFINITY) {
          std::memset(s, 0, sizeof(float) * nk16);
          continue;
        }
        const float alpha = attn_rescale(m[r], m_new);
        const __m256 mv = _mm256_set1_ps(m_new);
        __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 16 <= nk16; c += 16) {
          const __m256 e0 = nn::vexp(_mm256_sub_ps(_mm256_loadu_ps(s + c), mv));
          const __m256 e1 = nn::vexp(_mm256_sub_ps(_mm256_loadu_ps(s + c + 8), mv));
          _mm256_storeu_ps(s + c, e0);
          _mm256_storeu_ps(s + c + 8, e1);
          sum0 = _mm256_add_ps(sum0, e0);
          sum1 = _mm256_add_ps(sum1, e1);
        }
        l[r] = l[r] * alpha + hsum(_mm256_add_ps(sum0, sum1));
        // O is still zero before the first visible block (alpha = 0 then): no rescale needed
        if (alpha != 1.f && m[r] != -INFINITY) {
          float* orow = O.data() + r * hdp;
          const __m256 av = _mm256_set1_ps(alpha);
          for (int64_t cc = 0; cc < hdp; cc += 8) _mm256_storeu_ps(orow + cc, _mm256_mul_ps(_mm256_loadu_ps(orow + cc), av));
        }
        m[r] = m_new;
      }
      // Padding rows (nr..nr6) hold scores of zero query rows: finite, and their O rows are dropped.
      gemm_nn_acc(S.data(), bk, nr6, vp.data() + kb * hdp, hdp, nk16, O.data(), hdp, hdp);
    }
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = r0 + r;
      const float inv = attn_inv_sum(l[r]);
      float* dst = o + ((b * p.H + h) * p.N + i) * hd;
      const float* src = O.data() + r * hdp;
      for (int64_t c = 0; c < hd; ++c) dst[c] = src[c] * inv;
      lse[(b * p.H + h) * p.N + i] = attn_lse(m[r], l[r]);
    }
  }
}

inline float dot_strided(const float* a, const float* x, int64_t sx, int64_t n) {
  if (sx == 1) {
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(x + c), acc);
    float s = hsum(acc);
    for (; c < n; ++c) s += a[c] * x[c];
    return s;
  }
  float s = 0.f;
  for (int64_t c = 0; c < n; ++c) s += a[c] * x[c * sx];
  return s;
}

inline void axpy_strided(float alpha, const float* x, int64_t sx, float* y, int64_t n) {
  if (sx == 1) {
    const __m256 av = _mm256_set1_ps(alpha);
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) _mm256_storeu_ps(y + c, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + c), _mm256_loadu_ps(y + c)));
    for (; c < n; ++c) y[c] += alpha * x[c];
    return;
  }
  for (int64_t c = 0; c < n; ++c) y[c] += alpha * x[c * sx];
}

// Dot products of q with 8 consecutive contiguous rows k0, k0 + rs, ... (hd a multiple of 8),
// returned as one vector: 8 accumulators, then a transposing horizontal-add tree.
inline __m256 dot8_rows(const float* q, const float* k0, int64_t rs, int64_t hd) {
  __m256 a[8];
#pragma GCC unroll 8
  for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
  for (int64_t d = 0; d < hd; d += 8) {
    const __m256 qd = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) a[u] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + u * rs + d), a[u]);
  }
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Row path for few queries (decode steps against a KV cache): reads k and v rows in place.
void forward_row(const AttnParams& p, int64_t b, int64_t h, int64_t i, float* o, float* lse) {
  constexpr int64_t CH = 128;
  const int64_t hd = p.hd;
  std::vector<float> qv(hd), acc(hd, 0.f), s(CH);
  const float* qr = p.q + b * p.qs[0] + h * p.qs[1] + i * p.qs[2];
  for (int64_t c = 0; c < hd; ++c) qv[c] = qr[c * p.qs[3]] * p.scale;
  const float* kh = p.k + b * p.ks[0] + h * p.ks[1];
  const float* vh = p.v + b * p.vs[0] + h * p.vs[1];
  const int64_t lim = p.key_limit(i);
  float mrow = -INFINITY, lrow = 0.f;
  const int64_t qpos = p.q_offset + i;
  for (int64_t kb = 0; kb < lim; kb += CH) {
    const int64_t nk = std::min(CH, lim - kb);
    float mb = -INFINITY;
    int64_t c8 = 0;  // keys [kb, kb + c8) already have their dot product in s
    if (p.ks[3] == 1 && hd % 8 == 0)
      for (; c8 + 8 <= nk; c8 += 8) _mm256_storeu_ps(s.data() + c8, dot8_rows(qv.data(), kh + (kb + c8) * p.ks[2], p.ks[2], hd));
    for (int64_t c = 0; c < nk; ++c) {
      const int64_t j = kb + c;
      if (p.keep && !p.keep[b * p.kps[0] + j * p.kps[1]] && qpos - j > p.window) {
        s[c] = -INFINITY;
        continue;
      }
      s[c] = (c < c8 ? s[c] : dot_strided(qv.data(), kh + j * p.ks[2], p.ks[3], hd)) + p.key_bias(b, j);
      mb = std::max(mb, s[c]);
    }
    const float m_new = std::max(mrow, mb);
    if (m_new == -INFINITY) continue;
    const float alpha = attn_rescale(mrow, m_new);
    if (alpha != 1.f)
      for (int64_t c = 0; c < hd; ++c) acc[c] *= alpha;
    float sum = 0.f;
    for (int64_t c = 0; c < nk; ++c) {
      if (s[c] == -INFINITY) continue;
      const float e = std::exp(s[c] - m_new);
      sum += e;
      axpy_strided(e, vh + (kb + c) * p.vs[2], p.vs[3], acc.data(), hd);
    }
    lrow = lrow * alpha + sum;
    mrow = m_new;
  }
  const float inv = attn_inv_sum(lrow);
  float* dst = o + ((b * p.H + h) * p.N + i) * hd;
  for (int64_t c = 0; c < hd; ++c) dst[c] = acc[c] * inv;
  lse[(b * p.H + h) * p.N + i] = attn_lse(mrow, lrow);
}

std::vector<Tensor> op_attention(const OpArgs& a) {
  const AttnParams p = parse_attention_args(a, "attention");
  Tensor o = empty({p.B, p.H, p.N, p.hd});
  Tensor lse = empty({p.B, p.H, p.N});
  float* op = o.data<float>();
  float* lp = lse.data<float>();
  const int64_t heads = p.B * p.H;
  if (heads == 0 || p.N == 0) return {o, lse};
  if (p.N <= kRowPathMaxN) {
    parallel_tasks(heads * p.N, [&](int64_t t, int) { forward_row(p, t / p.N / p.H, (t / p.N) % p.H, t % p.N, op, lp); });
    return {o, lse};
  }
  // Split each head's queries into chunks when there are too few heads to keep every thread busy
  // (each chunk packs K and V once).
  const int64_t nqb = (p.N + BQ - 1) / BQ;
  const int64_t want = 3 * static_cast<int64_t>(num_threads());
  const int64_t chunks = std::min<int64_t>(nqb, std::max<int64_t>(1, (want + heads - 1) / heads));
  const int64_t per = (nqb + chunks - 1) / chunks;
  parallel_tasks(heads * chunks, [&](int64_t t, int) {
    const int64_t bh = t / chunks, c = t % chunks;
    const int64_t i0 = c * per * BQ, i1 = std::min<int64_t>(p.N, (c + 1) * per * BQ);
    if (i0 < i1) forward_block_task(p, bh / p.H, bh % p.H, i0, i1, op, lp);
  });
  return {o, lse};
}

// ---------------------------------------------------------------- backward

// One head: gradients of q, k, v for head (b, h) and this head's share of gbias.
void backward_head(const AttnParams& p, const AttnGradInputs& g, int64_t b, int64_t h, float* gq, float* gk, float* gv,
                   float* gb_part) {
  const int64_t hd = p.hd, hdp = round_up(hd, PW), N = p.N;
  const int64_t jmax = p.key_limit(N - 1);
  const int64_t jpad = round_up(std::max<int64_t>(jmax, 1), PW);
  const int64_t npad = round_up(N, RB);
  const float* qh = p.q + b * p.qs[0] + h * p.qs[1];
  const float* kh = p.k + b * p.ks[0] + h * p.ks[1];
  const float* vh = p.v + b * p.vs[0] + h * p.vs[1];
  std::vector<float>& kt = scratch<float>(0, jpad * hdp);
  std::vector<float>& kr = scratch<float>(1, jpad * hdp);
  std::vector<float>& vt = scratch<float>(2, jpad * hdp);
  std::vector<float>& qd = scratch<float>(3, npad * hdp);
  std::vector<float>& dod = scratch<float>(4, npad * hdp);
  std::vector<float>& dq = scratch_filled<float>(5, npad * hdp, 0.f);
  std::vector<float>& dk = scratch_filled<float>(6, jpad * hdp, 0.f);
  std::vector<float>& dv = scratch_filled<float>(7, jpad * hdp, 0.f);
  std::vector<float>& S = scratch<float>(8, BQ * BK);
  std::vector<float>& dP = scratch<float>(9, BQ * BK);
  std::vector<float>& PT = scratch<float>(10, BK * BQ);
  std::vector<float>& dST = scratch<float>(11, BK * BQ);
  std::vector<float>& D = scratch<float>(12, N);
  std::vector<float>& L = scratch<float>(13, N);
  std::vector<float>& biasv = scratch<float>(14, 0);
  std::vector<float>& keepv = scratch<float>(15, 0);
  std::vector<double>& gbacc = scratch_filled<double>(0, jpad, 0.0);
  if (jmax > 0) {
    pack_panels(kh, p.ks[2], p.ks[3], jmax, hd, kt.data(), hdp);
    pack_rows(kh, p.ks[2], p.ks[3], jmax, hd, kr.data(), jpad, hdp);
    pack_panels(vh, p.vs[2], p.vs[3], jmax, hd, vt.data(), hdp);
  }
  pack_rows(qh, p.qs[2], p.qs[3], N, hd, qd.data(), npad, hdp);
  const float* goh = g.go + b * g.gs[0] + h * g.gs[1];
  const float* oh = g.o + b * g.os[0] + h * g.os[1];
  pack_rows(goh, g.gs[2], g.gs[3], N, hd, dod.data(), npad, hdp);
  for (int64_t i = 0; i < N; ++i) {
    double d = 0;
    for (int64_t c = 0; c < hd; ++c) d += static_cast<double>(goh[i * g.gs[2] + c * g.gs[3]]) * oh[i * g.os[2] + c * g.os[3]];
    D[i] = static_cast<float>(d);
    L[i] = g.lse[b * g.ls[0] + h * g.ls[1] + i * g.ls[2]];
  }
  gather_key_extras(p, b, jmax, biasv, keepv);
  const float* kv = p.keep ? keepv.data() : nullptr;

  for (int64_t r0 = 0; r0 < N; r0 += BQ) {
    const int64_t nr = std::min<int64_t>(BQ, N - r0);
    const int64_t nr6 = round_up(nr, RB);
    const int64_t blim = p.key_limit(r0 + nr - 1);
    for (int64_t kb = 0; kb < blim; kb += BK) {
      const int64_t nk = std::min<int64_t>(BK, blim - kb);
      const int64_t nk16 = round_up(nk, PW);
      const float* ktb = kt.data() + (kb / PW) * hdp * PW;
      const float* vtb = vt.data() + (kb / PW) * hdp * PW;
      gemm_panels(qd.data() + r0 * hdp, hdp, nr6, ktb, hdp, nk16, S.data(), BK);
      gemm_panels(dod.data() + r0 * hdp, hdp, nr6, vtb, hdp, nk16, dP.data(), BK);
      float colsum[BK] = {};
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        float* s = S.data() + r * BK;
        float* dp = dP.data() + r * BK;
        finish_scores(p, i, kb, nk16, biasv.data(), kv, s, p.scale);
        const float lse_i = L[i];
        if (lse_i == -INFINITY) {  // fully masked row: P = dS = 0
          std::memset(s, 0, sizeof(float) * nk16);
          std::memset(dp, 0, sizeof(float) * nk16);
          continue;
        }
        const __m256 lv = _mm256_set1_ps(lse_i), dv8 = _mm256_set1_ps(D[i]);
        for (int64_t c = 0; c < nk16; c += 8) {
          const __m256 pr = nn::vexp(_mm256_sub_ps(_mm256_loadu_ps(s + c), lv));  // masked (-inf) -> 0
          const __m256 ds = _mm256_mul_ps(pr, _mm256_sub_ps(_mm256_loadu_ps(dp + c), dv8));
          _mm256_storeu_ps(s + c, pr);
          _mm256_storeu_ps(dp + c, ds);
          _mm256_storeu_ps(colsum + c, _mm256_add_ps(_mm256_loadu_ps(colsum + c), ds));
        }
      }
      for (int64_t c = 0; c < nk16; ++c) gbacc[kb + c] += colsum[c];
      // P^T and dS^T for the key-major products (dV, dK).
      for (int64_t r = 0; r < nr; ++r) {
        const float* sr = S.data() + r * BK;
        const float* dr = dP.data() + r * BK;
        for (int64_t c = 0; c < nk16; ++c) {
          PT[c * BQ + r] = sr[c];
          dST[c * BQ + r] = dr[c];
        }
      }
      for (int64_t r = nr; r < nr6; ++r) std::memset(dP.data() + r * BK, 0, sizeof(float) * nk16);
      // dV[kb..] += P^T dO ; dK[kb..] += dS^T Q ; dQ[r0..] += dS K   (scale applied at the end)
      gemm_nn_acc(PT.data(), BQ, nk16, dod.data() + r0 * hdp, hdp, nr, dv.data() + kb * hdp, hdp, hdp);
      gemm_nn_acc(dST.data(), BQ, nk16, qd.data() + r0 * hdp, hdp, nr, dk.data() + kb * hdp, hdp, hdp);
      gemm_nn_acc(dP.data(), BK, nr6, kr.data() + kb * hdp, hdp, nk16, dq.data() + r0 * hdp, hdp, hdp);
    }
  }
  const int64_t base_q = (b * p.H + h) * N * hd;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < hd; ++c) gq[base_q + i * hd + c] = dq[i * hdp + c] * p.scale;
  const int64_t base_k = (b * p.H + h) * p.M * hd;
  for (int64_t j = 0; j < p.M; ++j) {
    for (int64_t c = 0; c < hd; ++c) {
      gk[base_k + j * hd + c] = j < jmax ? dk[j * hdp + c] * p.scale : 0.f;
      gv[base_k + j * hd + c] = j < jmax ? dv[j * hdp + c] : 0.f;
    }
  }
  if (gb_part)
    for (int64_t j = 0; j < p.M; ++j) gb_part[j] = j < jmax ? static_cast<float>(gbacc[j]) : 0.f;
}

std::vector<Tensor> op_attention_backward(const OpArgs& a) {
  const AttnParams p = parse_attention_args(a, "attention_backward");
  const AttnGradInputs g = parse_attention_grad_args(a, p, "attention_backward");
  Tensor gq = empty({p.B, p.H, p.N, p.hd});
  Tensor gk = empty({p.B, p.H, p.M, p.hd});
  Tensor gv = empty({p.B, p.H, p.M, p.hd});
  Tensor gbias;
  const int64_t heads = p.B * p.H;
  std::vector<float> part;
  if (p.bias) {
    gbias = empty({p.B, p.M});
    part.assign(heads * p.M, 0.f);
  }
  if (p.N == 0) {
    std::memset(gk.raw(), 0, gk.nbytes());
    std::memset(gv.raw(), 0, gv.nbytes());
  } else if (heads > 0) {
    parallel_tasks(heads, [&](int64_t t, int) {
      backward_head(p, g, t / p.H, t % p.H, gq.data<float>(), gk.data<float>(), gv.data<float>(),
                    p.bias ? part.data() + t * p.M : nullptr);
    });
  }
  if (p.bias) {
    float* gbp = gbias.data<float>();
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t j = 0; j < p.M; ++j) {
        double s = 0;
        for (int64_t h = 0; h < p.H; ++h) s += part[(b * p.H + h) * p.M + j];
        gbp[b * p.M + j] = static_cast<float>(s);
      }
  }
  return {gq, gk, gv, gbias};
}

}  // namespace

MVQ_REGISTER_OP("attention", Device::CPU, op_attention);
MVQ_OP_ATTRS("attention", "causal", "kv_len", "q_offset", "scale", "window");
MVQ_REGISTER_OP("attention_backward", Device::CPU, op_attention_backward);
MVQ_OP_ATTRS("attention_backward", "causal", "kv_len", "q_offset", "scale", "window");

}  // namespace mvq
