// LFQ (lookup-free quantization): sign quantization, bit indices, token factorization, and the
// entropy losses computed exactly through the bit factorization (never materializing N x 2^d).
//
// Layout: the channel (bit) axis is `dim` of z; every other axis is a row. Index bits are read
// least-significant first: index = sum_j 2^j [z_j > 0].
//
// Entropy (see kernels/lfq_math.h): p(c) = prod_j sigma(a_j c_j), a_j = 4 z_j / T.
//   per_sample = (1/N) sum_n sum_j H(a_nj)                          (binary entropies, double)
//   pbar[c]    = (1/N) sum_n P_lo[n, c_lo] P_hi[n, c_hi]            (c = c_lo + 2^lo c_hi)
//   codebook   = -sum_c pbar[c] log(pbar[c] + 1e-5)
// P_lo / P_hi hold the products over the low / high half of the bits ([rows, 2^lo], [rows, 2^hi]);
// pbar is their fp32 matrix product (sums of non-negative terms, so fp32 keeps ~1e-6 relative),
// accumulated in place in the avg_probs output. At T = 0.01 most bits of a row are certain
// (|a| = 400 |z|), so a chunk whose rows have few "free" bits is sparse: each row's nonzero table
// entries are enumerated from its free bits and pbar gets their (lo, hi) pairs. Dense chunks
// build full tables and use sgemm (gemm.h); the backward's dP_lo = P_hi G^T, dP_hi = P_lo G too.
// Rows are processed in chunks of kRowChunk (R rows) so scratch memory does not grow with N:
//   both:     R * d * 8 (p1) + R * 40 (row bookkeeping)
//   sparse:   8 * sum over rows of (2^free_lo + 2^free_hi) (entry lists; a chunk takes the
//             sparse path only when that is at most the dense tables' R * (Lp + Hp) * 4)
//   dense:    R * (Lp + Hp) * 4 (tables); backward + 2^d * 4 (G) + R * (Lp + Hp) * 4 (dP tables)
//   backward without avg_probs: + 2^d * 4 (pbar)
// bytes, with Lp, Hp = 2^lo, 2^hi rounded up to multiples of 16.
// Argument checks, the layout of z and the bit split: kernels/lfq_args.h (shared with CUDA).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if (defined(__AVX2__) && defined(__FMA__)) || defined(__BMI2__)
#include <immintrin.h>
#endif

#include "../core/op.h"
#include "../core/parallel.h"
#include "../kernels/hd.h"
#include "../kernels/lfq_args.h"
#include "../kernels/lfq_math.h"
#include "gemm.h"

namespace mvq {
namespace {

constexpr int64_t kRowChunk = 1024;

// ---------------------------------------------------------------------------------------------
// Quantization and indices

std::vector<Tensor> op_lfq_quantize(const OpArgs& a) {
  const LfqQuantizeArgs q = parse_lfq_quantize(a);
  const Tensor& z = q.z;
  const LfqLayout& L = q.L;
  Tensor codes = empty(z.shape(), DType::F32);
  Tensor idx = empty(q.index_shape, DType::I64);
  const float* zp = z.data<float>();
  float* cp = codes.data<float>();
  int64_t* ip = idx.data<int64_t>();
  parallel_for(L.rows(), 1024, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      int64_t v = 0;
      for (int64_t j = 0; j < L.d; ++j) {
        const int64_t o = L.at(n, j);
        const bool pos = zp[o] > 0.0f;
        cp[o] = pos ? 1.0f : -1.0f;
        v |= static_cast<int64_t>(pos) << j;
      }
      ip[n] = v;
    }
  });
  return {codes, idx};
}

// lfq_indices_to_codes(indices, {bits, dim}): codes with the bit axis inserted at `dim` of the
// output (default 1; -1 appends it).
std::vector<Tensor> op_lfq_indices_to_codes(const OpArgs& a) {
  const LfqIndicesToCodesArgs c = parse_lfq_indices_to_codes(a);
  const Tensor& idx = c.indices;
  const int64_t bits = c.bits;
  const LfqLayout& L = c.L;
  Tensor codes = empty(c.out_shape, DType::F32);
  const int64_t* ip = idx.data<int64_t>();
  const int64_t lim = int64_t(1) << bits;
  for (int64_t n = 0; n < L.rows(); ++n)
    MVQ_CHECK_RANGE(ip[n] >= 0 && ip[n] < lim, "lfq_indices_to_codes: 'indices' must be in [0, 2^", bits, "), got ", ip[n],
                    " at element ", n);
  float* cp = codes.data<float>();
  parallel_for(L.rows(), 1024, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      for (int64_t j = 0; j < bits; ++j) cp[L.at(n, j)] = ((ip[n] >> j) & 1) ? 1.0f : -1.0f;
  });
  return {codes};
}

