// Single-precision GEMM for the CPU kernels (linear, conv2d, attention, merge).
//
// Row-major throughout: C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C, where op(A) is A
// (stored M x K, leading dimension lda) or, with trans_a, A^T (A stored K x M). Same for B.
// beta == 0 never reads C (it may hold NaN). Multi-threaded through parallel_tasks; a call made
// from inside a parallel task runs on the calling thread.
//
// Implementation (gemm.cc): A packed into 6-row panels, B into 16-column (AVX2/FMA) or 32-column
// (AVX-512) panels, cache-blocked with KC x NC blocks of B and MC x KC blocks of A, a register-tiled
// micro-kernel chosen at run time (`__builtin_cpu_supports("avx512f")`, overridable with the
// environment variable MERGEVQ_SIMD=avx2). Threads split C into a grid of blocks over M and N.
#pragma once
#include <cstdint>

namespace mvq {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// `batch` independent GEMMs; operand i starts at A + i*stride_a (B, C likewise). A stride of 0
// shares an operand across the batch (C must not be shared unless batch == 1). Small GEMMs are
// spread over threads one per task; large ones run one after another, each multi-threaded.
void sgemm_batched(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                   float beta, float* C, int64_t ldc, int64_t stride_c);

// The same GEMM on the calling thread only (for callers that parallelize outside).
void sgemm_st(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// A B operand that is produced on the fly (implicit im2col for convolutions). pack() writes the
// block op(B)[k0:k0+kc, j0:j0+nc] as consecutive panels of `nr` columns: panel p holds, for each
// k in [0, kc), the nr values of columns j0 + p*nr + [0, nr) (zero beyond j0 + nc), i.e. panel p
// starts at dst + p*nr*kc and element (k, c) of it is at [k*nr + c]. nr is a multiple of 8.
// pack() is called concurrently from several threads and must not write shared state.
class BPacker {
 public:
  virtual ~BPacker() = default;
  virtual void pack(int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const = 0;
  // Cost of packing one element relative to copying it from a plain matrix (guides the thread
  // split: an expensive B is not packed redundantly by threads that split M).
  virtual double cost() const { return 1.0; }
};

// C = alpha * op(A) * B + beta * C with B given by a packer. parallel=false keeps it on the caller.
void sgemm_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const BPacker& b, float beta, float* C, int64_t ldc, bool parallel = true);

// The micro-kernel in use: "avx512" or "avx2".
const char* sgemm_kernel_name();

}  // namespace mvq
