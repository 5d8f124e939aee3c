// Fused attention on CUDA (fp32): tiled flash-style forward, a split-over-warps decode kernel for
// a few queries against a long KV cache, and a recomputing backward. Same layouts, strides and
// visibility rule as native/cpu/attention.cc (rule and online softmax in kernels/online_softmax.h).
//
// Forward (attn_fwd_tiled): one block of 128 threads per (head, 16-query tile). Q, O and the
// current 32-key K/V tile live in shared memory (K rows padded by one float against bank
// conflicts); 8 threads share a query row, so row max / sum reductions are 8-lane shuffles.
// Decode (attn_fwd_decode, N <= 4): one block per (head, query); each of the 4 warps streams every
// 4th key with its own online softmax (lanes split the head dim), then the warps are merged.
// Backward: D_i = go_i . o_i (attn_bwd_rowdot), dQ per query tile (attn_bwd_dq), dK/dV and the
// per-head key-bias gradient per key tile (attn_bwd_dkv), then gbias sums heads (attn_bwd_gbias).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "../core/op.h"
#include "../kernels/attention_args.h"
#include "../kernels/online_softmax.h"
#include "common.cuh"

namespace mvq {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kRowThreads = 8;  // threads sharing one query (or key) row
constexpr int FQ = 16;          // forward: query rows per block
constexpr int FK = 32;          // forward: keys per tile
constexpr int kDecodeMaxN = 4;
constexpr int kDecodeMaxHd = 256;  // decode kernel keeps hd / 32 accumulators per lane

__device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float row_max8(float v) {
  for (int o = kRowThreads / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, kRowThreads));
  return v;
}
__device__ __forceinline__ float row_sum8(float v) {
  for (int o = kRowThreads / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, kRowThreads);
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Loads rows [r0, r0 + nrows) of a strided [rows, hd] matrix into shared dst[r][ld] (zeros past `valid`).
__device__ void load_tile(float* dst, int ld, const float* src, int64_t srow, int64_t sd, int64_t r0, int nrows, int64_t valid,
                          int hd) {
  for (int e = threadIdx.x; e < nrows * hd; e += blockDim.x) {
    const int r = e / hd, c = e % hd;
    const int64_t row = r0 + r;
    dst[r * ld + c] = row < valid ? src[row * srow + c * sd] : 0.f;
  }
}

// Scaled, biased and masked score of (query row i, key j) from a dot product.
__device__ __forceinline__ float masked_score(const AttnParams& p, int64_t b, int64_t i, int64_t j, float dot) {
  if (i >= p.N || !p.visible(b, i, j)) return -INFINITY;
  return dot * p.scale + p.key_bias(b, j);
}

__global__ void attn_fwd_tiled(AttnParams p, float* __restrict__ o, float* __restrict__ lse) {
  extern __shared__ float sm[];
  const int hd = static_cast<int>(p.hd);
  const int ldk = hd + 1;
  float* Qs = sm;                 // [FQ][hd]
  float* Os = Qs + FQ * hd;       // [FQ][hd]
  float* Ks = Os + FQ * hd;       // [FK][hd + 1]
  float* Vs = Ks + FK * ldk;      // [FK][hd]
  float* Ps = Vs + FK * hd;       // [FQ][FK]
  const int64_t bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * FQ;
  const int tid = threadIdx.x, r = tid / kRowThreads, lane = tid % kRowThreads;
  const int64_t i = i0 + r;
  load_tile(Qs, hd, p.q + b * p.qs[0] + h * p.qs[1], p.qs[2], p.qs[3], i0, FQ, p.N, hd);
  for (int e = tid; e < FQ * hd; e += blockDim.x) Os[e] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int64_t last = imin64(p.N, i0 + FQ) - 1;
  const int64_t blim = p.key_limit(last);
  const float* kh = p.k + b * p.ks[0] + h * p.ks[1];
  const float* vh = p.v + b * p.vs[0] + h * p.vs[1];
  for (int64_t kb = 0; kb < blim; kb += FK) {
    __syncthreads();  // previous tile fully consumed (and Q/O initialised on the first pass)
    load_tile(Ks, ldk, kh, p.ks[2], p.ks[3], kb, FK, blim, hd);
    load_tile(Vs, hd, vh, p.vs[2], p.vs[3], kb, FK, blim, hd);
    __syncthreads();
    float s[FK / kRowThreads];
    float mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < FK / kRowThreads; ++u) {
      const int c = lane + kRowThreads * u;
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot += Qs[r * hd + d] * Ks[c * ldk + d];
      s[u] = masked_score(p, b, i, kb + c, dot);
      mx = fmaxf(mx, s[u]);
    }
    const float m_new = fmaxf(m, row_max8(mx));
    float alpha = 1.f, sum = 0.f;
    if (m_new == -INFINITY) {
#pragma unroll
      for (int u = 0; u < FK / kRowThreads; ++u) Ps[r * FK + lane + kRowThreads * u] = 0.f;
    } else {
      alpha = attn_rescale(m, m_new);
#pragma unroll
      for (int u = 0; u < FK / kRowThreads; ++u) {
        const float e = s[u] == -INFINITY ? 0.f : __expf(s[u] - m_new);
        Ps[r * FK + lane + kRowThreads * u] = e;
        sum += e;
      }
      sum = row_sum8(sum);
      l = l * alpha + sum;
      m = m_new;
    }
    __syncwarp();
    for (int d = lane; d < hd; d += kRowThreads) {
      float acc = Os[r * hd + d] * alpha;
#pragma unroll 8
      for (int c = 0; c < FK; ++c) acc += Ps[r * FK + c] * Vs[c * hd + d];
      Os[r * hd + d] = acc;
    }
  }
  __syncthreads();  // O initialised by other threads when no key tile ran
  if (i < p.N) {
    const float inv = attn_inv_sum(l);
    float* dst = o + ((b * p.H + h) * p.N + i) * hd;
    for (int d = lane; d < hd; d += kRowThreads) dst[d] = Os[r * hd + d] * inv;
    if (lane == 0) lse[(b * p.H + h) * p.N + i] = attn_lse(m, l);
  }
}