// lfq_factorize(indices, {bits: [b0, b1]}) -> [pre = bits 0..b0-1, post = bits b0..b0+b1-1].
std::vector<Tensor> op_lfq_factorize(const OpArgs& a) {
  const Tensor idx = a.input(0, "indices", DType::I64).contiguous();
  const auto [b0, b1] = lfq_factor_bits("lfq_factorize", a.attrs);
  const int64_t lim = int64_t(1) << (b0 + b1);
  Tensor pre = empty(idx.shape(), DType::I64), post = empty(idx.shape(), DType::I64);
  const int64_t* ip = idx.data<int64_t>();
  int64_t* pp = pre.data<int64_t>();
  int64_t* qp = post.data<int64_t>();
  for (int64_t n = 0; n < idx.numel(); ++n) {
    MVQ_CHECK_RANGE(ip[n] >= 0 && ip[n] < lim, "lfq_factorize: 'indices' must be in [0, 2^", b0 + b1, "), got ", ip[n],
                    " at element ", n);
    pp[n] = ip[n] & ((int64_t(1) << b0) - 1);
    qp[n] = ip[n] >> b0;
  }
  return {pre, post};
}

// lfq_unfactorize(pre, post, {bits: [b0, b1]}) -> pre + 2^b0 post.
std::vector<Tensor> op_lfq_unfactorize(const OpArgs& a) {
  const LfqUnfactorizeArgs u = parse_lfq_unfactorize(a);
  const Tensor &pre = u.pre, &post = u.post;
  const int64_t b0 = u.b0, b1 = u.b1;
  Tensor out = empty(pre.shape(), DType::I64);
  const int64_t* pp = pre.data<int64_t>();
  const int64_t* qp = post.data<int64_t>();
  int64_t* op = out.data<int64_t>();
  for (int64_t n = 0; n < pre.numel(); ++n) {
    MVQ_CHECK_RANGE(pp[n] >= 0 && pp[n] < (int64_t(1) << b0), "lfq_unfactorize: 'pre' must be in [0, 2^", b0, "), got ", pp[n]);
    MVQ_CHECK_RANGE(qp[n] >= 0 && qp[n] < (int64_t(1) << b1), "lfq_unfactorize: 'post' must be in [0, 2^", b1, "), got ", qp[n]);
    op[n] = pp[n] | (qp[n] << b0);
  }
  return {out};
}

// ---------------------------------------------------------------------------------------------
// Entropy

// A bit is "free" in a row when both of its factors reach the table floor; a table entry whose
// code disagrees with a non-free bit's likely value holds a factor < kTableFloor, so it is zero.
inline bool free_bit(double p1) { return (p1 >= lfq::kTableFloor) & (1.0 - p1 >= lfq::kTableFloor); }

// The 2^d passes over pbar (codebook entropy, its gradient table) evaluate log(pbar + 1e-5) in
// double, 4 lanes at a time where AVX2 is available. x >= 1e-5 is normal: x = 2^e m with
// m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716, and the
// odd series of atanh through s^21 leaves a truncation below 1e-16 relative.
#if defined(__AVX2__) && defined(__FMA__)
inline __m256d log_pd(__m256d x) {
  const __m256d one = _mm256_set1_pd(1.0);
  const __m256i bits = _mm256_castpd_si256(x);
  // Exponent field (x > 0: no sign bit) as a double via the 2^52 trick.
  const __m256i ebits = _mm256_srli_epi64(bits, 52);
  const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
  __m256d e = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(ebits, _mm256_castpd_si256(two52))), two52);
  e = _mm256_sub_pd(e, _mm256_set1_pd(1023.0));
  // Mantissa in [1, 2); halved (exponent + 1) above sqrt(2).
  const __m256i mant = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
                                       _mm256_set1_epi64x(0x3FF0000000000000LL));
  __m256d m = _mm256_castsi256_pd(mant);
  const __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
  m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
  e = _mm256_add_pd(e, _mm256_and_pd(big, one));
  const __m256d sv = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
  const __m256d s2 = _mm256_mul_pd(sv, sv);
  __m256d q = _mm256_set1_pd(1.0 / 21);
  for (int k = 19; k >= 3; k -= 2) q = _mm256_fmadd_pd(q, s2, _mm256_set1_pd(1.0 / k));
  // log m = 2 (s + s^3 q(s^2)); log x = e ln2 + log m, ln2 split hi + lo.
  const __m256d lm = _mm256_mul_pd(_mm256_set1_pd(2.0), _mm256_fmadd_pd(_mm256_mul_pd(sv, s2), q, sv));
  const __m256d lo = _mm256_fmadd_pd(e, _mm256_set1_pd(1.9082149292705877e-10), lm);
  return _mm256_fmadd_pd(e, _mm256_set1_pd(0.69314718036912381649), lo);
}

