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
// pbar is their fp32 matrix product (sums of non-negative terms, so fp32 keeps ~1e-6 relative).
// Rows are processed in chunks of kRowChunk so scratch memory does not grow with N:
//   forward:  (2^lo + 2^hi) * 4 * kRowChunk (tables) + 2^d * 4 (pbar)          bytes
//   backward: forward + 2 * 2^d * 4 (G, G^T) + (2^lo + 2^hi) * 4 * kRowChunk (dP tables)
// (with 2^lo and 2^hi rounded up to multiples of 16).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "../core/op.h"
#include "../core/parallel.h"
#include "../kernels/lfq_math.h"

namespace mvq {
namespace {

constexpr int64_t kRowChunk = 1024;
constexpr int kMaxEntropyBits = 24;

struct Layout {
  int64_t pre = 1, d = 1, post = 1;
  int dim = 0;
  int64_t rows() const { return pre * post; }
  // Element offset of (row, bit j) in a contiguous tensor.
  int64_t at(int64_t row, int64_t j) const {
    const int64_t p = row / post, q = row % post;
    return (p * d + j) * post + q;
  }
};

Layout layout_of(const char* op, const Tensor& z, int64_t dim_attr) {
  const int r = z.dim();
  MVQ_CHECK_TYPE(r >= 1, op, ": 'z' must have at least one dimension, got ", z.shape_str());
  int64_t dim = dim_attr < 0 ? dim_attr + r : dim_attr;
  MVQ_CHECK_RANGE(dim >= 0 && dim < r, op, ": option 'dim' must be in [", -r, ", ", r - 1, "] for 'z' ", z.shape_str(), ", got ",
                  dim_attr);
  Layout L;
  L.dim = static_cast<int>(dim);
  for (int i = 0; i < r; ++i) {
    if (i < dim) L.pre *= z.size(i);
    else if (i > dim) L.post *= z.size(i);
  }
  L.d = z.size(static_cast<int>(dim));
  return L;
}

Shape without_dim(const Shape& s, int dim) {
  Shape o;
  for (int i = 0; i < static_cast<int>(s.size()); ++i)
    if (i != dim) o.push_back(s[i]);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Quantization and indices

std::vector<Tensor> op_lfq_quantize(const OpArgs& a) {
  const Tensor z = a.input(0, "z", DType::F32).contiguous();
  const Layout L = layout_of("lfq_quantize", z, a.attrs.i("dim", 1));
  MVQ_CHECK_RANGE(L.d <= 62, "lfq_quantize: the channel dimension of 'z' must be at most 62 bits, got ", L.d);
  Tensor codes = empty(z.shape(), DType::F32);
  Tensor idx = empty(without_dim(z.shape(), L.dim), DType::I64);
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
  const Tensor idx = a.input(0, "indices", DType::I64).contiguous();
  const int64_t bits = a.attrs.i("bits");
  MVQ_CHECK_RANGE(bits >= 1 && bits <= 62, "lfq_indices_to_codes: option 'bits' must be in [1, 62], got ", bits);
  const int orank = idx.dim() + 1;
  int64_t dim = a.attrs.i("dim", 1);
  const int64_t dim_in = dim;
  if (dim < 0) dim += orank;
  MVQ_CHECK_RANGE(dim >= 0 && dim < orank, "lfq_indices_to_codes: option 'dim' must be in [", -orank, ", ", orank - 1,
                  "] for indices ", idx.shape_str(), ", got ", dim_in);
  Shape os = idx.shape();
  os.insert(os.begin() + dim, bits);
  Tensor codes = empty(os, DType::F32);
  Layout L;
  L.dim = static_cast<int>(dim);
  L.d = bits;
  for (int i = 0; i < orank; ++i) {
    if (i < dim) L.pre *= os[i];
    else if (i > dim) L.post *= os[i];
  }
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

std::pair<int64_t, int64_t> factor_bits(const char* op, const Attrs& at) {
  const std::vector<int64_t> b = at.ints("bits");
  MVQ_CHECK_TYPE(b.size() == 2, op, ": option 'bits' must be [b0, b1], got ", b.size(), " entries");
  MVQ_CHECK_RANGE(b[0] >= 1 && b[1] >= 1 && b[0] + b[1] <= 62, op, ": option 'bits' must be positive with b0 + b1 <= 62, got [",
                  b[0], ", ", b[1], "]");
  return {b[0], b[1]};
}

// lfq_factorize(indices, {bits: [b0, b1]}) -> [pre = bits 0..b0-1, post = bits b0..b0+b1-1].
std::vector<Tensor> op_lfq_factorize(const OpArgs& a) {
  const Tensor idx = a.input(0, "indices", DType::I64).contiguous();
  const auto [b0, b1] = factor_bits("lfq_factorize", a.attrs);
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
  const Tensor pre = a.input(0, "pre", DType::I64).contiguous();
  const Tensor post = a.input(1, "post", DType::I64).contiguous();
  const auto [b0, b1] = factor_bits("lfq_unfactorize", a.attrs);
  MVQ_CHECK_RANGE(pre.shape() == post.shape(), "lfq_unfactorize: 'pre' ", pre.shape_str(), " and 'post' ", post.shape_str(),
                  " must have the same shape");
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
// Small fp32 GEMM for the factor tables: C[i, j] (+)= sum_k A[i*sai + k*sak] * B[k*ldb + j],
// M a multiple of 4, Ncol a multiple of 16 (callers pad their tables with zeros).

inline void kern4x16(const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t K,
                     bool acc) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 c[4][2];
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < 2; ++h) c[i][h] = acc ? _mm256_loadu_ps(C + i * ldc + 8 * h) : _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * ldb);
    const __m256 b1 = _mm256_loadu_ps(B + k * ldb + 8);
    const float* ak = A + k * sak;
    for (int i = 0; i < 4; ++i) {
      const __m256 av = _mm256_broadcast_ss(ak + i * sai);
      c[i][0] = _mm256_fmadd_ps(av, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(av, b1, c[i][1]);
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(C + i * ldc + 8 * h, c[i][h]);
#else
  float c[4][16];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 16; ++j) c[i][j] = acc ? C[i * ldc + j] : 0.0f;
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < 4; ++i) {
      const float av = A[i * sai + k * sak];
      for (int j = 0; j < 16; ++j) c[i][j] += av * B[k * ldb + j];
    }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 16; ++j) C[i * ldc + j] = c[i][j];
#endif
}

void gemm_tables(int64_t M, int64_t Ncol, int64_t K, const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool acc) {
  constexpr int64_t kc = 128;
  parallel_for(M / 4, 4, [&](int64_t ib, int64_t ie) {
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t kl = std::min(kc, K - k0);
      const bool first = (k0 == 0) && !acc;
      for (int64_t i = ib; i < ie; ++i)
        for (int64_t j = 0; j < Ncol; j += 16)
          kern4x16(A + 4 * i * sai + k0 * sak, sai, sak, B + k0 * ldb + j, ldb, C + 4 * i * ldc + j, ldc, kl, !first);
    }
  });
  if (K == 0 && !acc)
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + Ncol, 0.0f);
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Entropy machinery for one call: z rows, temperature, the bit split.
struct EntropyPlan {
  const float* z;
  Layout L;
  double scale;  // a = scale * z = 4 z / T
  int lo, hi;    // low / high bit counts
  int64_t La, Hb, Lp, Hp;  // 2^lo, 2^hi and their padded widths

