// Packed, cache-blocked SGEMM with AVX2/FMA and AVX-512 micro-kernels (see gemm.h).
#include "gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "../core/error.h"
#include "../core/parallel.h"

namespace mvq {
namespace {

constexpr int MR = 6;        // rows of a packed A panel (both kernels)
constexpr int64_t KC = 256;  // depth of a packed block: a 6 x KC A panel + a KC x 16 B panel sit in L1
constexpr int64_t MC = 144;  // rows of A per block: 144 x 256 x 4 B = 144 KiB in L2
constexpr int64_t NC = 3072; // columns of B per block: 256 x 3072 x 4 B = 3 MiB in L3

using KernelFn = void (*)(int64_t kc, const float* A, const float* B, float* C, int64_t ldc, float alpha, float beta,
                          int mr, int nr);

// Writes one finished tile from a dense scratch tile t (row stride ts) into C: alpha*t + beta*C.
inline void store_edge(const float* t, int ts, float* C, int64_t ldc, float alpha, float beta, int mr, int nr) {
  for (int i = 0; i < mr; ++i) {
    float* c = C + i * ldc;
    const float* s = t + i * ts;
    if (beta == 0.0f) {
      for (int j = 0; j < nr; ++j) c[j] = alpha * s[j];
    } else {
      for (int j = 0; j < nr; ++j) c[j] = alpha * s[j] + beta * c[j];
    }
  }
}

// ---- AVX2/FMA: 6 x 16 tile, 12 ymm accumulators + 2 B vectors + 1 broadcast. ----
inline void store_row8(float* c, __m256 v, __m256 va, __m256 vb, bool read_c) {
  v = _mm256_mul_ps(v, va);
  if (read_c) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), v);
  _mm256_storeu_ps(c, v);
}

// The k loop is inline assembly: with 15 of the 16 ymm registers live, compilers spill or fold
// loads into the FMAs and lose a quarter of the throughput.
#define MVQ_STEP(AO, BO)                                  \
  "vmovaps " #BO "(%[b]), %%ymm0\n\t"                     \
  "vmovaps " #BO "+32(%[b]), %%ymm1\n\t"                  \
  "vbroadcastss " #AO "(%[a]), %%ymm2\n\t"                \
  "vfmadd231ps %%ymm0, %%ymm2, %%ymm4\n\t"                \
  "vfmadd231ps %%ymm1, %%ymm2, %%ymm5\n\t"                \
  "vbroadcastss " #AO "+4(%[a]), %%ymm3\n\t"              \
  "vfmadd231ps %%ymm0, %%ymm3, %%ymm6\n\t"                \
  "vfmadd231ps %%ymm1, %%ymm3, %%ymm7\n\t"                \
  "vbroadcastss " #AO "+8(%[a]), %%ymm2\n\t"              \
  "vfmadd231ps %%ymm0, %%ymm2, %%ymm8\n\t"                \
  "vfmadd231ps %%ymm1, %%ymm2, %%ymm9\n\t"                \
  "vbroadcastss " #AO "+12(%[a]), %%ymm3\n\t"             \
  "vfmadd231ps %%ymm0, %%ymm3, %%ymm10\n\t"               \
  "vfmadd231ps %%ymm1, %%ymm3, %%ymm11\n\t"               \
  "vbroadcastss " #AO "+16(%[a]), %%ymm2\n\t"             \
  "vfmadd231ps %%ymm0, %%ymm2, %%ymm12\n\t"               \
  "vfmadd231ps %%ymm1, %%ymm2, %%ymm13\n\t"               \
  "vbroadcastss " #AO "+20(%[a]), %%ymm3\n\t"             \
  "vfmadd231ps %%ymm0, %%ymm3, %%ymm14\n\t"               \
  "vfmadd231ps %%ymm1, %%ymm3, %%ymm15\n\t"