// exp(x) for x in [-708, 0] (normal results), 4 lanes: x = n ln2 + r, |r| <= ln2 / 2, Taylor
// series of exp(r) through r^13 (truncation < 1e-17), times 2^n from the exponent bits.
inline __m256d exp_neg_pd(__m256d x) {
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(0.69314718036912381649), x);
  r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.9082149292705877e-10), r);
  __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);  // 1/13!
  double f = 6227020800.0;
  for (int k = 12; k >= 0; --k) {
    f /= (k + 1);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / f));
  }
  // 2^n: n + 1.5 * 2^52 holds n in its low bits.
  const __m256d magic = _mm256_set1_pd(6755399441055744.0);
  const __m256i ni = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(n, magic)), _mm256_castpd_si256(magic));
  const __m256d two_n = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(ni, _mm256_set1_epi64x(1023)), 52));
  return _mm256_mul_pd(p, two_n);
}
#endif

// Codebook entropy over avg [i0, i1): avg[i] = sum[i] / N in place (avg holds sums on entry),
// returns sum of -pbar log(pbar + eps) over the block. Zero entries contribute 0.
double codebook_block(float* ap, int64_t i0, int64_t i1, double N) {
  double s = 0.0;
  int64_t i = i0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256d eps = _mm256_set1_pd(lfq::kLogEps);
  __m256d acc = _mm256_setzero_pd();
  for (; i + 8 <= i1; i += 8) {
    const __m256 v = _mm256_loadu_ps(ap + i);
    // Skip runs of exact zeros (the sums are of non-negative terms: no -0).
    if (_mm256_testz_si256(_mm256_castps_si256(v), _mm256_castps_si256(v))) continue;
    for (int h = 0; h < 2; ++h) {
      const __m256d pb = _mm256_div_pd(_mm256_cvtps_pd(h ? _mm256_extractf128_ps(v, 1) : _mm256_castps256_ps128(v)),
                                       _mm256_set1_pd(N));
      _mm_storeu_ps(ap + i + 4 * h, _mm256_cvtpd_ps(pb));
      acc = _mm256_fnmadd_pd(pb, log_pd(_mm256_add_pd(pb, eps)), acc);
    }
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, acc);
  s = (t[0] + t[1]) + (t[2] + t[3]);
#endif
  for (; i < i1; ++i) {
    if (ap[i] == 0.0f) continue;
    const double pb = static_cast<double>(ap[i]) / N;
    ap[i] = static_cast<float>(pb);
    s += lfq::codebook_entropy_term(pb);
  }
  return s;
}

// G[i] = k * d(-pbar log(pbar + eps))/dpbar = -k (log(pbar + eps) + pbar / (pbar + eps)).
void grad_table(const float* avgp, float* G, int64_t i0, int64_t i1, double k) {
  int64_t i = i0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256d eps = _mm256_set1_pd(lfq::kLogEps), nk = _mm256_set1_pd(-k);
  for (; i + 4 <= i1; i += 4) {
    const __m256d pb = _mm256_cvtps_pd(_mm_loadu_ps(avgp + i));
    const __m256d x = _mm256_add_pd(pb, eps);
    const __m256d g = _mm256_mul_pd(nk, _mm256_add_pd(log_pd(x), _mm256_div_pd(pb, x)));
    _mm_storeu_ps(G + i, _mm256_cvtpd_ps(g));
  }
#endif
  for (; i < i1; ++i) G[i] = static_cast<float>(k * lfq::codebook_entropy_grad(static_cast<double>(avgp[i])));
}

// Per-chunk row data: p1 [nr, d] (double), and for sparse chunks the nonzero entries of each
// row's two factor tables as (column, value) lists in ascending column order.
struct ChunkRows {
  std::vector<double> p1;
  std::vector<int64_t> off_lo, off_hi;  // [nr + 1]: capacity offsets (2^free bits per row)
  std::vector<int32_t> cnt_lo, cnt_hi;  // [nr]: entries actually stored
  std::vector<int32_t> col_lo, col_hi;
  std::vector<float> val_lo, val_hi;
  std::vector<uint32_t> fmask, dom;     // [nr]: free bits, and bits with p1 > 0.5
};

// Entropy machinery for one call: z rows, temperature scale, the bit split (LfqEntropyPlan,
// lfq_args.h) and the z data.
struct EntropyPlan : LfqEntropyPlan {
  const float* z;

  EntropyPlan(const float* zp, const LfqEntropyPlan& p) : LfqEntropyPlan(p), z(zp) {}