  EntropyPlan(const float* zp, const Layout& l, double T) : z(zp), L(l), scale(4.0 / T) {
    lo = static_cast<int>(L.d / 2);
    hi = static_cast<int>(L.d - lo);
    La = int64_t(1) << lo;
    Hb = int64_t(1) << hi;
    Lp = round_up(La, 16);
    Hp = round_up(Hb, 16);
  }

  // Fills p1 [rows, d] (double) and the zero-padded tables Plo [Rp, Lp], Phi [Rp, Hp] for rows
  // [r0, r0 + nr) (Rp = nr rounded up to 4).
  void tables(int64_t r0, int64_t nr, double* p1, float* Plo, float* Phi) const {
    const int64_t Rp = round_up(nr, 4);
    parallel_for(Rp, 16, [&](int64_t b, int64_t e) {
      std::vector<double> t(static_cast<size_t>(std::max(La, Hb)));
      for (int64_t n = b; n < e; ++n) {
        float* lo_row = Plo + n * Lp;
        float* hi_row = Phi + n * Hp;
        if (n >= nr) {
          std::fill(lo_row, lo_row + Lp, 0.0f);
          std::fill(hi_row, hi_row + Hp, 0.0f);
          continue;
        }
        double* pr = p1 + n * L.d;
        for (int64_t j = 0; j < L.d; ++j) pr[j] = lfq::sigmoid(scale * static_cast<double>(z[L.at(r0 + n, j)]));
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
          float* row = half ? hi_row : lo_row;
          const int64_t W = int64_t(1) << nb, P = half ? Hp : Lp;
          for (int64_t c = 0; c < W; ++c) row[c] = t[c] < lfq::kTableFloor ? 0.0f : static_cast<float>(t[c]);
          std::fill(row + W, row + P, 0.0f);
        }
      }
    });
  }

  // Nonzero entries of each table row: nzlo[n] / nzhi[n] list the columns. Returns the number of
  // (lo, hi) pairs over the chunk; the sparse path is used when that is far below the dense work.
  int64_t nonzeros(int64_t nr, const float* Plo, const float* Phi, std::vector<std::vector<int32_t>>& nzlo,
                   std::vector<std::vector<int32_t>>& nzhi) const {
    nzlo.resize(static_cast<size_t>(nr));
    nzhi.resize(static_cast<size_t>(nr));
    std::vector<int64_t> pairs(static_cast<size_t>(nr));
    parallel_for(nr, 64, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        nzlo[n].clear();
        nzhi[n].clear();
        for (int64_t c = 0; c < La; ++c)
          if (Plo[n * Lp + c] != 0.0f) nzlo[n].push_back(static_cast<int32_t>(c));
        for (int64_t c = 0; c < Hb; ++c)
          if (Phi[n * Hp + c] != 0.0f) nzhi[n].push_back(static_cast<int32_t>(c));
        pairs[n] = static_cast<int64_t>(nzlo[n].size()) * static_cast<int64_t>(nzhi[n].size());
      }
    });
    int64_t total = 0;
    for (int64_t v : pairs) total += v;
    return total;
  }
  bool sparse(int64_t pairs, int64_t nr) const { return pairs * 64 <= nr * La * Hb; }

  // pbar (unnormalized: sum over rows) as C [Lp, Hp]; also returns the per-sample entropy sum.
  // At T = 0.01 rows are nearly one-hot (|a| = 400 |z|), so the tables are usually sparse and pbar
  // is accumulated from the nonzero (lo, hi) pairs; dense chunks use the fp32 GEMM.
  double pbar_sum(std::vector<float>& C) const {
    const int64_t N = L.rows();
    C.assign(static_cast<size_t>(Lp * Hp), 0.0f);
    const int64_t chunk = std::min<int64_t>(kRowChunk, std::max<int64_t>(N, 1));
    const int64_t Rmax = round_up(chunk, 4);
    std::vector<double> p1(static_cast<size_t>(Rmax * L.d));
    std::vector<float> Plo(static_cast<size_t>(Rmax * Lp)), Phi(static_cast<size_t>(Rmax * Hp));
    std::vector<double> hrow(static_cast<size_t>(Rmax));
    std::vector<std::vector<int32_t>> nzlo, nzhi;
    double hsum = 0.0;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t nr = std::min(chunk, N - r0), Rp = round_up(nr, 4);
      tables(r0, nr, p1.data(), Plo.data(), Phi.data());
      if (sparse(nonzeros(nr, Plo.data(), Phi.data(), nzlo, nzhi), nr)) {
        for (int64_t n = 0; n < nr; ++n)
          for (int32_t a : nzlo[n]) {
            const float pa = Plo[n * Lp + a];
            float* crow = C.data() + a * Hp;
            for (int32_t b : nzhi[n]) crow[b] += pa * Phi[n * Hp + b];
          }
      } else {
        gemm_tables(Lp, Hp, Rp, Plo.data(), 1, Lp, Phi.data(), Hp, C.data(), Hp, true);
      }
      parallel_for(nr, 64, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) {
          double h = 0.0;
          for (int64_t j = 0; j < L.d; ++j) h += lfq::binary_entropy(scale * static_cast<double>(z[L.at(r0 + n, j)]));
          hrow[n] = h;
        }
      });
      for (int64_t n = 0; n < nr; ++n) hsum += hrow[n];
    }
    return hsum;
  }
};