void kernel_avx2_6x16(int64_t kc, const float* __restrict A, const float* __restrict B, float* C, int64_t ldc,
                      float alpha, float beta, int mr, int nr) {
  alignas(32) float t[6 * 16];
  // The C tile is read (beta != 0) or written after the k loop; start fetching it now so the
  // misses overlap the FMAs instead of stalling the end of the tile.
  for (int i = 0; i < mr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + nr - 1), _MM_HINT_T0);
  }
  int64_t k4 = kc / 4, k1 = kc % 4;
  float* tp = t;
  asm volatile(
      "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
      "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
      "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
      "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
      "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
      "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
      "vxorps %%ymm12, %%ymm12, %%ymm12\n\t"
      "vxorps %%ymm13, %%ymm13, %%ymm13\n\t"
      "vxorps %%ymm14, %%ymm14, %%ymm14\n\t"
      "vxorps %%ymm15, %%ymm15, %%ymm15\n\t"
      "test %[k4], %[k4]\n\t"
      "jz 2f\n\t"
      ".p2align 5\n\t"
      "1:\n\t"
      "prefetcht0 512(%[b])\n\t"
      MVQ_STEP(0, 0)
      MVQ_STEP(24, 64)
      MVQ_STEP(48, 128)
      MVQ_STEP(72, 192)
      "add $96, %[a]\n\t"
      "add $256, %[b]\n\t"
      "dec %[k4]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "test %[k1], %[k1]\n\t"
      "jz 4f\n\t"
      "3:\n\t"
      MVQ_STEP(0, 0)
      "add $24, %[a]\n\t"
      "add $64, %[b]\n\t"
      "dec %[k1]\n\t"
      "jnz 3b\n\t"
      "4:\n\t"
      "vmovaps %%ymm4, 0(%[t])\n\t"
      "vmovaps %%ymm5, 32(%[t])\n\t"
      "vmovaps %%ymm6, 64(%[t])\n\t"
      "vmovaps %%ymm7, 96(%[t])\n\t"
      "vmovaps %%ymm8, 128(%[t])\n\t"
      "vmovaps %%ymm9, 160(%[t])\n\t"
      "vmovaps %%ymm10, 192(%[t])\n\t"
      "vmovaps %%ymm11, 224(%[t])\n\t"
      "vmovaps %%ymm12, 256(%[t])\n\t"
      "vmovaps %%ymm13, 288(%[t])\n\t"
      "vmovaps %%ymm14, 320(%[t])\n\t"
      "vmovaps %%ymm15, 352(%[t])\n\t"
      : [a] "+r"(A), [b] "+r"(B), [k4] "+r"(k4), [k1] "+r"(k1)
      : [t] "r"(tp)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "memory", "cc");
  if (mr == 6 && nr == 16) {
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    const bool read_c = beta != 0.0f;
    for (int i = 0; i < 6; ++i) {
      store_row8(C + i * ldc, _mm256_load_ps(t + i * 16), va, vb, read_c);
      store_row8(C + i * ldc + 8, _mm256_load_ps(t + i * 16 + 8), va, vb, read_c);
    }
    return;
  }
  store_edge(t, 16, C, ldc, alpha, beta, mr, nr);
}
#undef MVQ_STEP

// ---- AVX-512: 6 x 32 tile, 12 zmm accumulators. Same A panels; B panels of 32 columns. ----
__attribute__((target("avx512f"))) void kernel_avx512_6x32(int64_t kc, const float* __restrict A,
                                                            const float* __restrict B, float* C, int64_t ldc,
                                                            float alpha, float beta, int mr, int nr) {
  __m512 acc[6][2];
  for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(B), b1 = _mm512_load_ps(B + 16);
    for (int i = 0; i < 6; ++i) {
      const __m512 a = _mm512_set1_ps(A[i]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
    A += 6;
    B += 32;
  }
  if (mr == 6 && nr == 32) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int i = 0; i < 6; ++i) {
      for (int h = 0; h < 2; ++h) {
        float* c = C + i * ldc + h * 16;
        __m512 v = _mm512_mul_ps(acc[i][h], va);
        if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c), v);
        _mm512_storeu_ps(c, v);
      }
    }
    return;
  }
  alignas(64) float t[6 * 32];
  for (int i = 0; i < 6; ++i) {
    _mm512_store_ps(t + i * 32, acc[i][0]);
    _mm512_store_ps(t + i * 32 + 16, acc[i][1]);
  }
  store_edge(t, 32, C, ldc, alpha, beta, mr, nr);
}

struct Kernel {
  KernelFn fn;
  int nr;
  const char* name;
};