  // Fills p1 for rows [r0, r0 + nr) and returns whether the chunk takes the sparse path: the
  // (lo, hi) pairs of nonzero table entries (at most 2^(free bits) per row) are far below the
  // dense work. For sparse chunks the capacity offsets are set too.
  bool probs(int64_t r0, int64_t nr, ChunkRows& R, double* hrow = nullptr) const {
    R.p1.resize(static_cast<size_t>(nr * L.d));
    R.off_lo.resize(static_cast<size_t>(nr + 1));
    R.off_hi.resize(static_cast<size_t>(nr + 1));
    R.fmask.resize(static_cast<size_t>(nr));
    R.dom.resize(static_cast<size_t>(nr));
    std::vector<int64_t> pairs(static_cast<size_t>(nr));
    parallel_for(nr, 64, [&](int64_t b, int64_t e) {
      // sigmoid and binary entropy (lfq_math.h) from one exp(-|a|) per (row, bit):
      //   p1 = 1 / (1 + ex) (a >= 0) or ex / (1 + ex),  H = log1p(ex) + |a| ex / (1 + ex).
      const int64_t cnt = (e - b) * L.d;
      std::vector<double> av(static_cast<size_t>(cnt)), ex(static_cast<size_t>(cnt)), ht(hrow ? static_cast<size_t>(cnt) : 0);
      for (int64_t n = b; n < e; ++n) {
        const float* zr = z + L.base(r0 + n);
        for (int64_t j = 0; j < L.d; ++j) av[(n - b) * L.d + j] = scale * static_cast<double>(zr[j * L.post]);
      }
      double* pr = R.p1.data() + b * L.d;
      int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
      const __m256d one = _mm256_set1_pd(1.0), zero = _mm256_setzero_pd();
      const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFLL));
      for (; i + 4 <= cnt; i += 4) {
        const __m256d a = _mm256_loadu_pd(av.data() + i);
        const __m256d m = _mm256_and_pd(a, absmask);
        const __m256d tail = _mm256_cmp_pd(m, _mm256_set1_pd(708.0), _CMP_GT_OQ);
        __m256d x = exp_neg_pd(_mm256_sub_pd(zero, _mm256_min_pd(m, _mm256_set1_pd(708.0))));
        if (!_mm256_testz_pd(tail, tail)) {
          // Results near or below the smallest normal: libm (exactly 0 beyond 746).
          alignas(32) double xs[4], ms[4];
          _mm256_store_pd(xs, x);
          _mm256_store_pd(ms, m);
          for (int u = 0; u < 4; ++u)
            if (ms[u] > 708.0) xs[u] = ms[u] > 746.0 ? 0.0 : std::exp(-ms[u]);
          x = _mm256_load_pd(xs);
        }
        const __m256d den = _mm256_add_pd(one, x);
        _mm256_storeu_pd(pr + i, _mm256_div_pd(_mm256_blendv_pd(x, one, _mm256_cmp_pd(a, zero, _CMP_GE_OQ)), den));
        if (hrow) {
          // log1p(x) = log(u) x / (u - 1), u = 1 + x (x when u rounds to 1).
          const __m256d um1 = _mm256_sub_pd(den, one);
          const __m256d l1p = _mm256_blendv_pd(_mm256_div_pd(_mm256_mul_pd(log_pd(den), x), um1), x, _mm256_cmp_pd(um1, zero, _CMP_EQ_OQ));
          _mm256_storeu_pd(ht.data() + i, _mm256_add_pd(l1p, _mm256_div_pd(_mm256_mul_pd(m, x), den)));
        }
      }
#endif
      for (; i < cnt; ++i) {
        const double a = av[i], m = std::fabs(a);
        const double x = m > 746.0 ? 0.0 : std::exp(-m);
        pr[i] = a >= 0 ? 1.0 / (1.0 + x) : x / (1.0 + x);
        if (hrow) ht[i] = x == 0.0 ? 0.0 : std::log1p(x) + m * x / (1.0 + x);
      }
      for (int64_t n = b; n < e; ++n) {
        const double* p = R.p1.data() + n * L.d;
        uint32_t fm = 0, dm = 0;
        for (int64_t j = 0; j < L.d; ++j) {
          fm |= static_cast<uint32_t>(free_bit(p[j])) << j;
          dm |= static_cast<uint32_t>(p[j] > 0.5) << j;
        }
        R.fmask[n] = fm;
        R.dom[n] = dm;
        const int kl = __builtin_popcount(fm & ((uint32_t(1) << lo) - 1)), kh = __builtin_popcount(fm >> lo);
        if (hrow) {
          double h = 0.0;
          for (int64_t j = 0; j < L.d; ++j) h += ht[(n - b) * L.d + j];
          hrow[n] = h;
        }
        R.off_lo[n + 1] = int64_t(1) << kl;
        R.off_hi[n + 1] = int64_t(1) << kh;
        pairs[n] = int64_t(1) << (kl + kh);
      }
    });
    int64_t total = 0;
    for (int64_t v : pairs) total += v;
    if (total * 64 > nr * La * Hb) return false;
    R.off_lo[0] = R.off_hi[0] = 0;
    for (int64_t n = 0; n < nr; ++n) {
      R.off_lo[n + 1] += R.off_lo[n];
      R.off_hi[n + 1] += R.off_hi[n];
    }
    // The entry lists (8 bytes an entry) must not outgrow the dense tables (4 bytes an entry).
    return (R.off_lo[nr] + R.off_hi[nr]) * 2 <= nr * (Lp + Hp);
  }

  // Sparse tables: the nonzero entries of each row's P_lo / P_hi, with the same values as the
  // dense tables (products over bits j ascending, in double, floored at kTableFloor).
  void sparse_tables(int64_t nr, ChunkRows& R) const {
    R.cnt_lo.resize(static_cast<size_t>(nr));
    R.cnt_hi.resize(static_cast<size_t>(nr));
    R.col_lo.resize(static_cast<size_t>(R.off_lo[nr]));
    R.val_lo.resize(static_cast<size_t>(R.off_lo[nr]));
    R.col_hi.resize(static_cast<size_t>(R.off_hi[nr]));
    R.val_hi.resize(static_cast<size_t>(R.off_hi[nr]));
    parallel_for(nr, 64, [&](int64_t b, int64_t e) {
#if !defined(__BMI2__)
      int fb[32];
#endif
      for (int64_t n = b; n < e; ++n) {
        for (int half = 0; half < 2; ++half) {
          const int nb = half ? hi : lo;
          const double* pb = R.p1.data() + n * L.d + (half ? lo : 0);
          int32_t* cols = (half ? R.col_hi.data() + R.off_hi[n] : R.col_lo.data() + R.off_lo[n]);
          float* vals = (half ? R.val_hi.data() + R.off_hi[n] : R.val_lo.data() + R.off_lo[n]);
          const int sh = half ? lo : 0;
          const uint32_t hmask = (uint32_t(1) << nb) - 1;
          const uint32_t fm = (R.fmask[n] >> sh) & hmask;
          const int32_t base = static_cast<int32_t>((R.dom[n] >> sh) & hmask & ~fm);
          double f[2][32];
          for (int j = 0; j < nb; ++j) {
            f[0][j] = 1.0 - pb[j];
            f[1][j] = pb[j];
          }
          const int k = __builtin_popcount(fm);
#if !defined(__BMI2__)
          for (int j = 0, i = 0; j < nb; ++j)
            if ((fm >> j) & 1) fb[i++] = j;
#endif
          int32_t cnt = 0;
          for (int64_t m = 0; m < (int64_t(1) << k); ++m) {
#if defined(__BMI2__)
            const int32_t c = base | static_cast<int32_t>(_pdep_u32(static_cast<uint32_t>(m), fm));
#else
            int32_t c = base;
            for (int i = 0; i < k; ++i)
              if ((m >> i) & 1) c |= int32_t(1) << fb[i];
#endif
            double t = 1.0;
            for (int j = 0; j < nb; ++j) t *= f[(c >> j) & 1][j];
            if (t < lfq::kTableFloor) continue;
            cols[cnt] = c;
            vals[cnt] = static_cast<float>(t);
            ++cnt;
          }
          (half ? R.cnt_hi : R.cnt_lo)[n] = cnt;
        }
      }
    });
  }

  // Dense zero-padded tables Plo [nr, Lp], Phi [nr, Hp] from p1.
  void dense_tables(int64_t nr, const double* p1, float* Plo, float* Phi) const {
    parallel_for(nr, 16, [&](int64_t b, int64_t e) {
      std::vector<double> t(static_cast<size_t>(std::max(La, Hb)));
      for (int64_t n = b; n < e; ++n) {
        const double* pr = p1 + n * L.d;
        for (int half = 0; half < 2; ++half) {
          const int nb = half ? hi : lo;
          const double* pb = pr + (half ? lo : 0);
          t[0] = 1.0;
          for (int j = 0; j < nb; ++j) {
            const int64_t w = int64_t(1) << j;
            for (int64_t c = 0; c < w; ++c) {
              t[c + w] = t[c] * pb[j];
              t[c] = t[c] * (1.0 - pb[j]);
            }
          }
          float* row = half ? Phi + n * Hp : Plo + n * Lp;
          const int64_t W = int64_t(1) << nb, P = half ? Hp : Lp;
          for (int64_t c = 0; c < W; ++c) row[c] = t[c] < lfq::kTableFloor ? 0.0f : static_cast<float>(t[c]);
          std::fill(row + W, row + P, 0.0f);
        }
      }
    });
  }

  // Accumulates pbar * N into acc [2^d] (index c_lo + 2^lo c_hi, zeroed by the caller); returns
  // the per-sample entropy sum. At T = 0.01 rows are nearly one-hot (|a| = 400 |z|), so chunks
  // are usually sparse and pbar gets the nonzero (lo, hi) pairs; dense chunks use sgemm
  // (acc [Hb, La] += P_hi^T P_lo).
  double pbar_sum(float* acc) const {
    const int64_t N = L.rows();
    const int64_t chunk = std::min<int64_t>(kRowChunk, N);
    ChunkRows R;
    std::vector<float> Plo, Phi;
    std::vector<double> hrow(static_cast<size_t>(chunk));
    double hsum = 0.0;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t nr = std::min(chunk, N - r0);
      if (probs(r0, nr, R, hrow.data())) {
        sparse_tables(nr, R);
        for (int64_t n = 0; n < nr; ++n) {
          const int32_t* cl = R.col_lo.data() + R.off_lo[n];
          const float* vl = R.val_lo.data() + R.off_lo[n];
          const int32_t* ch = R.col_hi.data() + R.off_hi[n];
          const float* vh = R.val_hi.data() + R.off_hi[n];
          const int32_t nl = R.cnt_lo[n], nh = R.cnt_hi[n];
          for (int32_t i = 0; i < nl; ++i)
            for (int32_t k = 0; k < nh; ++k) acc[cl[i] + La * ch[k]] += vl[i] * vh[k];
        }
      } else {
        Plo.resize(static_cast<size_t>(chunk * Lp));
        Phi.resize(static_cast<size_t>(chunk * Hp));
        dense_tables(nr, R.p1.data(), Plo.data(), Phi.data());
        sgemm(true, false, Hb, La, nr, 1.0f, Phi.data(), Hp, Plo.data(), Lp, 1.0f, acc, La);
      }
      for (int64_t n = 0; n < nr; ++n) hsum += hrow[n];
    }
    return hsum;
  }
};

