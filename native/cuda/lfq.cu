// CUDA LFQ ops: lfq_quantize, lfq_entropy, lfq_entropy_backward (semantics: native/cpu/lfq.cc).
// Argument checks, the layout of z and the bit split (LfqEntropyPlan): kernels/lfq_args.h, shared
// with the CPU.
//
// Entropy through the bit factorization: per-row kernels build the half-bit probability tables
// P_lo [N, Lp] and P_hi [N, Hp] (fp32, zero-padded, entries below 1e-18 dropped), a tiled fp32
// GEMM forms pbar = P_lo^T P_hi / N, and reductions run in double with a fixed order (per-block
// partial sums, then one block), so results are deterministic.
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "../core/op.h"
#include "../kernels/hd.h"
#include "../kernels/lfq_args.h"
#include "../kernels/lfq_math.h"
#include "common.cuh"

namespace mvq {
namespace {

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void quantize_rows(const float* z, float* codes, int64_t* idx, LfqLayout L) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= L.rows()) return;
  int64_t v = 0;
  for (int64_t j = 0; j < L.d; ++j) {
    const int64_t o = L.at(n, j);
    const bool pos = z[o] > 0.0f;
    codes[o] = pos ? 1.0f : -1.0f;
    v |= static_cast<int64_t>(pos) << j;
  }
  idx[n] = v;
}

std::vector<Tensor> op_lfq_quantize(const OpArgs& a) {
  const LfqQuantizeArgs q = parse_lfq_quantize(a);
  const Tensor& z = q.z;
  const LfqLayout& L = q.L;
  Tensor codes = empty(z.shape(), DType::F32, Device::CUDA);
  Tensor idx = empty(q.index_shape, DType::I64, Device::CUDA);
  if (L.rows() > 0) {
    quantize_rows<<<blocks_for(L.rows()), kThreads>>>(z.data<float>(), codes.data<float>(), idx.data<int64_t>(), L);
    cuda::check_launch("lfq_quantize");
  }
  return {codes, idx};
}

// ---------------------------------------------------------------------------------------------

// One thread per (row, table entry): P_half[n, c] = prod over the half's bits. Also p1 and the
// per-row entropy (entry 0 of the low table computes them).
__global__ void build_tables(const float* z, LfqEntropyPlan P, float* Plo, float* Phi, double* hrow) {
  const int64_t W = P.Lp + P.Hp;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P.L.rows() * W) return;
  const int64_t n = t / W, c0 = t % W;
  const bool high = c0 >= P.Lp;
  const int64_t c = high ? c0 - P.Lp : c0;
  const int nb = high ? P.hi : P.lo;
  const int j0 = high ? P.lo : 0;
  float* dst = high ? Phi + n * P.Hp + c : Plo + n * P.Lp + c;
  if (c >= (int64_t(1) << nb)) {
    *dst = 0.0f;
    return;
  }
  double p = 1.0;
  for (int j = 0; j < nb; ++j) {
    const double p1 = lfq::sigmoid(P.scale * static_cast<double>(z[P.L.at(n, j0 + j)]));
    p *= ((c >> j) & 1) ? p1 : 1.0 - p1;
  }
  *dst = p < lfq::kTableFloor ? 0.0f : static_cast<float>(p);
  if (!high && c == 0) {
    double h = 0.0;
    for (int64_t j = 0; j < P.L.d; ++j) h += lfq::binary_entropy(P.scale * static_cast<double>(z[P.L.at(n, j)]));
    hrow[n] = h;
  }
}

// C[i, j] = sum_k A[i*sai + k*sak] * B[k*ldb + j], 16x16 shared-memory tiles.
__global__ void gemm16(int64_t M, int64_t Nc, int64_t K, const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb, float* C,
                       int64_t ldc) {
  __shared__ float As[16][17];
  __shared__ float Bs[16][17];
  const int64_t i = blockIdx.y * 16 + threadIdx.y, j = blockIdx.x * 16 + threadIdx.x;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    As[threadIdx.y][threadIdx.x] = (i < M && ka < K) ? A[i * sai + ka * sak] : 0.0f;
    Bs[threadIdx.y][threadIdx.x] = (kb < K && j < Nc) ? B[kb * ldb + j] : 0.0f;
    __syncthreads();
    for (int k = 0; k < 16; ++k) acc = fmaf(As[threadIdx.y][k], Bs[k][threadIdx.x], acc);
    __syncthreads();
  }
  if (i < M && j < Nc) C[i * ldc + j] = acc;
}

void gemm(int64_t M, int64_t Nc, int64_t K, const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb, float* C, int64_t ldc) {
  dim3 grid(static_cast<unsigned>((Nc + 15) / 16), static_cast<unsigned>((M + 15) / 16));
  gemm16<<<grid, dim3(16, 16)>>>(M, Nc, K, A, sai, sak, B, ldb, C, ldc);
  cuda::check_launch("lfq_entropy: gemm16");
}