Kernel pick_kernel() {
  const char* env = std::getenv("MERGEVQ_SIMD");
  const bool force_avx2 = env && (std::strcmp(env, "avx2") == 0);
  __builtin_cpu_init();
  if (!force_avx2 && __builtin_cpu_supports("avx512f")) return {kernel_avx512_6x32, 32, "avx512"};
  return {kernel_avx2_6x16, 16, "avx2"};
}

const Kernel& kernel() {
  static const Kernel k = pick_kernel();
  return k;
}

// Per-thread packing buffers (64-byte aligned, grown on demand, kept for the thread's lifetime).
struct Buffer {
  float* p = nullptr;
  size_t n = 0;
  ~Buffer() { std::free(p); }
  float* get(size_t need) {
    if (need > n) {
      std::free(p);
      size_t bytes = ((need * sizeof(float)) + 63) & ~size_t(63);
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) {
        n = 0;
        throw_runtime("ERR_ALLOC", "sgemm: out of memory for a ", bytes, "-byte packing buffer");
      }
      n = need;
    }
    return p;
  }
};
thread_local Buffer tls_a, tls_b;

inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                       __m256& r7) {
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(s0, s4, 0x20);
  r1 = _mm256_permute2f128_ps(s1, s5, 0x20);
  r2 = _mm256_permute2f128_ps(s2, s6, 0x20);
  r3 = _mm256_permute2f128_ps(s3, s7, 0x20);
  r4 = _mm256_permute2f128_ps(s0, s4, 0x31);
  r5 = _mm256_permute2f128_ps(s1, s5, 0x31);
  r6 = _mm256_permute2f128_ps(s2, s6, 0x31);
  r7 = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row panels (panel p at dst + p*MR*kc, element (k, r) at
// [k*MR + r]); rows past mc are zero. dst needs 2 floats of slack past the last panel.
void pack_a(bool ta, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t ip = 0; ip < mc; ip += MR) {
    const int m = static_cast<int>(std::min<int64_t>(MR, mc - ip));
    float* d = dst + ip * kc;
    if (!ta) {
      const float* rows[MR];
      for (int r = 0; r < MR; ++r) rows[r] = A + (i0 + ip + std::min(r, m - 1)) * lda + k0;
      if (m == MR) {
        int64_t k = 0;
        // 8 k at a time: load 6 rows (+2 zero rows), transpose, store 8 columns of 6 (each 8-wide
        // store spills 2 floats into the next column, which the next store overwrites).
        for (; k + 8 <= kc; k += 8) {
          __m256 r0 = _mm256_loadu_ps(rows[0] + k), r1 = _mm256_loadu_ps(rows[1] + k);
          __m256 r2 = _mm256_loadu_ps(rows[2] + k), r3 = _mm256_loadu_ps(rows[3] + k);
          __m256 r4 = _mm256_loadu_ps(rows[4] + k), r5 = _mm256_loadu_ps(rows[5] + k);
          __m256 r6 = _mm256_setzero_ps(), r7 = _mm256_setzero_ps();
          transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* o = d + k * MR;
          _mm256_storeu_ps(o + 0 * MR, r0);
          _mm256_storeu_ps(o + 1 * MR, r1);
          _mm256_storeu_ps(o + 2 * MR, r2);
          _mm256_storeu_ps(o + 3 * MR, r3);
          _mm256_storeu_ps(o + 4 * MR, r4);
          _mm256_storeu_ps(o + 5 * MR, r5);
          _mm256_storeu_ps(o + 6 * MR, r6);
          _mm256_storeu_ps(o + 7 * MR, r7);
        }
        for (; k < kc; ++k)
          for (int r = 0; r < MR; ++r) d[k * MR + r] = rows[r][k];
      } else {
        for (int64_t k = 0; k < kc; ++k)
          for (int r = 0; r < MR; ++r) d[k * MR + r] = r < m ? rows[r][k] : 0.0f;
      }
    } else {
      const float* s = A + k0 * lda + i0 + ip;
      if (m == MR) {
        for (int64_t k = 0; k < kc; ++k, s += lda)
          for (int r = 0; r < MR; ++r) d[k * MR + r] = s[r];
      } else {
        for (int64_t k = 0; k < kc; ++k, s += lda)
          for (int r = 0; r < MR; ++r) d[k * MR + r] = r < m ? s[r] : 0.0f;
      }
    }
  }
}

// The ordinary strided B operand.
class MatrixB final : public BPacker {
 public:
  MatrixB(bool tb, const float* B, int64_t ldb) : tb_(tb), B_(B), ldb_(ldb) {}
  void pack(int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    for (int64_t jp = 0; jp < nc; jp += nr) {
      const int n = static_cast<int>(std::min<int64_t>(nr, nc - jp));
      float* d = dst + jp * kc;
      if (!tb_) {
        const float* s = B_ + k0 * ldb_ + j0 + jp;
        if (n == nr) {
          for (int64_t k = 0; k < kc; ++k, s += ldb_)
            for (int q = 0; q < nr; q += 8) _mm256_store_ps(d + k * nr + q, _mm256_loadu_ps(s + q));
        } else {
          for (int64_t k = 0; k < kc; ++k, s += ldb_) {
            for (int c = 0; c < n; ++c) d[k * nr + c] = s[c];
            for (int c = n; c < nr; ++c) d[k * nr + c] = 0.0f;
          }
        }
      } else {
        // element (k, j) = B[j*ldb + k]: 8 x 8 transposes of 8 columns by 8 k.
        const float* s = B_ + (j0 + jp) * ldb_ + k0;
        int q = 0;
        for (; q + 8 <= n; q += 8) {
          const float* r = s + q * ldb_;
          int64_t k = 0;
          for (; k + 8 <= kc; k += 8) {
            if ((k & 15) == 0) {
              // 8 row streams at once defeat the hardware prefetcher: fetch 4 lines ahead.
              for (int i = 0; i < 8; ++i) _mm_prefetch(reinterpret_cast<const char*>(r + i * ldb_ + k + 64), _MM_HINT_T0);
            }
            __m256 r0 = _mm256_loadu_ps(r + 0 * ldb_ + k), r1 = _mm256_loadu_ps(r + 1 * ldb_ + k);
            __m256 r2 = _mm256_loadu_ps(r + 2 * ldb_ + k), r3 = _mm256_loadu_ps(r + 3 * ldb_ + k);
            __m256 r4 = _mm256_loadu_ps(r + 4 * ldb_ + k), r5 = _mm256_loadu_ps(r + 5 * ldb_ + k);
            __m256 r6 = _mm256_loadu_ps(r + 6 * ldb_ + k), r7 = _mm256_loadu_ps(r + 7 * ldb_ + k);
            transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
            float* o = d + k * nr + q;
            _mm256_store_ps(o + 0 * nr, r0);
            _mm256_store_ps(o + 1 * nr, r1);
            _mm256_store_ps(o + 2 * nr, r2);
            _mm256_store_ps(o + 3 * nr, r3);
            _mm256_store_ps(o + 4 * nr, r4);
            _mm256_store_ps(o + 5 * nr, r5);
            _mm256_store_ps(o + 6 * nr, r6);
            _mm256_store_ps(o + 7 * nr, r7);
          }
          for (; k < kc; ++k)
            for (int c = 0; c < 8; ++c) d[k * nr + q + c] = r[c * ldb_ + k];
        }
        for (int64_t k = 0; k < kc; ++k) {
          for (int c = q; c < n; ++c) d[k * nr + c] = s[c * ldb_ + k];
          for (int c = n; c < nr; ++c) d[k * nr + c] = 0.0f;
        }
      }
    }
  }

 private:
  bool tb_;
  const float* B_;
  int64_t ldb_;
};

void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      std::fill(c, c + N, 0.0f);
    } else {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  }
}