void check_entropy_input(const char* op, const Layout& L, double T) {
  MVQ_CHECK_RANGE(L.d >= 1 && L.d <= kMaxEntropyBits, op, ": the bit dimension of 'z' must be in [1, ", kMaxEntropyBits, "], got ", L.d);
  MVQ_CHECK_RANGE(L.rows() >= 1, op, ": 'z' must have at least one row");
  MVQ_CHECK_RANGE(T > 0 && std::isfinite(T), op, ": option 'temperature' must be positive, got ", T);
}

Tensor scalar(double v) {
  Tensor t = empty({}, DType::F32);
  t.data<float>()[0] = static_cast<float>(v);
  return t;
}

// lfq_entropy(z, {temperature = 0.01, dim = -1}) -> [per_sample [], codebook [], avg_probs [2^d]].
// avg_probs is the reference's pbar (index = code index, LSB = bit 0); pass it to the backward to
// skip recomputing it.
std::vector<Tensor> op_lfq_entropy(const OpArgs& a) {
  const Tensor z = a.input(0, "z", DType::F32).contiguous();
  const Layout L = layout_of("lfq_entropy", z, a.attrs.i("dim", -1));
  const double T = a.attrs.f("temperature", 0.01);
  check_entropy_input("lfq_entropy", L, T);
  const EntropyPlan P(z.data<float>(), L, T);
  std::vector<float> C;
  const double N = static_cast<double>(L.rows());
  const double hsum = P.pbar_sum(C);
  Tensor avg = empty({int64_t(1) << L.d}, DType::F32);
  float* ap = avg.data<float>();
  std::vector<double> part(static_cast<size_t>(P.Hb), 0.0);
  parallel_for(P.Hb, 8, [&](int64_t b, int64_t e) {
    for (int64_t hb = b; hb < e; ++hb) {
      double s = 0.0;
      for (int64_t la = 0; la < P.La; ++la) {
        const double pb = static_cast<double>(C[la * P.Hp + hb]) / N;
        ap[la + hb * P.La] = static_cast<float>(pb);
        if (pb != 0.0) s += lfq::codebook_entropy_term(pb);
      }
      part[hb] = s;
    }
  });
  double cb = 0.0;
  for (double v : part) cb += v;
  return {scalar(hsum / N), scalar(cb), avg};
}