// Deterministic double sum: per-block partials (fixed tree), then a single block.
__global__ void sum_partials(const double* v, int64_t n, double* part) {
  __shared__ double sh[kThreads];
  double s = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads) s += v[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

// pbar (C / N) -> avg_probs (code order) and the codebook terms.
__global__ void pbar_terms(const float* C, LfqEntropyPlan P, double invN, float* avg, double* terms) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P.La * P.Hb) return;
  const int64_t la = t % P.La, hb = t / P.La;
  const double pb = static_cast<double>(C[la * P.Hp + hb]) * invN;
  avg[t] = static_cast<float>(pb);
  terms[t] = lfq::codebook_entropy_term(pb);
}

__global__ void finish_scalars(const double* hpart, int hn, const double* cpart, int cn, double invN, float* ps, float* cb) {
  double h = 0.0, c = 0.0;
  for (int i = 0; i < hn; ++i) h += hpart[i];
  for (int i = 0; i < cn; ++i) c += cpart[i];
  *ps = static_cast<float>(h * invN);
  *cb = static_cast<float>(c);
}

constexpr int kPartBlocks = 64;

struct Forward {
  Tensor Plo, Phi, hrow, C;
};

// Builds the tables and pbar (unnormalized, C [Lp, Hp]).
Forward forward_tables(const Tensor& z, const LfqEntropyPlan& P) {
  const int64_t N = P.L.rows();
  Forward f;
  f.Plo = empty({N, P.Lp}, DType::F32, Device::CUDA);
  f.Phi = empty({N, P.Hp}, DType::F32, Device::CUDA);
  f.hrow = empty({N}, DType::I64, Device::CUDA);  // 8-byte slots holding doubles (no f64 dtype)
  f.C = empty({P.Lp, P.Hp}, DType::F32, Device::CUDA);
  build_tables<<<blocks_for(N * (P.Lp + P.Hp)), kThreads>>>(z.data<float>(), P, f.Plo.data<float>(), f.Phi.data<float>(),
                                                           reinterpret_cast<double*>(f.hrow.raw()));
  cuda::check_launch("lfq_entropy: build_tables");
  gemm(P.Lp, P.Hp, N, f.Plo.data<float>(), 1, P.Lp, f.Phi.data<float>(), P.Hp, f.C.data<float>(), P.Hp);
  return f;
}

std::vector<Tensor> op_lfq_entropy(const OpArgs& a) {
  const LfqEntropyArgs ea = parse_lfq_entropy(a, "lfq_entropy");
  const Tensor& z = ea.z;
  const LfqEntropyPlan& P = ea.P;
  const int64_t N = P.L.rows(), K = P.La * P.Hb;
  const Forward f = forward_tables(z, P);
  Tensor avg = empty({K}, DType::F32, Device::CUDA);
  Tensor terms = empty({K}, DType::I64, Device::CUDA);  // doubles
  Tensor hpart = empty({kPartBlocks}, DType::I64, Device::CUDA), cpart = empty({kPartBlocks}, DType::I64, Device::CUDA);
  pbar_terms<<<blocks_for(K), kThreads>>>(f.C.data<float>(), P, 1.0 / static_cast<double>(N), avg.data<float>(),
                                          reinterpret_cast<double*>(terms.raw()));
  cuda::check_launch("lfq_entropy: pbar_terms");
  sum_partials<<<kPartBlocks, kThreads>>>(reinterpret_cast<const double*>(f.hrow.raw()), N, reinterpret_cast<double*>(hpart.raw()));
  sum_partials<<<kPartBlocks, kThreads>>>(reinterpret_cast<const double*>(terms.raw()), K, reinterpret_cast<double*>(cpart.raw()));
  cuda::check_launch("lfq_entropy: sum_partials");
  Tensor ps = empty({}, DType::F32, Device::CUDA), cb = empty({}, DType::F32, Device::CUDA);
  finish_scalars<<<1, 1>>>(reinterpret_cast<const double*>(hpart.raw()), kPartBlocks, reinterpret_cast<const double*>(cpart.raw()),
                           kPartBlocks, 1.0 / static_cast<double>(N), ps.data<float>(), cb.data<float>());
  cuda::check_launch("lfq_entropy: finish_scalars");
  return {ps, cb, avg};
}

// G[a, b] and G^T from pbar (given as avg_probs in code order, or as C / N).
__global__ void make_g(const float* avg, const float* C, LfqEntropyPlan P, double invN, const float* gcb, float* G, float* GT) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P.Lp * P.Hp) return;
  const int64_t la = t / P.Hp, hb = t % P.Hp;
  float g = 0.0f;
  if (la < P.La && hb < P.Hb) {
    const double pb = avg ? static_cast<double>(avg[la + hb * P.La]) : static_cast<double>(C[la * P.Hp + hb]) * invN;
    g = static_cast<float>(static_cast<double>(*gcb) * lfq::codebook_entropy_grad(pb) * invN);
  }
  G[la * P.Hp + hb] = g;
  GT[hb * P.Lp + la] = g;
}