// One thread's share: C[m0:m1, n0:n1] over the whole K.
void gemm_block(const Kernel& kd, bool ta, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
                const float* A, int64_t lda, const BPacker& pb, float beta, float* C, int64_t ldc) {
  const int nr = kd.nr;
  const int64_t nc_max = std::min<int64_t>(NC, ((n1 - n0) + nr - 1) / nr * nr);
  // Equal K blocks (a multiple of 4, at most KC) so no block is a short, inefficient remainder.
  const int64_t kblocks = (K + KC - 1) / KC;
  const int64_t kstep = std::min<int64_t>(KC, ((K + kblocks - 1) / kblocks + 3) / 4 * 4);
  const int64_t kc_max = std::min<int64_t>(kstep, K);
  const int64_t mc_max = std::min<int64_t>(MC, ((m1 - m0) + MR - 1) / MR * MR);
  float* bp = tls_b.get(static_cast<size_t>(nc_max * kc_max));
  float* ap = tls_a.get(static_cast<size_t>(mc_max * kc_max + 8));
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += kstep) {
      const int64_t kc = std::min<int64_t>(kstep, K - pc);
      const float bet = pc == 0 ? beta : 1.0f;
      pb.pack(pc, kc, jc, nc, nr, bp);
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min<int64_t>(MC, m1 - ic);
        pack_a(ta, A, lda, ic, mc, pc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const int n = static_cast<int>(std::min<int64_t>(nr, nc - jr));
          const float* bpan = bp + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int m = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            kd.fn(kc, ap + ir * kc, bpan, C + (ic + ir) * ldc + jc + jr, ldc, alpha, bet, m, n);
          }
        }
      }
    }
  }
}

