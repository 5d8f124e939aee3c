// KV-cache ops on CUDA, IN PLACE like the CPU versions (native/cpu/kvcache.cc has the layout and
// the rules). Validation (shared with the CPU, kernels/kvcache_args.h) runs on the host before any
// write; keep_idx is copied to the host for it (B * m int32, small).
//
// Compaction is a gather into a scratch buffer followed by a copy back: rows are moved by many
// threads at once, and a direct in-place copy could read a row another thread already overwrote.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "../core/op.h"
#include "../kernels/kvcache_args.h"
#include "common.cuh"

namespace mvq {
namespace cuda {
namespace {

struct Strides4 {
  int64_t s[4];
};

// dst[b, h, dst_row(r), c] = src[b, h, src_row(r), c] for r < n, element size es (1..8 bytes).
// Row maps: dst_row = dst_off + r; src_row = idx ? idx[b * n + r] : src_off + r.
__global__ void copy_rows(char* dst, Strides4 ds, int64_t dst_off, const char* src, Strides4 ss, int64_t src_off,
                          const int32_t* idx, int64_t B, int64_t H, int64_t n, int64_t hd, int es) {
  const int64_t total = B * H * n * hd;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = t % hd, r = (t / hd) % n, h = (t / (hd * n)) % H, b = t / (hd * n * H);
    const int64_t sr = idx ? idx[b * n + r] : src_off + r;
    const char* s = src + (b * ss.s[0] + h * ss.s[1] + sr * ss.s[2] + c * ss.s[3]) * es;
    char* d = dst + (b * ds.s[0] + h * ds.s[1] + (dst_off + r) * ds.s[2] + c * ds.s[3]) * es;
    for (int k = 0; k < es; ++k) d[k] = s[k];
  }
}

Strides4 strides_of(const Tensor& t) {
  Strides4 s;
  for (int d = 0; d < 4; ++d) s.s[d] = t.strides()[d];
  return s;
}

void launch_copy(char* dst, Strides4 ds, int64_t dst_off, const char* src, Strides4 ss, int64_t src_off, const int32_t* idx,
                 int64_t B, int64_t H, int64_t n, int64_t hd, int es, const char* what) {
  const int64_t total = B * H * n * hd;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65535);
  copy_rows<<<static_cast<unsigned>(blocks), 256>>>(dst, ds, dst_off, src, ss, src_off, idx, B, H, n, hd, es);
  check_launch(what);
}

std::vector<Tensor> op_kv_cache_write_cuda(const OpArgs& a) {
  const KvWriteArgs w = parse_kv_cache_write(a);
  const Tensor& cache = a.in[0];
  const Tensor& x = a.in[1];
  launch_copy(static_cast<char*>(cache.raw()), strides_of(cache), w.pos, static_cast<const char*>(x.raw()), strides_of(x), 0, nullptr,
              w.B, w.H, w.n, w.hd, static_cast<int>(dtype_size(cache.dtype())), "kv_cache_write");
  return {cache};
}

std::vector<Tensor> op_kv_cache_compact_cuda(const OpArgs& a) {
  const Tensor& cache = a.input(0, "cache");
  const Tensor idx = a.input(1, "keep_idx", DType::I32, 2).contiguous();
  std::vector<int32_t> host(static_cast<size_t>(idx.numel()));
  if (!host.empty()) check(cudaMemcpy(host.data(), idx.raw(), idx.nbytes(), cudaMemcpyDeviceToHost), "cudaMemcpy keep_idx");
  const KvCompactArgs c = parse_kv_cache_compact(a, host.data());
  if (c.B * c.H * c.m * c.hd == 0) return {cache};
  const int es = static_cast<int>(dtype_size(cache.dtype()));
  Tensor tmp = empty({c.B, c.H, c.m, c.hd}, cache.dtype(), Device::CUDA);
  const Strides4 cs = strides_of(cache), ts = strides_of(tmp);
  launch_copy(static_cast<char*>(tmp.raw()), ts, 0, static_cast<const char*>(cache.raw()), cs, 0, idx.data<int32_t>(), c.B, c.H, c.m,
              c.hd, es, "kv_cache_compact gather");
  launch_copy(static_cast<char*>(cache.raw()), cs, 0, static_cast<const char*>(tmp.raw()), ts, 0, nullptr, c.B, c.H, c.m, c.hd, es,
              "kv_cache_compact copy back");
  return {cache};
}

}  // namespace
}  // namespace cuda

MVQ_REGISTER_OP("kv_cache_write", Device::CUDA, cuda::op_kv_cache_write_cuda);
MVQ_REGISTER_OP("kv_cache_compact", Device::CUDA, cuda::op_kv_cache_compact_cuda);

}  // namespace mvq