__global__ void attn_fwd_decode(AttnParams p, float* __restrict__ o, float* __restrict__ lse) {
  constexpr int W = kThreads / 32;
  constexpr int U = kDecodeMaxHd / 32;
  __shared__ float wm[W], wl[W];
  extern __shared__ float wacc[];  // [W][hd]
  const int hd = static_cast<int>(p.hd);
  const int64_t bh = blockIdx.x, b = bh / p.H, h = bh % p.H, i = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qr = p.q + b * p.qs[0] + h * p.qs[1] + i * p.qs[2];
  const float* kh = p.k + b * p.ks[0] + h * p.ks[1];
  const float* vh = p.v + b * p.vs[0] + h * p.vs[1];
  float qv[U], acc[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int d = lane + 32 * u;
    qv[u] = d < hd ? qr[d * p.qs[3]] : 0.f;
    acc[u] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int64_t lim = p.key_limit(i);
  for (int64_t j = warp; j < lim; j += W) {
    if (!p.visible(b, i, j)) continue;
    float dot = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int d = lane + 32 * u;
      if (d < hd) dot += qv[u] * kh[j * p.ks[2] + d * p.ks[3]];
    }
    const float s = warp_sum(dot) * p.scale + p.key_bias(b, j);
    if (s == -INFINITY) continue;
    const float m_new = fmaxf(m, s);
    const float alpha = attn_rescale(m, m_new);
    const float e = __expf(s - m_new);
    l = l * alpha + e;
    m = m_new;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int d = lane + 32 * u;
      if (d < hd) acc[u] = acc[u] * alpha + e * vh[j * p.vs[2] + d * p.vs[3]];
    }
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int d = lane + 32 * u;
    if (d < hd) wacc[warp * hd + d] = acc[u];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < W; ++w) M = fmaxf(M, wm[w]);
  float L = 0.f;
  for (int w = 0; w < W; ++w) L += wl[w] * (M == -INFINITY ? 0.f : attn_rescale(wm[w], M));
  const float inv = attn_inv_sum(L);
  float* dst = o + ((b * p.H + h) * p.N + i) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float v = 0.f;
    if (M != -INFINITY)
      for (int w = 0; w < W; ++w) v += wacc[w * hd + d] * attn_rescale(wm[w], M);
    dst[d] = v * inv;
  }
  if (threadIdx.x == 0) lse[(b * p.H + h) * p.N + i] = attn_lse(M, L);
}

// ---------------------------------------------------------------- backward

constexpr int BQ = 16;   // dq kernel: query rows per block
constexpr int BKT = 32;  // dq kernel: keys per tile
constexpr int KB = 16;   // dkv kernel: keys per block
constexpr int QT = 32;   // dkv kernel: queries per tile

__global__ void attn_bwd_rowdot(AttnParams p, AttnGradInputs g, float* __restrict__ D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.B * p.H * p.N) return;
  const int64_t b = row / (p.H * p.N), h = (row / p.N) % p.H, i = row % p.N;
  const float* gr = g.go + b * g.gs[0] + h * g.gs[1] + i * g.gs[2];
  const float* orow = g.o + b * g.os[0] + h * g.os[1] + i * g.os[2];
  float s = 0.f;
  for (int64_t d = lane; d < p.hd; d += 32) s += gr[d * g.gs[3]] * orow[d * g.os[3]];
  s = warp_sum(s);
  if (lane == 0) D[row] = s;
}

