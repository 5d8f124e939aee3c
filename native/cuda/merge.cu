// CUDA ToMe ops: tome_match, tome_merge, tome_source_update, unmerge (semantics: native/cpu/merge.cc).
//
// The heavy data (metric, x, maps) stays on the device. Merge decisions are small ([B, Na] int64):
// tome_merge / tome_source_update copy them to the host once to validate them and build the
// input-row -> output-row map and the per-group order (Bset row first, then merged A rows in
// src_idx order, as the reference's scatter_reduce), then upload those tables.
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "../core/op.h"
#include "common.cuh"

namespace mvq {
namespace {

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// ---------------------------------------------------------------------------------------------
// tome_match

__global__ void normalize_rows(const float* m, float* xn, int64_t rows, int64_t C) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const float* x = m + row * C;
  double s = 0.0;
  for (int64_t k = 0; k < C; ++k) s += static_cast<double>(x[k]) * static_cast<double>(x[k]);
  const float nrm = static_cast<float>(sqrt(s));
  for (int64_t k = 0; k < C; ++k) xn[row * C + k] = __fdiv_rn(x[k], nrm);
}

// best / argmax over Bset for every A row (one thread per A row); same 8-lane double dot as the CPU.
__global__ void best_match(const float* xn, float* best, int64_t* arg, int64_t B, int64_t N, int64_t C, int cls) {
  const int64_t Na = (N + 1) / 2, Nb = N / 2;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * Na) return;
  const int64_t b = t / Na, i = t % Na;
  if (cls && i == 0) {
    best[t] = -INFINITY;
    arg[t] = 0;
    return;
  }
  const float* ai = xn + (b * N + 2 * i) * C;
  float bv = 0.0f;
  int64_t bj = -1;
  for (int64_t j = 0; j < Nb; ++j) {
    const float* bjr = xn + (b * N + 2 * j + 1) * C;
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k = 0; k < C; ++k) acc[k % 8] = __fma_rn(static_cast<double>(ai[k]), static_cast<double>(bjr[k]), acc[k % 8]);
    const float sc = __double2float_rn(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
    if (bj < 0 || sc > bv || (isnan(bv) && !isnan(sc))) {
      bv = sc;
      bj = j;
    }
  }
  best[t] = bv;
  arg[t] = bj;
}

// Descending order "x before y" with NaN last and ties by lower index (a stable sort's rank).
__device__ bool before(float fx, int64_t x, float fy, int64_t y) {
  const bool nx = isnan(fx), ny = isnan(fy);
  if (nx != ny) return ny;
  if (!nx && fx != fy) return fx > fy;
  return x < y;
}

__global__ void rank_rows(const float* best, int64_t* rank, int64_t B, int64_t Na) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * Na) return;
  const int64_t b = t / Na, i = t % Na;
  const float* bb = best + b * Na;
  int64_t r = 0;
  for (int64_t k = 0; k < Na; ++k)
    if (k != i && before(bb[k], k, bb[i], i)) ++r;
  rank[t] = r;
}

__global__ void scatter_decisions(const int64_t* rank, const int64_t* arg, int64_t* unm, int64_t* src, int64_t* dst, int64_t B,
                                  int64_t Na, int64_t r, int cls) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * Na) return;
  const int64_t b = t / Na, i = t % Na, rk = rank[t], Nu = Na - r;
  if (rk < r) {
    src[b * r + rk] = i;
    dst[b * r + rk] = arg[t];
    return;
  }
  int64_t pos = rk - r;
  if (cls) {  // unmerged rows re-sorted ascending by index
    pos = 0;
    for (int64_t k = 0; k < i; ++k)
      if (rank[b * Na + k] >= r) ++pos;
  }
  unm[b * Nu + pos] = i;
}