Tensor scalar(double v) {
  Tensor t = empty({}, DType::F32);
  t.data<float>()[0] = static_cast<float>(v);
  return t;
}

constexpr int64_t kCodeBlock = 4096;  // fixed blocks of codes for deterministic partial sums

// lfq_entropy(z, {temperature = 0.01, dim = -1}) -> [per_sample [], codebook [], avg_probs [2^d]].
// avg_probs is the reference's pbar (index = code index, LSB = bit 0); pass it to the backward to
// skip recomputing it.
std::vector<Tensor> op_lfq_entropy(const OpArgs& a) {
  const LfqEntropyArgs ea = parse_lfq_entropy(a, "lfq_entropy");
  const EntropyPlan P(ea.z.data<float>(), ea.P);
  const LfqLayout& L = P.L;
  const double N = static_cast<double>(L.rows());
  const int64_t K = int64_t(1) << L.d;
  Tensor avg = empty({K}, DType::F32);
  float* ap = avg.data<float>();
  parallel_for(K, int64_t(1) << 14, [&](int64_t b, int64_t e) { std::memset(ap + b, 0, static_cast<size_t>(e - b) * sizeof(float)); });
  const double hsum = P.pbar_sum(ap);
  const int64_t nblk = (K + kCodeBlock - 1) / kCodeBlock;
  std::vector<double> part(static_cast<size_t>(nblk), 0.0);
  parallel_for(nblk, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const double s = codebook_block(ap, blk * kCodeBlock, std::min(K, (blk + 1) * kCodeBlock), N);
      part[blk] = s;
    }
  });
  double cb = 0.0;
  for (double v : part) cb += v;
  return {scalar(hsum / N), scalar(cb), avg};
}