__global__ void attn_bwd_dq(AttnParams p, AttnGradInputs g, const float* __restrict__ D, float* __restrict__ gq) {
  extern __shared__ float sm[];
  const int hd = static_cast<int>(p.hd), ld = hd + 1;
  float* Qs = sm;              // [BQ][hd + 1]
  float* Gs = Qs + BQ * ld;    // [BQ][hd + 1]   go rows
  float* dQs = Gs + BQ * ld;   // [BQ][hd]
  float* Ks = dQs + BQ * hd;   // [BKT][hd + 1]
  float* Vs = Ks + BKT * ld;   // [BKT][hd + 1]
  float* Ss = Vs + BKT * ld;   // [BQ][BKT]      dS
  const int64_t bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * BQ;
  const int tid = threadIdx.x, r = tid / kRowThreads, lane = tid % kRowThreads;
  const int64_t i = i0 + r;
  load_tile(Qs, ld, p.q + b * p.qs[0] + h * p.qs[1], p.qs[2], p.qs[3], i0, BQ, p.N, hd);
  load_tile(Gs, ld, g.go + b * g.gs[0] + h * g.gs[1], g.gs[2], g.gs[3], i0, BQ, p.N, hd);
  for (int e = tid; e < BQ * hd; e += blockDim.x) dQs[e] = 0.f;
  const float lse_i = i < p.N ? g.lse[b * g.ls[0] + h * g.ls[1] + i * g.ls[2]] : -INFINITY;
  const float Di = i < p.N ? D[(b * p.H + h) * p.N + i] : 0.f;
  const int64_t blim = p.key_limit(imin64(p.N, i0 + BQ) - 1);
  const float* kh = p.k + b * p.ks[0] + h * p.ks[1];
  const float* vh = p.v + b * p.vs[0] + h * p.vs[1];
  for (int64_t kb = 0; kb < blim; kb += BKT) {
    __syncthreads();
    load_tile(Ks, ld, kh, p.ks[2], p.ks[3], kb, BKT, blim, hd);
    load_tile(Vs, ld, vh, p.vs[2], p.vs[3], kb, BKT, blim, hd);
    __syncthreads();
    for (int c = lane; c < BKT; c += kRowThreads) {
      float qk = 0.f, gv = 0.f;
      for (int d = 0; d < hd; ++d) {
        qk += Qs[r * ld + d] * Ks[c * ld + d];
        gv += Gs[r * ld + d] * Vs[c * ld + d];
      }
      const float pr = attn_prob(masked_score(p, b, i, kb + c, qk), lse_i);
      Ss[r * BKT + c] = pr * (gv - Di);
    }
    __syncwarp();
    for (int d = lane; d < hd; d += kRowThreads) {
      float acc = dQs[r * hd + d];
      for (int c = 0; c < BKT; ++c) acc += Ss[r * BKT + c] * Ks[c * ld + d];
      dQs[r * hd + d] = acc;
    }
  }
  __syncthreads();
  if (i < p.N) {
    float* dst = gq + ((b * p.H + h) * p.N + i) * hd;
    for (int d = lane; d < hd; d += kRowThreads) dst[d] = dQs[r * hd + d] * p.scale;
  }
}

