// KV-cache ops on the CPU. These two ops are IN PLACE by design: they write into the cache tensor
// they are given and return that same tensor (no reallocation per decode step). Every argument is
// validated before the first write, so a call that throws leaves the cache untouched.
//
// Cache layout: [B, H, Mcap, hd] (keys or values; any dtype, any strides), row t of head (b, h) is
// the entry at sequence slot t.
//   kv_cache_write(cache, x [B, H, n, hd], {pos})  cache[:, :, pos + t, :] = x[:, :, t, :], t < n
//   kv_cache_compact(cache, keep_idx int32 [B, m], {len})
//       cache[b, :, t, :] = cache[b, :, keep_idx[b, t], :] for t < m: MergeAR's compaction, an
//       index map applied in place. keep_idx[b, :] must be strictly increasing and < len <= Mcap,
//       so keep_idx[b, t] >= t and copying t = 0, 1, ... in order never reads an overwritten row.
#include <cstring>

#include "../core/op.h"
#include "../core/parallel.h"
#include "../kernels/kvcache_args.h"

namespace mvq {
namespace {

// Copies one row of `hd` elements of `es` bytes between strided rows.
inline void copy_row(char* dst, int64_t dstride, const char* src, int64_t sstride, int64_t hd, size_t es) {
  if (dstride == 1 && sstride == 1) {
    std::memmove(dst, src, hd * es);
    return;
  }
  for (int64_t c = 0; c < hd; ++c) std::memcpy(dst + c * dstride * es, src + c * sstride * es, es);
}

std::vector<Tensor> op_kv_cache_write(const OpArgs& a) {
  const KvWriteArgs w = parse_kv_cache_write(a);
  const Tensor& cache = a.in[0];
  const Tensor& x = a.in[1];
  const size_t es = dtype_size(cache.dtype());
  char* cb = static_cast<char*>(cache.raw());
  const char* xb = static_cast<const char*>(x.raw());
  const auto& cs = cache.strides();
  const auto& xs = x.strides();
  parallel_for(w.B * w.H * w.n, 64, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      const int64_t b = t / (w.H * w.n), h = (t / w.n) % w.H, r = t % w.n;
      copy_row(cb + (b * cs[0] + h * cs[1] + (w.pos + r) * cs[2]) * es, cs[3], xb + (b * xs[0] + h * xs[1] + r * xs[2]) * es,
               xs[3], w.hd, es);
    }
  });
  return {cache};
}

std::vector<Tensor> op_kv_cache_compact(const OpArgs& a) {
  const Tensor& cache = a.input(0, "cache");
  const Tensor idx = a.input(1, "keep_idx", DType::I32, 2).contiguous();
  const KvCompactArgs c = parse_kv_cache_compact(a, idx.data<int32_t>());
  const size_t es = dtype_size(cache.dtype());
  char* cb = static_cast<char*>(cache.raw());
  const auto& cs = cache.strides();
  const int32_t* ip = idx.data<int32_t>();
  parallel_for(c.B * c.H, 1, [&](int64_t s, int64_t e) {
    for (int64_t bh = s; bh < e; ++bh) {
      const int64_t b = bh / c.H, h = bh % c.H;
      char* head = cb + (b * cs[0] + h * cs[1]) * es;
      for (int64_t t = 0; t < c.m; ++t) {
        const int64_t src = ip[b * c.m + t];
        if (src == t) continue;
        copy_row(head + t * cs[2] * es, cs[3], head + src * cs[2] * es, cs[3], c.hd, es);
      }
    }
  });
  return {cache};
}

}  // namespace

MVQ_REGISTER_OP("kv_cache_write", Device::CPU, op_kv_cache_write);
MVQ_OP_ATTRS("kv_cache_write", "pos");
MVQ_REGISTER_OP("kv_cache_compact", Device::CPU, op_kv_cache_compact);
MVQ_OP_ATTRS("kv_cache_compact", "len");

}  // namespace mvq