// lfq_entropy_backward(z, g_per_sample [], g_codebook [], avg_probs? [2^d], {temperature, dim})
//   -> [g_z]
std::vector<Tensor> op_lfq_entropy_backward(const OpArgs& a) {
  const LfqEntropyArgs ea = parse_lfq_entropy(a, "lfq_entropy_backward");
  const LfqEntropyGrads eg = parse_lfq_entropy_grads(a, ea.P);
  const Tensor& z = ea.z;
  const double g_ps = eg.g_per_sample.data<float>()[0], g_cb = eg.g_codebook.data<float>()[0];
  const EntropyPlan P(z.data<float>(), ea.P);
  const LfqLayout& L = P.L;
  const int64_t N = L.rows();
  const double invN = 1.0 / static_cast<double>(N);
  const int64_t K = int64_t(1) << L.d;

  // pbar: the forward's avg_probs when given, else recomputed (acc / N).
  const float* avgp = eg.avg_probs.defined() ? eg.avg_probs.data<float>() : nullptr;
  std::vector<float> C;
  if (!avgp && g_cb != 0.0) {
    C.assign(static_cast<size_t>(K), 0.0f);
    P.pbar_sum(C.data());
    for (float& v : C) v = static_cast<float>(static_cast<double>(v) * invN);
    avgp = C.data();
  }
  // G(a, b) = g_cb * d codebook / d pbar / N (the 1/N of pbar folded in).
  auto gval = [&](int64_t code) { return g_cb * lfq::codebook_entropy_grad(static_cast<double>(avgp[code])) * invN; };
  // Dense chunks need G as a table [Hb, La] (the avg_probs layout; built on first use).
  std::vector<float> G;
  auto ensure_g = [&]() {
    if (!G.empty()) return;
    G.resize(static_cast<size_t>(K));
    parallel_for(K, 4096, [&](int64_t b, int64_t e) { grad_table(avgp, G.data(), b, e, g_cb * invN); });
  };

  Tensor gz = empty(z.shape(), DType::F32);
  float* gp = gz.data<float>();
  const int64_t chunk = std::min<int64_t>(kRowChunk, N);
  ChunkRows R;
  std::vector<float> Plo, Phi, dlo, dhi;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t nr = std::min(chunk, N - r0);
    const bool sp = P.probs(r0, nr, R);
    if (g_cb != 0.0 && sp) P.sparse_tables(nr, R);
    if (g_cb != 0.0 && !sp) {
      // dlo[n, a] = sum_b Phi[n, b] G[b, a];  dhi[n, b] = sum_a Plo[n, a] G[b, a].
      ensure_g();
      Plo.resize(static_cast<size_t>(chunk * P.Lp));
      Phi.resize(static_cast<size_t>(chunk * P.Hp));
      dlo.resize(static_cast<size_t>(chunk * P.Lp));
      dhi.resize(static_cast<size_t>(chunk * P.Hp));
      P.dense_tables(nr, R.p1.data(), Plo.data(), Phi.data());
      sgemm(false, false, nr, P.La, P.Hb, 1.0f, Phi.data(), P.Hp, G.data(), P.La, 0.0f, dlo.data(), P.Lp);
      sgemm(false, true, nr, P.Hb, P.La, 1.0f, Plo.data(), P.Lp, G.data(), P.La, 0.0f, dhi.data(), P.Hp);
    }
    parallel_for(nr, 16, [&](int64_t b, int64_t e) {
      double sbit[kLfqMaxEntropyBits];
      std::vector<double> wbuf(g_cb != 0.0 && !sp ? static_cast<size_t>(std::max(P.La, P.Hb)) : 0);
      for (int64_t n = b; n < e; ++n) {
        const double* pr = R.p1.data() + n * L.d;
        std::fill(sbit, sbit + L.d, 0.0);
        if (g_cb != 0.0 && sp) {
          // Sparse rows: w = P_lo[a] P_hi[b] G(a, b) over the nonzero pairs; both halves share
          // sum(w), and bit j of a (low) or b (high) selects the partial sums.
          const int32_t* cl = R.col_lo.data() + R.off_lo[n];
          const float* vl = R.val_lo.data() + R.off_lo[n];
          const int32_t* ch = R.col_hi.data() + R.off_hi[n];
          const float* vh = R.val_hi.data() + R.off_hi[n];
          double sall = 0.0;
          for (int32_t i = 0; i < R.cnt_lo[n]; ++i) {
            const int32_t la = cl[i];
            const double pa = vl[i];
            for (int32_t k = 0; k < R.cnt_hi[n]; ++k) {
              const int32_t hb = ch[k];
              const double w = pa * static_cast<double>(vh[k]) * gval(la + P.La * hb);
              sall += w;
              for (int j = 0; j < P.lo; ++j) sbit[j] += ((la >> j) & 1) ? w : 0.0;
              for (int j = 0; j < P.hi; ++j) sbit[P.lo + j] += ((hb >> j) & 1) ? w : 0.0;
            }
          }
          for (int64_t j = 0; j < L.d; ++j) sbit[j] -= pr[j] * sall;
        } else if (g_cb != 0.0) {
          // d P_half[n, c] / d a_j = P_half[n, c] (bit_j(c) - p1_j): reduce W = dP * P per bit.
          for (int half = 0; half < 2; ++half) {
            const int nb = half ? P.hi : P.lo;
            const float* T_ = half ? Phi.data() + n * P.Hp : Plo.data() + n * P.Lp;
            const float* D_ = half ? dhi.data() + n * P.Hp : dlo.data() + n * P.Lp;
            // sum_c w[c] [bit j of c] for every j by folding halves: the top bit's sum is the
            // upper half's; adding the upper half onto the lower one drops that bit.
            const int64_t W = int64_t(1) << nb;
            double* sb = sbit + (half ? P.lo : 0);
            for (int64_t c = 0; c < W; ++c) wbuf[c] = static_cast<double>(D_[c]) * static_cast<double>(T_[c]);
            for (int j = nb - 1; j >= 0; --j) {
              const int64_t h = int64_t(1) << j;
              double s = 0.0;
              for (int64_t c = 0; c < h; ++c) {
                s += wbuf[c + h];
                wbuf[c] += wbuf[c + h];
              }
              sb[j] = s;
            }
            const double sall = wbuf[0];
            for (int j = 0; j < nb; ++j) sb[j] -= pr[(half ? P.lo : 0) + j] * sall;
          }
        }
        const int64_t o = L.base(r0 + n);
        for (int64_t j = 0; j < L.d; ++j) {
          // lfq::binary_entropy_grad(a) = -a sigma(a) (1 - sigma(a)), with sigma(a) = p1.
          const double av = P.scale * static_cast<double>(P.z[o + j * L.post]);
          const double ga = sbit[j] - g_ps * invN * av * pr[j] * (1.0 - pr[j]);
          gp[o + j * L.post] = static_cast<float>(ga * P.scale);
        }
      }
    });
  }
  return {gz};
}