// One thread per (row, bit): reduce W = dP * P over the half's entries.
__global__ void grad_bits(const float* z, LfqEntropyPlan P, const float* Plo, const float* Phi, const float* dlo, const float* dhi,
                          const float* gps, double invN, float* gz) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P.L.rows() * P.L.d) return;
  const int64_t n = t / P.L.d;
  const int j = static_cast<int>(t % P.L.d);
  const bool high = j >= P.lo;
  const int jj = high ? j - P.lo : j;
  const int64_t W = int64_t(1) << (high ? P.hi : P.lo);
  const float* Tr = high ? Phi + n * P.Hp : Plo + n * P.Lp;
  const float* Dr = high ? dhi + n * P.Hp : dlo + n * P.Lp;
  double sall = 0.0, sj = 0.0;
  if (dlo) {
    for (int64_t c = 0; c < W; ++c) {
      const double w = static_cast<double>(Dr[c]) * static_cast<double>(Tr[c]);
      sall += w;
      if ((c >> jj) & 1) sj += w;
    }
  }
  const double av = P.scale * static_cast<double>(z[P.L.at(n, j)]);
  const double ga = (sj - lfq::sigmoid(av) * sall) + static_cast<double>(*gps) * invN * lfq::binary_entropy_grad(av);
  gz[P.L.at(n, j)] = static_cast<float>(ga * P.scale);
}

std::vector<Tensor> op_lfq_entropy_backward(const OpArgs& a) {
  const LfqEntropyArgs ea = parse_lfq_entropy(a, "lfq_entropy_backward");
  const Tensor& z = ea.z;
  const LfqEntropyPlan& P = ea.P;
  const LfqEntropyGrads eg = parse_lfq_entropy_grads(a, P);
  const Tensor &gps = eg.g_per_sample, &gcb = eg.g_codebook;
  const int64_t N = P.L.rows();
  const double invN = 1.0 / static_cast<double>(N);
  const float* avgp = eg.avg_probs.defined() ? eg.avg_probs.data<float>() : nullptr;
  Forward f;
  if (avgp) {
    f.Plo = empty({N, P.Lp}, DType::F32, Device::CUDA);
    f.Phi = empty({N, P.Hp}, DType::F32, Device::CUDA);
    f.hrow = empty({N}, DType::I64, Device::CUDA);
    build_tables<<<blocks_for(N * (P.Lp + P.Hp)), kThreads>>>(z.data<float>(), P, f.Plo.data<float>(), f.Phi.data<float>(),
                                                             reinterpret_cast<double*>(f.hrow.raw()));
    cuda::check_launch("lfq_entropy_backward: build_tables");
  } else {
    f = forward_tables(z, P);
  }
  Tensor G = empty({P.Lp, P.Hp}, DType::F32, Device::CUDA), GT = empty({P.Hp, P.Lp}, DType::F32, Device::CUDA);
  make_g<<<blocks_for(P.Lp * P.Hp), kThreads>>>(avgp, avgp ? nullptr : f.C.data<float>(), P, invN, gcb.data<float>(), G.data<float>(),
                                                GT.data<float>());
  cuda::check_launch("lfq_entropy_backward: make_g");
  Tensor dlo = empty({N, P.Lp}, DType::F32, Device::CUDA), dhi = empty({N, P.Hp}, DType::F32, Device::CUDA);
  gemm(N, P.Lp, P.Hp, f.Phi.data<float>(), P.Hp, 1, GT.data<float>(), P.Lp, dlo.data<float>(), P.Lp);
  gemm(N, P.Hp, P.Lp, f.Plo.data<float>(), P.Lp, 1, G.data<float>(), P.Hp, dhi.data<float>(), P.Hp);
  Tensor gz = empty(z.shape(), DType::F32, Device::CUDA);
  grad_bits<<<blocks_for(N * P.L.d), kThreads>>>(z.data<float>(), P, f.Plo.data<float>(), f.Phi.data<float>(), dlo.data<float>(),
                                                 dhi.data<float>(), gps.data<float>(), invN, gz.data<float>());
  cuda::check_launch("lfq_entropy_backward: grad_bits");
  return {gz};
}

}  // namespace

MVQ_REGISTER_OP("lfq_quantize", Device::CUDA, op_lfq_quantize);
MVQ_REGISTER_OP("lfq_entropy", Device::CUDA, op_lfq_entropy);
MVQ_REGISTER_OP("lfq_entropy_backward", Device::CUDA, op_lfq_entropy_backward);

}  // namespace mvq
