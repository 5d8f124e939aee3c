// CUDA ToMe ops: tome_match, tome_merge, tome_source_update, unmerge (semantics: native/cpu/merge.cc).
//
// The heavy data (metric, x, maps) stays on the device. Merge decisions are small ([B, Na] int64):
// tome_merge / tome_source_update copy them to the host once, where kernels/merge_args.h (shared
// with the CPU) validates them and builds the input-row -> output-row map and the per-group order
// (Bset row first, then merged A rows in src_idx order, as the reference's scatter_reduce); those
// tables are then uploaded. 'map' entries are checked on the device: the kernel flags the first
// bad element and the host raises the CPU's message for it.
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "../core/op.h"
#include "../kernels/merge_args.h"
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
  const TomeMatchArgs ma = parse_tome_match(a);
  const Tensor& m = ma.metric;
  const int64_t B = ma.B, N = ma.N, C = ma.C, r = ma.r, Na = ma.Na;
  const bool cls = ma.cls;
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
// Decision tables (built on the host by merge_args.h) and 'map' checks

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
  const TomeMergeArgs m = parse_tome_merge(a, "tome_merge");
  const Tensor x = m.x.contiguous();
  const int64_t B = m.B, N = m.N, C = m.C;
  Tensor s = m.size;
  if (!s.defined()) {
    Tensor h = empty({B, N}, DType::F32);
    std::fill(h.data<float>(), h.data<float>() + B * N, 1.0f);
    s = to_device(h, Device::CUDA);
  }
  const int64_t out = m.d.out_rows();
  const MergeGroups g = merge_groups(m.d);
  const Tensor first = upload(g.first), next = upload(g.next);
  Tensor y = empty({B, out, C}, DType::F32, Device::CUDA);
  Tensor sz = m.size_rank == 3 ? empty({B, out, 1}, DType::F32, Device::CUDA) : empty({B, out}, DType::F32, Device::CUDA);
  if (B * out > 0 && C > 0) {
    merge_rows<<<static_cast<unsigned>(B * out), C >= 256 ? 256 : 64>>>(x.data<float>(), s.data<float>(), first.data<int64_t>(),
                                                                        next.data<int64_t>(), y.data<float>(), sz.data<float>(), N, out,
                                                                        C);
    cuda::check_launch("tome_merge: merge_rows");
  }
  return {y, sz};
}

// The first element of a map whose entry is out of range: atomicMin over element indices into
// *bad, which starts at kNoBadEntry, so the host reports the same element as the CPU's in-order check.
constexpr unsigned long long kNoBadEntry = ~0ull;

Tensor bad_entry_flag() {
  Tensor f = empty({1}, DType::I64, Device::CUDA);
  cuda::check(cudaMemset(f.raw(), 0xFF, sizeof(unsigned long long)), "cudaMemset");
  return f;
}

// Throws the CPU's message (throw_map_entry / _at, merge_args.h) when the kernel flagged an entry.
void raise_bad_entry(const Tensor& flag, const Tensor& map, const char* op, int64_t lim, bool at) {
  const unsigned long long t = to_device(flag, Device::CPU).data<unsigned long long>()[0];
  if (t == kNoBadEntry) return;
  int64_t k = 0;
  cuda::check(cudaMemcpy(&k, map.data<int64_t>() + t, sizeof(int64_t), cudaMemcpyDeviceToHost), "cudaMemcpy");
  if (at) throw_map_entry_at(op, lim, k, static_cast<int64_t>(t), map.size(1));
  throw_map_entry(op, lim, k);
}

__global__ void remap(const int64_t* map, const int64_t* dest, int64_t* out, int64_t B, int64_t L, int64_t n,
                      unsigned long long* bad) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * L) return;
  const int64_t k = map[t];
  if (!map_entry_ok(k, n)) {
    atomicMin(bad, static_cast<unsigned long long>(t));
    out[t] = 0;
    return;
  }
  out[t] = dest[(t / L) * n + k];
}

std::vector<Tensor> op_tome_source_update(const OpArgs& a) {
  const TomeSourceArgs sa = parse_tome_source_update(a);
  const int64_t B = sa.B, L = sa.L, n = sa.n;
  const Tensor dest = upload(sa.d.dest);
  Tensor out = empty({B, L}, DType::I64, Device::CUDA);
  Tensor flag = bad_entry_flag();
  if (B * L > 0) {
    remap<<<blocks_for(B * L), kThreads>>>(sa.map.data<int64_t>(), dest.data<int64_t>(), out.data<int64_t>(), B, L, n,
                                           flag.data<unsigned long long>());
    cuda::check_launch("tome_source_update: remap");
  }
  raise_bad_entry(flag, sa.map, "tome_source_update", n, true);
  return {out};
}

// Flags the first entry of map [count] outside [0, lim).
__global__ void check_entries(const int64_t* map, int64_t count, int64_t lim, unsigned long long* bad) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t < count && !map_entry_ok(map[t], lim)) atomicMin(bad, static_cast<unsigned long long>(t));
}

__global__ void gather_rows(const float* kept, const int64_t* map, float* out, int64_t B, int64_t K, int64_t L, int64_t C) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= B * L * C) return;
  const int64_t c = t % C, bl = t / C, b = bl / L;
  out[t] = kept[(b * K + map[bl]) * C + c];
}

std::vector<Tensor> op_unmerge(const OpArgs& a) {
  const UnmergeArgs u = parse_unmerge(a);
  const int64_t B = u.B, K = u.K, C = u.C, L = u.L;
  // The entries are checked before the gather (also when C = 0), as on the CPU.
  Tensor flag = bad_entry_flag();
  if (B * L > 0) {
    check_entries<<<blocks_for(B * L), kThreads>>>(u.map.data<int64_t>(), B * L, K, flag.data<unsigned long long>());
    cuda::check_launch("unmerge: check_entries");
  }
  raise_bad_entry(flag, u.map, "unmerge", K, false);
  Tensor out = empty({B, L, C}, DType::F32, Device::CUDA);
  if (B * L * C > 0) {
    gather_rows<<<blocks_for(B * L * C), kThreads>>>(u.x.data<float>(), u.map.data<int64_t>(), out.data<float>(), B, K, L, C);
    cuda::check_launch("unmerge: gather_rows");
  }
  return {out};
}

}  // namespace

MVQ_REGISTER_OP("tome_match", Device::CUDA, op_tome_match);
MVQ_REGISTER_OP("tome_merge", Device::CUDA, op_tome_merge);
MVQ_REGISTER_OP("tome_source_update", Device::CUDA, op_tome_source_update);
MVQ_REGISTER_OP("unmerge", Device::CUDA, op_unmerge);

}  // namespace mvq