// lfq_commitment(z, {dim = 1}) -> [mean (z - code)^2] ; the code is treated as a constant.
std::vector<Tensor> op_lfq_commitment(const OpArgs& a) {
  const Tensor z = a.input(0, "z", DType::F32).contiguous();
  MVQ_CHECK_RANGE(z.numel() >= 1, "lfq_commitment: 'z' must not be empty");
  const float* zp = z.data<float>();
  double s = 0.0;
  for (int64_t i = 0; i < z.numel(); ++i) {
    const double d = static_cast<double>(zp[i]) - (zp[i] > 0.0f ? 1.0 : -1.0);
    s += d * d;
  }
  return {scalar(s / static_cast<double>(z.numel()))};
}

// lfq_commitment_backward(z, g []) -> [g * 2 (z - code) / numel].
std::vector<Tensor> op_lfq_commitment_backward(const OpArgs& a) {
  const Tensor z = a.input(0, "z", DType::F32).contiguous();
  const Tensor g = a.input(1, "g", DType::F32).contiguous();
  MVQ_CHECK_RANGE(g.numel() == 1, "lfq_commitment_backward: 'g' must be a scalar, got ", g.shape_str());
  const double k = 2.0 * static_cast<double>(g.data<float>()[0]) / static_cast<double>(std::max<int64_t>(z.numel(), 1));
  Tensor gz = empty(z.shape(), DType::F32);
  const float* zp = z.data<float>();
  float* gp = gz.data<float>();
  for (int64_t i = 0; i < z.numel(); ++i)
    gp[i] = static_cast<float>(k * (static_cast<double>(zp[i]) - (zp[i] > 0.0f ? 1.0 : -1.0)));
  return {gz};
}

}  // namespace