std::vector<Tensor> op_tome_match(const OpArgs& a) {
  const Tensor m = a.input(0, "metric", DType::F32, 3).contiguous();
  const int64_t B = m.size(0), N = m.size(1), C = m.size(2);
  const int64_t r_in = a.attrs.i("r");
  const bool cls = a.attrs.b("class_token", false);
  MVQ_CHECK_RANGE(r_in >= 0, "tome_match: option 'r' must be >= 0, got ", r_in);
  const int64_t r = std::max<int64_t>(0, std::min(r_in, (N - (cls ? 1 : 0)) / 2));
  const int64_t Na = (N + 1) / 2;
  const Device dev = Device::CUDA;
  if (r == 0) return {empty({B, 0}, DType::I64, dev), empty({B, 0}, DType::I64, dev), empty({B, 0}, DType::I64, dev)};
  Tensor xn = empty({B * N * C}, DType::F32, dev);
  Tensor best = empty({B * Na}, DType::F32, dev);
  Tensor arg = empty({B * Na}, DType::I64, dev);
  Tensor rank = empty({B * Na}, DType::I64, dev);
  Tensor unm = empty({B, Na - r}, DType::I64, dev), src = empty({B, r}, DType::I64, dev), dst = empty({B, r}, DType::I64, dev);
  normalize_rows<<<blocks_for(B * N), kThreads>>>(m.data<float>(), xn.data<float>(), B * N, C);
  cuda::check_launch("tome_match: normalize_rows");
  best_match<<<blocks_for(B * Na), kThreads>>>(xn.data<float>(), best.data<float>(), arg.data<int64_t>(), B, N, C, cls);
  cuda::check_launch("tome_match: best_match");
  rank_rows<<<blocks_for(B * Na), kThreads>>>(best.data<float>(), rank.data<int64_t>(), B, Na);
  cuda::check_launch("tome_match: rank_rows");
  scatter_decisions<<<blocks_for(B * Na), kThreads>>>(rank.data<int64_t>(), arg.data<int64_t>(), unm.data<int64_t>(),
                                                       src.data<int64_t>(), dst.data<int64_t>(), B, Na, r, cls);
  cuda::check_launch("tome_match: scatter_decisions");
  return {unm, src, dst};
}

// ---------------------------------------------------------------------------------------------
// Host-side decision tables

struct Tables {
  int64_t B = 0, N = 0, out = 0;
  std::vector<int64_t> dest, first, next;
};

Tables build_tables(const char* op, const OpArgs& a, size_t i0, int64_t B, int64_t N) {
  const Tensor unm = to_device(a.input(i0, "unm_idx", DType::I64, 2), Device::CPU);
  const Tensor src = to_device(a.input(i0 + 1, "src_idx", DType::I64, 2), Device::CPU);
  const Tensor dst = to_device(a.input(i0 + 2, "dst_idx", DType::I64, 2), Device::CPU);
  const int64_t Na = (N + 1) / 2, Nb = N / 2, r = src.size(1);
  MVQ_CHECK_RANGE(unm.size(0) == B && src.size(0) == B && dst.size(0) == B && dst.size(1) == r, op,
                  ": 'unm_idx', 'src_idx', 'dst_idx' must be [", B, ", *] with equal src/dst widths");
  Tables t;
  t.B = B;
  t.N = N;
  t.dest.assign(static_cast<size_t>(B * N), 0);
  t.next.assign(static_cast<size_t>(B * N), -1);
  if (r == 0) {
    MVQ_CHECK_RANGE(unm.size(1) == 0, op, ": with empty 'src_idx' (the identity merge) 'unm_idx' must be empty too");
    t.out = N;
    t.first.resize(static_cast<size_t>(B * N));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < N; ++i) t.dest[b * N + i] = t.first[b * N + i] = i;
    return t;
  }
  const int64_t Nu = unm.size(1);
  MVQ_CHECK_RANGE(Nu + r == Na, op, ": 'unm_idx' and 'src_idx' must split the ", Na, " even rows");
  t.out = Nu + Nb;
  t.first.assign(static_cast<size_t>(B * t.out), -1);
  std::vector<char> seen(static_cast<size_t>(Na));
  std::vector<int64_t> last(static_cast<size_t>(t.out));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(seen.begin(), seen.end(), 0);
    int64_t* de = t.dest.data() + b * N;
    int64_t* f = t.first.data() + b * t.out;
    int64_t* nx = t.next.data() + b * N;
    for (int64_t p = 0; p < Nu; ++p) {
      const int64_t u = unm.data<int64_t>()[b * Nu + p];
      MVQ_CHECK_RANGE(u >= 0 && u < Na && !seen[u], op, ": 'unm_idx' and 'src_idx' must together be a permutation of [0, ", Na, ")");
      seen[u] = 1;
      de[2 * u] = p;
      f[p] = last[p] = 2 * u;
    }
    for (int64_t v = 0; v < Nb; ++v) {
      de[2 * v + 1] = Nu + v;
      f[Nu + v] = last[Nu + v] = 2 * v + 1;
    }
    for (int64_t j = 0; j < r; ++j) {
      const int64_t u = src.data<int64_t>()[b * r + j], v = dst.data<int64_t>()[b * r + j];
      MVQ_CHECK_RANGE(u >= 0 && u < Na && !seen[u], op, ": 'unm_idx' and 'src_idx' must together be a permutation of [0, ", Na, ")");
      MVQ_CHECK_RANGE(v >= 0 && v < Nb, op, ": 'dst_idx' must be in [0, ", Nb, "), got ", v);
      seen[u] = 1;
      de[2 * u] = Nu + v;
      nx[last[Nu + v]] = 2 * u;
      last[Nu + v] = 2 * u;
    }
  }
  return t;
}