void gemm_driver(bool ta, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const BPacker& pb,
                 float beta, float* C, int64_t ldc, bool parallel) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    if (beta != 1.0f) scale_c(M, N, beta, C, ldc);
    return;
  }
  const Kernel& kd = kernel();
  int T = parallel ? num_threads() : 1;
  const double flops = 2.0 * static_cast<double>(M) * N * K;
  // Waking the pool and joining costs ~10-20 us: below ~4 MFLOP (about 40 us on one core) a
  // second thread does not pay for itself (measured: 64x96x256 0.049 ms on 1 thread, 0.066 on 2).
  if (flops < 4e6) T = 1;
  // Thread grid tm x tn: the smallest per-thread perimeter (packing traffic) with blocks no
  // smaller than one micro-tile.
  int tm = 1, tn = T;
  if (T > 1) {
    double best = 1e300;
    for (int a = 1; a <= T; ++a) {
      if (T % a) continue;
      const int b = T / a;
      if (a > 1 && M < static_cast<int64_t>(a) * MR) continue;
      if (b > 1 && N < static_cast<int64_t>(b) * kd.nr) continue;
      const double score = static_cast<double>(M) / a + pb.cost() * static_cast<double>(N) / b;
      if (score < best) {
        best = score;
        tm = a;
        tn = b;
      }
    }
    if (best == 1e300) tm = tn = 1;
  }
  if (tm * tn == 1) {
    gemm_block(kd, ta, 0, M, 0, N, K, alpha, A, lda, pb, beta, C, ldc);
    return;
  }
  const int64_t mstep = ((M + tm - 1) / tm + MR - 1) / MR * MR;
  const int64_t nstep = ((N + tn - 1) / tn + kd.nr - 1) / kd.nr * kd.nr;
  parallel_tasks(static_cast<int64_t>(tm) * tn, [&](int64_t t, int) {
    const int64_t bi = t / tn, bj = t % tn;
    const int64_t m0 = bi * mstep, m1 = std::min(M, m0 + mstep);
    const int64_t n0 = bj * nstep, n1 = std::min(N, n0 + nstep);
    if (m0 < m1 && n0 < n1) gemm_block(kd, ta, m0, m1, n0, n1, K, alpha, A, lda, pb, beta, C, ldc);
  });
}

}  // namespace

const char* sgemm_kernel_name() { return kernel().name; }

void sgemm_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const BPacker& b, float beta, float* C, int64_t ldc, bool parallel) {
  gemm_driver(trans_a, M, N, K, alpha, A, lda, b, beta, C, ldc, parallel);
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  MatrixB pb(trans_b, B, ldb);
  gemm_driver(trans_a, M, N, K, alpha, A, lda, pb, beta, C, ldc, true);
}

void sgemm_st(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  MatrixB pb(trans_b, B, ldb);
  gemm_driver(trans_a, M, N, K, alpha, A, lda, pb, beta, C, ldc, false);
}

void sgemm_batched(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                   float beta, float* C, int64_t ldc, int64_t stride_c) {
  if (batch <= 0) return;
  const double flops = 2.0 * static_cast<double>(M) * N * K;
  const int T = num_threads();
  if (batch >= T && T > 1 && flops < 64e6) {
    parallel_tasks(batch, [&](int64_t i, int) {
      sgemm_st(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta, C + i * stride_c,
               ldc);
    });
    return;
  }
  for (int64_t i = 0; i < batch; ++i)
    sgemm(trans_a, trans_b, M, N, K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta, C + i * stride_c, ldc);
}

}  // namespace mvq