MVQ_REGISTER_OP("lfq_quantize", Device::CPU, op_lfq_quantize);
MVQ_OP_ATTRS("lfq_quantize", "dim");
MVQ_REGISTER_OP("lfq_indices_to_codes", Device::CPU, op_lfq_indices_to_codes);
MVQ_OP_ATTRS("lfq_indices_to_codes", "bits", "dim");
MVQ_REGISTER_OP("lfq_factorize", Device::CPU, op_lfq_factorize);
MVQ_OP_ATTRS("lfq_factorize", "bits");
MVQ_REGISTER_OP("lfq_unfactorize", Device::CPU, op_lfq_unfactorize);
MVQ_OP_ATTRS("lfq_unfactorize", "bits");
MVQ_REGISTER_OP("lfq_entropy", Device::CPU, op_lfq_entropy);
MVQ_OP_ATTRS("lfq_entropy", "dim", "temperature");
MVQ_REGISTER_OP("lfq_entropy_backward", Device::CPU, op_lfq_entropy_backward);
MVQ_OP_ATTRS("lfq_entropy_backward", "dim", "temperature");
MVQ_REGISTER_OP("lfq_commitment", Device::CPU, op_lfq_commitment);
MVQ_REGISTER_OP("lfq_commitment_backward", Device::CPU, op_lfq_commitment_backward);

}  // namespace mvq