__global__ void attn_bwd_dkv(AttnParams p, AttnGradInputs g, const float* __restrict__ D, float* __restrict__ gk,
                             float* __restrict__ gv, float* __restrict__ gb_part) {
  extern __shared__ float sm[];
  const int hd = static_cast<int>(p.hd), ld = hd + 1;
  float* Ks = sm;              // [KB][hd + 1]
  float* Vs = Ks + KB * ld;    // [KB][hd + 1]
  float* dKs = Vs + KB * ld;   // [KB][hd]
  float* dVs = dKs + KB * hd;  // [KB][hd]
  float* Qs = dVs + KB * hd;   // [QT][hd + 1]
  float* Gs = Qs + QT * ld;    // [QT][hd + 1]
  float* Ps = Gs + QT * ld;    // [KB][QT]  P^T
  float* Ts = Ps + KB * QT;    // [KB][QT]  dS^T
  float* Ls = Ts + KB * QT;    // [QT] lse
  float* Dq = Ls + QT;         // [QT] D
  const int64_t bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * KB;
  const int tid = threadIdx.x, c = tid / kRowThreads, lane = tid % kRowThreads;
  const int64_t j = j0 + c;
  load_tile(Ks, ld, p.k + b * p.ks[0] + h * p.ks[1], p.ks[2], p.ks[3], j0, KB, p.M, hd);
  load_tile(Vs, ld, p.v + b * p.vs[0] + h * p.vs[1], p.vs[2], p.vs[3], j0, KB, p.M, hd);
  for (int e = tid; e < KB * hd; e += blockDim.x) dKs[e] = dVs[e] = 0.f;
  float gb = 0.f;
  // Causal: query i sees key j only when j <= q_offset + i, so earlier queries can be skipped.
  int64_t qstart = 0;
  if (p.causal) qstart = imax64(0, j0 - p.q_offset) / QT * QT;
  const float* qh = p.q + b * p.qs[0] + h * p.qs[1];
  const float* gh = g.go + b * g.gs[0] + h * g.gs[1];
  for (int64_t q0 = j0 < p.kv_len ? qstart : p.N; q0 < p.N; q0 += QT) {
    __syncthreads();
    load_tile(Qs, ld, qh, p.qs[2], p.qs[3], q0, QT, p.N, hd);
    load_tile(Gs, ld, gh, g.gs[2], g.gs[3], q0, QT, p.N, hd);
    for (int e = tid; e < QT; e += blockDim.x) {
      const int64_t i = q0 + e;
      Ls[e] = i < p.N ? g.lse[b * g.ls[0] + h * g.ls[1] + i * g.ls[2]] : -INFINITY;
      Dq[e] = i < p.N ? D[(b * p.H + h) * p.N + i] : 0.f;
    }
    __syncthreads();
    for (int r = lane; r < QT; r += kRowThreads) {
      float qk = 0.f, gvd = 0.f;
      for (int d = 0; d < hd; ++d) {
        qk += Qs[r * ld + d] * Ks[c * ld + d];
        gvd += Gs[r * ld + d] * Vs[c * ld + d];
      }
      const float pr = j < p.M ? attn_prob(masked_score(p, b, q0 + r, j, qk), Ls[r]) : 0.f;
      const float ds = pr * (gvd - Dq[r]);
      Ps[c * QT + r] = pr;
      Ts[c * QT + r] = ds;
      gb += ds;
    }
    __syncwarp();
    for (int d = lane; d < hd; d += kRowThreads) {
      float ak = dKs[c * hd + d], av = dVs[c * hd + d];
      for (int r = 0; r < QT; ++r) {
        ak += Ts[c * QT + r] * Qs[r * ld + d];
        av += Ps[c * QT + r] * Gs[r * ld + d];
      }
      dKs[c * hd + d] = ak;
      dVs[c * hd + d] = av;
    }
  }
  __syncthreads();
  gb = row_sum8(gb);
  if (j < p.M) {
    const int64_t base = ((b * p.H + h) * p.M + j) * hd;
    for (int d = lane; d < hd; d += kRowThreads) {
      gk[base + d] = dKs[c * hd + d] * p.scale;
      gv[base + d] = dVs[c * hd + d];
    }
    if (gb_part && lane == 0) gb_part[(b * p.H + h) * p.M + j] = gb;
  }
}

__global__ void attn_bwd_gbias(const float* __restrict__ part, int64_t B, int64_t H, int64_t M, float* __restrict__ gbias) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * M) return;
  const int64_t b = t / M, j = t % M;
  float s = 0.f;
  for (int64_t h = 0; h < H; ++h) s += part[(b * H + h) * M + j];
  gbias[t] = s;
}

// Dynamic shared memory: opt in above 48 KiB, and name hd when the device cannot hold the tiles.
template <class K>
void prepare_smem(K kernel, size_t bytes, const char* op, int64_t hd) {
  int dev = 0, optin = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  MVQ_CHECK_RANGE(bytes <= static_cast<size_t>(optin), op, ": head dim ", hd, " needs ", bytes, " bytes of shared memory per block on CUDA, the device allows ",
                  optin);
  if (bytes > 48 * 1024) check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), "cudaFuncSetAttribute");
}

void check_grid(const AttnParams& p, int64_t tiles, const char* op) {
  MVQ_CHECK_RANGE(p.B * p.H < (int64_t{1} << 31) && tiles <= 65535, op, ": too many heads or rows for one CUDA launch (B*H ", p.B * p.H,
                  ", tiles ", tiles, ")");
}