Tensor upload(const std::vector<int64_t>& v) {
  Tensor h = empty({static_cast<int64_t>(v.size())}, DType::I64);
  if (!v.empty()) std::copy(v.begin(), v.end(), h.data<int64_t>());
  return to_device(h, Device::CUDA);
}

// One block per output row; threads over channels. Sums in group order, as the CPU.
__global__ void merge_rows(const float* x, const float* s, const int64_t* first, const int64_t* next, float* y, float* sz, int64_t N,
                           int64_t out, int64_t C) {
  const int64_t t = blockIdx.x;  // b * out + o
  const int64_t b = t / out;
  const int64_t i0 = first[t];
  for (int64_t k = threadIdx.x; k < C; k += blockDim.x) {
    float ssum = s[b * N + i0];
    float acc = __fmul_rn(x[(b * N + i0) * C + k], ssum);
    for (int64_t i = next[b * N + i0]; i >= 0; i = next[b * N + i]) {
      ssum = __fadd_rn(ssum, s[b * N + i]);
      acc = __fadd_rn(acc, __fmul_rn(x[(b * N + i) * C + k], s[b * N + i]));
    }
    y[t * C + k] = __fdiv_rn(acc, ssum);
    if (k == 0) sz[t] = ssum;
  }
}

std::vector<Tensor> op_tome_merge(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32, 3).contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  Tensor s;
  int srank = 2;
  if (a.has_input(1)) {
    s = a.input(1, "size", DType::F32).contiguous();
    const bool ok = (s.dim() == 2 || (s.dim() == 3 && s.size(2) == 1)) && s.size(0) == B && s.size(1) == N;
    MVQ_CHECK_RANGE(ok, "tome_merge: 'size' must be float32 [", B, ", ", N, "] or [", B, ", ", N, ", 1], got ", s.shape_str());
    srank = s.dim();
  } else {
    Tensor h = empty({B, N}, DType::F32);
    std::fill(h.data<float>(), h.data<float>() + B * N, 1.0f);
    s = to_device(h, Device::CUDA);
  }
  const Tables t = build_tables("tome_merge", a, 2, B, N);
  const Tensor first = upload(t.first), next = upload(t.next);
  Tensor y = empty({B, t.out, C}, DType::F32, Device::CUDA);
  Tensor sz = srank == 3 ? empty({B, t.out, 1}, DType::F32, Device::CUDA) : empty({B, t.out}, DType::F32, Device::CUDA);
  if (B * t.out > 0 && C > 0) {
    merge_rows<<<static_cast<unsigned>(B * t.out), C >= 256 ? 256 : 64>>>(x.data<float>(), s.data<float>(), first.data<int64_t>(),
                                                                          next.data<int64_t>(), y.data<float>(), sz.data<float>(), N,
                                                                          t.out, C);
    cuda::check_launch("tome_merge: merge_rows");
  }
  return {y, sz};
}