// lfq_entropy_backward(z, g_per_sample [], g_codebook [], avg_probs? [2^d], {temperature, dim})
//   -> [g_z]
std::vector<Tensor> op_lfq_entropy_backward(const OpArgs& a) {
  const Tensor z = a.input(0, "z", DType::F32).contiguous();
  const Layout L = layout_of("lfq_entropy_backward", z, a.attrs.i("dim", -1));
  const double T = a.attrs.f("temperature", 0.01);
  check_entropy_input("lfq_entropy_backward", L, T);
  const Tensor gps = a.input(1, "g_per_sample", DType::F32).contiguous();
  const Tensor gcb = a.input(2, "g_codebook", DType::F32).contiguous();
  MVQ_CHECK_RANGE(gps.numel() == 1 && gcb.numel() == 1, "lfq_entropy_backward: 'g_per_sample' and 'g_codebook' must be scalars, got ",
                  gps.shape_str(), " and ", gcb.shape_str());
  const double g_ps = gps.data<float>()[0], g_cb = gcb.data<float>()[0];
  const EntropyPlan P(z.data<float>(), L, T);
  const int64_t N = L.rows();
  const double invN = 1.0 / static_cast<double>(N);

  // pbar: the forward's avg_probs when given, else recomputed (C / N).
  Tensor avg;
  const float* avgp = nullptr;
  if (a.has_input(3)) {
    avg = a.input(3, "avg_probs", DType::F32).contiguous();
    MVQ_CHECK_RANGE(avg.numel() == (int64_t(1) << L.d), "lfq_entropy_backward: 'avg_probs' must have 2^", L.d, " elements, got ",
                    avg.shape_str());
    avgp = avg.data<float>();
  }
  std::vector<float> C;
  if (!avgp && g_cb != 0.0) P.pbar_sum(C);
  // G(a, b) = g_cb * d codebook / d pbar / N (the 1/N of pbar folded in).
  auto gval = [&](int64_t la, int64_t hb) {
    const double pb = avgp ? static_cast<double>(avgp[la + hb * P.La]) : static_cast<double>(C[la * P.Hp + hb]) * invN;
    return g_cb * lfq::codebook_entropy_grad(pb) * invN;
  };
  // Dense chunks need G and G^T as tables (built on first use).
  std::vector<float> G, GT;
  auto ensure_g = [&]() {
    if (!G.empty()) return;
    G.assign(static_cast<size_t>(P.Lp * P.Hp), 0.0f);
    GT.assign(static_cast<size_t>(P.Hp * P.Lp), 0.0f);
    parallel_for(P.La, 8, [&](int64_t b, int64_t e) {
      for (int64_t la = b; la < e; ++la)
        for (int64_t hb = 0; hb < P.Hb; ++hb) {
          const float g = static_cast<float>(gval(la, hb));
          G[la * P.Hp + hb] = g;
          GT[hb * P.Lp + la] = g;
        }
    });
  };

  Tensor gz = empty(z.shape(), DType::F32);
  float* gp = gz.data<float>();
  const int64_t chunk = std::min<int64_t>(kRowChunk, N);
  const int64_t Rmax = round_up(chunk, 4);
  std::vector<double> p1(static_cast<size_t>(Rmax * L.d));
  std::vector<float> Plo(static_cast<size_t>(Rmax * P.Lp)), Phi(static_cast<size_t>(Rmax * P.Hp));
  std::vector<float> dlo, dhi;
  std::vector<std::vector<int32_t>> nzlo, nzhi;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t nr = std::min(chunk, N - r0), Rp = round_up(nr, 4);
    P.tables(r0, nr, p1.data(), Plo.data(), Phi.data());
    const bool sp = g_cb != 0.0 && P.sparse(P.nonzeros(nr, Plo.data(), Phi.data(), nzlo, nzhi), nr);
    if (g_cb != 0.0 && !sp) {
      // dlo[n, a] = sum_b Phi[n, b] G[a, b];  dhi[n, b] = sum_a Plo[n, a] G[a, b].
      ensure_g();
      dlo.resize(static_cast<size_t>(Rmax * P.Lp));
      dhi.resize(static_cast<size_t>(Rmax * P.Hp));
      gemm_tables(Rp, P.Lp, P.Hp, Phi.data(), P.Hp, 1, GT.data(), P.Lp, dlo.data(), P.Lp, false);
      gemm_tables(Rp, P.Hp, P.Lp, Plo.data(), P.Lp, 1, G.data(), P.Hp, dhi.data(), P.Hp, false);
    }
    parallel_for(nr, 16, [&](int64_t b, int64_t e) {
      std::vector<double> sbit(static_cast<size_t>(L.d));
      for (int64_t n = b; n < e; ++n) {
        const double* pr = p1.data() + n * L.d;
        std::fill(sbit.begin(), sbit.end(), 0.0);
        if (sp) {
          // Sparse rows: w = P_lo[a] P_hi[b] G(a, b) over the nonzero pairs; both halves share
          // sum(w), and bit j of a (low) or b (high) selects the partial sums.
          double sall = 0.0;
          for (int32_t la : nzlo[n]) {
            const double pa = Plo[n * P.Lp + la];
            for (int32_t hb : nzhi[n]) {
              const double w = pa * static_cast<double>(Phi[n * P.Hp + hb]) * gval(la, hb);
              sall += w;
              for (int j = 0; j < P.lo; ++j)
                if ((la >> j) & 1) sbit[j] += w;
              for (int j = 0; j < P.hi; ++j)
                if ((hb >> j) & 1) sbit[P.lo + j] += w;
            }
          }
          for (int64_t j = 0; j < L.d; ++j) sbit[j] -= pr[j] * sall;
        } else if (g_cb != 0.0) {
          // d P_half[n, c] / d a_j = P_half[n, c] (bit_j(c) - p1_j): reduce W = dP * P per bit.
          for (int half = 0; half < 2; ++half) {
            const int nb = half ? P.hi : P.lo;
            const float* T_ = half ? Phi.data() + n * P.Hp : Plo.data() + n * P.Lp;
            const float* D_ = half ? dhi.data() + n * P.Hp : dlo.data() + n * P.Lp;
            const int64_t W = int64_t(1) << nb;
            double sall = 0.0;
            double* sb = sbit.data() + (half ? P.lo : 0);
            for (int64_t c = 0; c < W; ++c) {
              const double w = static_cast<double>(D_[c]) * static_cast<double>(T_[c]);
              if (w == 0.0) continue;
              sall += w;
              for (int j = 0; j < nb; ++j)
                if ((c >> j) & 1) sb[j] += w;
            }
            for (int j = 0; j < nb; ++j) sb[j] -= pr[(half ? P.lo : 0) + j] * sall;
          }
        }
        for (int64_t j = 0; j < L.d; ++j) {
          const double av = P.scale * static_cast<double>(P.z[L.at(r0 + n, j)]);
          const double ga = sbit[j] + g_ps * invN * lfq::binary_entropy_grad(av);
          gp[L.at(r0 + n, j)] = static_cast<float>(ga * P.scale);
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
MVQ_REGISTER_OP("lfq_indices_to_codes", Device::CPU, op_lfq_indices_to_codes);
MVQ_REGISTER_OP("lfq_factorize", Device::CPU, op_lfq_factorize);
MVQ_REGISTER_OP("lfq_unfactorize", Device::CPU, op_lfq_unfactorize);
MVQ_REGISTER_OP("lfq_entropy", Device::CPU, op_lfq_entropy);
MVQ_REGISTER_OP("lfq_entropy_backward", Device::CPU, op_lfq_entropy_backward);
MVQ_REGISTER_OP("lfq_commitment", Device::CPU, op_lfq_commitment);
MVQ_REGISTER_OP("lfq_commitment_backward", Device::CPU, op_lfq_commitment_backward);

}  // namespace mvq