std::vector<Tensor> op_attention_cuda(const OpArgs& a) {
  const AttnParams p = parse_attention_args(a, "attention");
  Tensor o = empty({p.B, p.H, p.N, p.hd}, DType::F32, Device::CUDA);
  Tensor lse = empty({p.B, p.H, p.N}, DType::F32, Device::CUDA);
  if (p.B * p.H == 0 || p.N == 0) return {o, lse};
  if (p.N <= kDecodeMaxN && p.hd <= kDecodeMaxHd) {
    check_grid(p, p.N, "attention");
    const size_t bytes = sizeof(float) * (kThreads / 32) * p.hd;
    prepare_smem(attn_fwd_decode, bytes, "attention", p.hd);
    attn_fwd_decode<<<dim3(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>(p.N)), kThreads, bytes>>>(p, o.data<float>(), lse.data<float>());
    check_launch("attn_fwd_decode");
    return {o, lse};
  }
  const int64_t tiles = (p.N + FQ - 1) / FQ;
  check_grid(p, tiles, "attention");
  const size_t bytes = sizeof(float) * (2 * FQ * p.hd + FK * (p.hd + 1) + FK * p.hd + FQ * FK);
  prepare_smem(attn_fwd_tiled, bytes, "attention", p.hd);
  attn_fwd_tiled<<<dim3(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>(tiles)), kThreads, bytes>>>(p, o.data<float>(), lse.data<float>());
  check_launch("attn_fwd_tiled");
  return {o, lse};
}

std::vector<Tensor> op_attention_backward_cuda(const OpArgs& a) {
  const AttnParams p = parse_attention_args(a, "attention_backward");
  const AttnGradInputs g = parse_attention_grad_args(a, p, "attention_backward");
  Tensor gq = empty({p.B, p.H, p.N, p.hd}, DType::F32, Device::CUDA);
  Tensor gk = empty({p.B, p.H, p.M, p.hd}, DType::F32, Device::CUDA);
  Tensor gv = empty({p.B, p.H, p.M, p.hd}, DType::F32, Device::CUDA);
  Tensor gbias;
  if (p.bias) gbias = empty({p.B, p.M}, DType::F32, Device::CUDA);
  const int64_t heads = p.B * p.H;
  if (heads == 0) return {gq, gk, gv, gbias};
  if (p.M == 0) {
    if (p.N > 0) check(cudaMemset(gq.raw(), 0, gq.nbytes()), "cudaMemset");
    return {gq, gk, gv, gbias};
  }
  Tensor D = empty({std::max<int64_t>(1, heads * p.N)}, DType::F32, Device::CUDA);
  Tensor part;
  if (p.bias) part = empty({heads * p.M}, DType::F32, Device::CUDA);
  if (p.N > 0) {
    const int64_t rows = heads * p.N;
    attn_bwd_rowdot<<<static_cast<unsigned>((rows + 3) / 4), kThreads>>>(p, g, D.data<float>());
    check_launch("attn_bwd_rowdot");
    const int64_t qtiles = (p.N + BQ - 1) / BQ;
    check_grid(p, qtiles, "attention_backward");
    const size_t bq = sizeof(float) * (2 * BQ * (p.hd + 1) + BQ * p.hd + 2 * BKT * (p.hd + 1) + BQ * BKT);
    prepare_smem(attn_bwd_dq, bq, "attention_backward", p.hd);
    attn_bwd_dq<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(qtiles)), kThreads, bq>>>(p, g, D.data<float>(), gq.data<float>());
    check_launch("attn_bwd_dq");
  }
  const int64_t ktiles = (p.M + KB - 1) / KB;
  check_grid(p, ktiles, "attention_backward");
  const size_t bk = sizeof(float) * (2 * KB * (p.hd + 1) + 2 * KB * p.hd + 2 * QT * (p.hd + 1) + 2 * KB * QT + 2 * QT);
  prepare_smem(attn_bwd_dkv, bk, "attention_backward", p.hd);
  attn_bwd_dkv<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(ktiles)), kThreads, bk>>>(
      p, g, D.data<float>(), gk.data<float>(), gv.data<float>(), p.bias ? part.data<float>() : nullptr);
  check_launch("attn_bwd_dkv");
  if (p.bias) {
    const int64_t n = p.B * p.M;
    attn_bwd_gbias<<<static_cast<unsigned>((n + 255) / 256), 256>>>(part.data<float>(), p.B, p.H, p.M, gbias.data<float>());
    check_launch("attn_bwd_gbias");
  }
  return {gq, gk, gv, gbias};
}

}  // namespace
}  // namespace cuda

MVQ_REGISTER_OP("attention", Device::CUDA, cuda::op_attention_cuda);
MVQ_REGISTER_OP("attention_backward", Device::CUDA, cuda::op_attention_backward_cuda);

}  // namespace mvq