__global__ void remap(const int64_t* map, const int64_t* dest, int64_t* out, int64_t B, int64_t L, int64_t n, int* bad) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * L) return;
  const int64_t k = map[t];
  if (k < 0 || k >= n) {
    *bad = 1;
    out[t] = 0;
    return;
  }
  out[t] = dest[(t / L) * n + k];
}

int read_flag(const Tensor& flag) { return to_device(flag, Device::CPU).data<int>()[0]; }
Tensor zero_flag() {
  Tensor f = empty({1}, DType::I32, Device::CUDA);
  cuda::check(cudaMemset(f.raw(), 0, sizeof(int)), "cudaMemset");
  return f;
}

std::vector<Tensor> op_tome_source_update(const OpArgs& a) {
  const Tensor mp = a.input(0, "map", DType::I64, 2).contiguous();
  const int64_t B = mp.size(0), L = mp.size(1), n = a.attrs.i("n");
  MVQ_CHECK_RANGE(n >= 1, "tome_source_update: option 'n' (tokens before the merge) must be >= 1, got ", n);
  const Tables t = build_tables("tome_source_update", a, 1, B, n);
  const Tensor dest = upload(t.dest);
  Tensor out = empty({B, L}, DType::I64, Device::CUDA);
  Tensor flag = zero_flag();
  if (B * L > 0) {
    remap<<<blocks_for(B * L), kThreads>>>(mp.data<int64_t>(), dest.data<int64_t>(), out.data<int64_t>(), B, L, n, flag.data<int>());
    cuda::check_launch("tome_source_update: remap");
  }
  MVQ_CHECK_RANGE(!read_flag(flag), "tome_source_update: 'map' entries must be in [0, ", n, ")");
  return {out};
}

__global__ void gather_rows(const float* kept, const int64_t* map, float* out, int64_t B, int64_t K, int64_t L, int64_t C, int* bad) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * L * C) return;
  const int64_t c = t % C, bl = t / C, b = bl / L;
  const int64_t k = map[bl];
  if (k < 0 || k >= K) {
    *bad = 1;
    out[t] = 0.0f;
    return;
  }
  out[t] = kept[(b * K + k) * C + c];
}

std::vector<Tensor> op_unmerge(const OpArgs& a) {
  const Tensor kept = a.input(0, "kept", DType::F32, 3).contiguous();
  const Tensor mp = a.input(1, "map", DType::I64, 2).contiguous();
  const int64_t B = kept.size(0), K = kept.size(1), C = kept.size(2), L = mp.size(1);
  MVQ_CHECK_RANGE(mp.size(0) == B, "unmerge: 'map' ", mp.shape_str(), " must have batch ", B);
  Tensor out = empty({B, L, C}, DType::F32, Device::CUDA);
  Tensor flag = zero_flag();
  if (B * L * C > 0) {
    gather_rows<<<blocks_for(B * L * C), kThreads>>>(kept.data<float>(), mp.data<int64_t>(), out.data<float>(), B, K, L, C,
                                                      flag.data<int>());
    cuda::check_launch("unmerge: gather_rows");
  }
  MVQ_CHECK_RANGE(!read_flag(flag), "unmerge: 'map' entries must be in [0, ", K, ")");
  return {out};
}

}  // namespace

MVQ_REGISTER_OP("tome_match", Device::CUDA, op_tome_match);
MVQ_REGISTER_OP("tome_merge", Device::CUDA, op_tome_merge);
MVQ_REGISTER_OP("tome_source_update", Device::CUDA, op_tome_source_update);
MVQ_REGISTER_OP("unmerge", Device::CUDA, op_unmerge);

}  // namespace mvq
