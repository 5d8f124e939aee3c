// Host-side argument checks for the in-place KV-cache ops, shared by the CPU and CUDA
// implementations. Everything is checked here, before any write, so a failed call leaves the cache
// untouched.
#pragma once
#include "../core/op.h"

namespace mvq {

struct KvWriteArgs {
  int64_t B, H, Mcap, hd, n, pos;
};

// Inputs: 0 cache [B, H, Mcap, hd], 1 x [B, H, n, hd] of the cache's dtype. Attr pos in [0, Mcap - n].
inline KvWriteArgs parse_kv_cache_write(const OpArgs& a) {
  const Tensor& cache = a.input(0, "cache");
  MVQ_CHECK_TYPE(cache.dim() == 4, "kv_cache_write: 'cache' must be [B, H, Mcap, hd], got ", cache.shape_str());
  const Tensor& x = a.input(1, "x", cache.dtype(), 4);
  KvWriteArgs w{cache.size(0), cache.size(1), cache.size(2), cache.size(3), x.size(2), 0};
  MVQ_CHECK_TYPE(x.size(0) == w.B && x.size(1) == w.H && x.size(3) == w.hd, "kv_cache_write: 'x' must be [", w.B, ", ", w.H,
                 ", n, ", w.hd, "] to match the cache ", cache.shape_str(), ", got ", x.shape_str());
  MVQ_CHECK_TYPE(a.attrs.has("pos"), "kv_cache_write: option 'pos' (the first slot to write) is required");
  w.pos = a.attrs.i("pos");
  MVQ_CHECK_RANGE(w.pos >= 0 && w.pos + w.n <= w.Mcap, "kv_cache_write: option 'pos' must be in [0, ", w.Mcap - w.n,
                  "] (Mcap ", w.Mcap, " - n ", w.n, "), got ", w.pos);
  return w;
}

struct KvCompactArgs {
  int64_t B, H, Mcap, hd, m, len;
};

// Inputs: 0 cache [B, H, Mcap, hd], 1 keep_idx int32 [B, m] (host copy `idx`, dense row-major).
// Attr len in [0, Mcap]: the number of valid slots. Each keep_idx row strictly increasing, in [0, len).
inline KvCompactArgs parse_kv_cache_compact(const OpArgs& a, const int32_t* idx) {
  const Tensor& cache = a.input(0, "cache");
  MVQ_CHECK_TYPE(cache.dim() == 4, "kv_cache_compact: 'cache' must be [B, H, Mcap, hd], got ", cache.shape_str());
  const Tensor& ki = a.input(1, "keep_idx", DType::I32, 2);
  KvCompactArgs c{cache.size(0), cache.size(1), cache.size(2), cache.size(3), ki.size(1), 0};
  MVQ_CHECK_TYPE(ki.size(0) == c.B, "kv_cache_compact: 'keep_idx' must be int32 [B, m] with B = ", c.B, ", got ", ki.shape_str());
  MVQ_CHECK_TYPE(a.attrs.has("len"), "kv_cache_compact: option 'len' (the number of valid cache slots) is required");
  c.len = a.attrs.i("len");
  MVQ_CHECK_RANGE(c.len >= 0 && c.len <= c.Mcap, "kv_cache_compact: option 'len' must be in [0, ", c.Mcap, "], got ", c.len);
  MVQ_CHECK_RANGE(c.m <= c.len, "kv_cache_compact: 'keep_idx' keeps ", c.m, " slots per row, more than len ", c.len);
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t t = 0; t < c.m; ++t) {
      const int64_t v = idx[b * c.m + t];
      MVQ_CHECK_RANGE(v >= 0 && v < c.len, "kv_cache_compact: keep_idx[", b, ", ", t, "] must be in [0, ", c.len, "), got ", v);
      MVQ_CHECK_RANGE(t == 0 || v > idx[b * c.m + t - 1], "kv_cache_compact: keep_idx[", b, ", :] must be strictly increasing, got ",
                      idx[b * c.m + t - 1], " then ", v, " at ", t);
    }
  }
  return c;
}

}  // namespace mvq
