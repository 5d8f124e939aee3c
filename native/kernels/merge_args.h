// Host-side argument checks for the ToMe / unmerge ops, shared by the CPU (native/cpu/merge.cc)
// and CUDA (native/cuda/merge.cu) implementations so both accept and reject exactly the same calls
// with the same messages. Semantics of the decisions: the header comment of native/cpu/merge.cc.
//
// The merge decisions (unm_idx, src_idx, dst_idx) are small: they are read on the host (a CUDA
// backend copies them down once), checked to be a split of the even rows plus in-range
// destinations, and turned into the input-row -> output-row map and the per-group order here.
// 'map' entries are checked on the host by the CPU and on the device by CUDA (first bad element
// flagged by the kernel); both raise the message of throw_map_entry / throw_map_entry_at.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../core/op.h"
#include "hd.h"

namespace mvq {

// A dense host copy of t (t itself when it already is one).
inline Tensor merge_host_dense(const Tensor& t) { return t.device() == Device::CPU ? t.contiguous() : to_device(t, Device::CPU); }

// ---------------------------------------------------------------------------------------------
// 'map' entries (tome_source_update, tome_source_dense, unmerge, unmerge_backward)

// Whether a 'map' entry k names one of the lim current tokens (host and device).
MVQ_HD bool map_entry_ok(int64_t k, int64_t lim) { return k >= 0 && k < lim; }

[[noreturn]] inline void throw_map_entry(const char* op, int64_t lim, int64_t k) {
  throw_range(op, ": 'map' entries must be in [0, ", lim, "), got ", k);
}
// With the entry's position: element t of a [B, L] map.
[[noreturn]] inline void throw_map_entry_at(const char* op, int64_t lim, int64_t k, int64_t t, int64_t L) {
  throw_range(op, ": 'map' entries must be in [0, ", lim, "), got ", k, " at [", t / L, ", ", t % L, "]");
}

// Host check of count dense entries, in order (the first bad one is reported).
inline void check_map_entries(const char* op, const int64_t* ip, int64_t count, int64_t lim) {
  for (int64_t t = 0; t < count; ++t)
    if (!map_entry_ok(ip[t], lim)) throw_map_entry(op, lim, ip[t]);
}

// ---------------------------------------------------------------------------------------------
// tome_match(metric f32 [B, N, C], {r >= 0, class_token = false})

struct TomeMatchArgs {
  Tensor metric;  // dense (on the call's device)
  int64_t B = 0, N = 0, C = 0, Na = 0, Nb = 0;
  int64_t r = 0;  // r' = min(r, (N - class_token) // 2), clamped at 0
  bool cls = false;
};

inline TomeMatchArgs parse_tome_match(const OpArgs& a) {
  TomeMatchArgs m;
  m.metric = a.input(0, "metric", DType::F32, 3).contiguous();
  m.B = m.metric.size(0);
  m.N = m.metric.size(1);
  m.C = m.metric.size(2);
  const int64_t r_in = a.attrs.i("r");
  m.cls = a.attrs.b("class_token", false);
  MVQ_CHECK_RANGE(r_in >= 0, "tome_match: option 'r' must be >= 0, got ", r_in);
  const int64_t p = m.cls ? 1 : 0;
  m.r = std::max<int64_t>(0, std::min(r_in, (m.N - p) / 2));
  m.Na = (m.N + 1) / 2;
  m.Nb = m.N / 2;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Merge decisions: inputs first, first + 1, first + 2 = unm_idx, src_idx, dst_idx (int64 [B, *])

// Validated merge decisions for one call and the input-row -> output-row map they define.
struct MergeDecisions {
  int64_t B = 0, N = 0, Na = 0, Nb = 0, Nu = 0, r = 0;
  bool identity = false;      // r = 0: all three index tensors empty
  Tensor src;                 // dense host copy of src_idx [B, r] (the group order)
  std::vector<int64_t> dest;  // [B, N]: output row of each input row
  int64_t out_rows() const { return identity ? N : Nu + Nb; }
};

inline MergeDecisions parse_merge_decisions(const char* op, const OpArgs& a, size_t first, int64_t B, int64_t N) {
  const Tensor unm = merge_host_dense(a.input(first, "unm_idx", DType::I64, 2));
  const Tensor src = merge_host_dense(a.input(first + 1, "src_idx", DType::I64, 2));
  const Tensor dst = merge_host_dense(a.input(first + 2, "dst_idx", DType::I64, 2));
  MergeDecisions d;
  d.B = B;
  d.N = N;
  d.Na = (N + 1) / 2;
  d.Nb = N / 2;
  d.src = src;
  MVQ_CHECK_RANGE(unm.size(0) == B && src.size(0) == B && dst.size(0) == B, op, ": 'unm_idx', 'src_idx', 'dst_idx' must have batch ", B,
                  ", got ", unm.shape_str(), ", ", src.shape_str(), ", ", dst.shape_str());
  d.r = src.size(1);
  MVQ_CHECK_RANGE(dst.size(1) == d.r, op, ": 'dst_idx' ", dst.shape_str(), " must match 'src_idx' ", src.shape_str());
  d.dest.assign(static_cast<size_t>(B * N), 0);
  if (d.r == 0) {
    MVQ_CHECK_RANGE(unm.size(1) == 0, op, ": with empty 'src_idx' (r = 0, the identity merge) 'unm_idx' must be empty too, got ",
                    unm.shape_str());
    d.identity = true;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < N; ++i) d.dest[b * N + i] = i;
    return d;
  }
  d.Nu = unm.size(1);
  MVQ_CHECK_RANGE(d.Nu + d.r == d.Na, op, ": 'unm_idx' ", unm.shape_str(), " and 'src_idx' ", src.shape_str(),
                  " must split the ", d.Na, " even rows of a ", N, "-token input");
  const int64_t* up = unm.data<int64_t>();
  const int64_t* sp = src.data<int64_t>();
  const int64_t* dp = dst.data<int64_t>();
  std::vector<char> seen(static_cast<size_t>(d.Na));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(seen.begin(), seen.end(), 0);
    int64_t* de = d.dest.data() + b * N;
    for (int64_t p = 0; p < d.Nu; ++p) {
      const int64_t u = up[b * d.Nu + p];
      MVQ_CHECK_RANGE(u >= 0 && u < d.Na && !seen[u], op, ": 'unm_idx' and 'src_idx' must together be a permutation of [0, ", d.Na,
                      "); bad unm_idx[", b, ", ", p, "] = ", u);
      seen[u] = 1;
      de[2 * u] = p;
    }
    for (int64_t j = 0; j < d.r; ++j) {
      const int64_t u = sp[b * d.r + j], v = dp[b * d.r + j];
      MVQ_CHECK_RANGE(u >= 0 && u < d.Na && !seen[u], op, ": 'unm_idx' and 'src_idx' must together be a permutation of [0, ", d.Na,
                      "); bad src_idx[", b, ", ", j, "] = ", u);
      MVQ_CHECK_RANGE(v >= 0 && v < d.Nb, op, ": 'dst_idx' must be in [0, ", d.Nb, "), got dst_idx[", b, ", ", j, "] = ", v);
      seen[u] = 1;
      de[2 * u] = d.Nu + v;
    }
    for (int64_t v = 0; v < d.Nb; ++v) de[2 * v + 1] = d.Nu + v;
  }
  return d;
}

// Group order per output row, as the reference's scatter_reduce sums: the Bset row itself, then
// the merged A rows in src_idx order; unmerged rows alone (every row alone for the identity).
struct MergeGroups {
  std::vector<int64_t> first;  // [B * out]: the input row that starts each output row
  std::vector<int64_t> next;   // [B * N]: the next input row of the same output row, -1 at the end
};

inline MergeGroups merge_groups(const MergeDecisions& d) {
  const int64_t out = d.out_rows();
  MergeGroups g;
  g.first.assign(static_cast<size_t>(d.B * out), -1);
  g.next.assign(static_cast<size_t>(d.B * d.N), -1);
  std::vector<int64_t> last(static_cast<size_t>(out));
  for (int64_t b = 0; b < d.B; ++b) {
    int64_t* f = g.first.data() + b * out;
    int64_t* nx = g.next.data() + b * d.N;
    const int64_t* de = d.dest.data() + b * d.N;
    // Bset rows and unmerged rows start their groups.
    for (int64_t i = 0; i < d.N; ++i) {
      const bool merged_src = !d.identity && (i % 2 == 0) && de[i] >= d.Nu;
      if (!merged_src) {
        f[de[i]] = i;
        last[de[i]] = i;
      }
    }
    if (!d.identity) {
      const int64_t* sp = d.src.data<int64_t>() + b * d.r;
      for (int64_t j = 0; j < d.r; ++j) {
        const int64_t i = 2 * sp[j], o = de[i];
        nx[last[o]] = i;
        last[o] = i;
      }
    }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// tome_merge(x f32 [B, N, C], size f32 [B, N] | [B, N, 1] | null, unm_idx, src_idx, dst_idx) and
// tome_merge_backward(same inputs, g_x_new f32 [B, N', C])

struct TomeMergeArgs {
  Tensor x;     // as given (callers that read it make it dense)
  Tensor size;  // dense, on the call's device; undefined when absent (all ones)
  int size_rank = 2;  // rank of the size output: size's, 2 when absent
  int64_t B = 0, N = 0, C = 0;
  MergeDecisions d;
};

inline TomeMergeArgs parse_tome_merge(const OpArgs& a, const char* op) {
  TomeMergeArgs m;
  m.x = a.input(0, "x", DType::F32, 3);
  m.B = m.x.size(0);
  m.N = m.x.size(1);
  m.C = m.x.size(2);
  if (a.has_input(1)) {
    m.size = a.input(1, "size", DType::F32).contiguous();
    const Tensor& t = m.size;
    const bool ok = (t.dim() == 2 && t.size(0) == m.B && t.size(1) == m.N) ||
                    (t.dim() == 3 && t.size(0) == m.B && t.size(1) == m.N && t.size(2) == 1);
    MVQ_CHECK_RANGE(ok, op, ": 'size' must be float32 [", m.B, ", ", m.N, "] or [", m.B, ", ", m.N, ", 1], got ", t.shape_str());
    m.size_rank = t.dim();
  }
  m.d = parse_merge_decisions(op, a, 2, m.B, m.N);
  return m;
}

// g_x_new (input 5) of tome_merge_backward, dense: [B, N', C] with N' the merged row count.
inline Tensor parse_tome_merge_grad(const OpArgs& a, const TomeMergeArgs& m) {
  const int64_t out = m.d.out_rows();
  const Tensor gy = a.input(5, "g_x_new", DType::F32, 3).contiguous();
  MVQ_CHECK_RANGE(gy.size(0) == m.B && gy.size(1) == out && gy.size(2) == m.C, "tome_merge_backward: 'g_x_new' must be [", m.B, ", ",
                  out, ", ", m.C, "], got ", gy.shape_str());
  return gy;
}

// ---------------------------------------------------------------------------------------------
// tome_source_update(map int64 [B, L], unm_idx, src_idx, dst_idx, {n}) and
// tome_source_dense(map int64 [B, L], {n}). The 'map' entries (in [0, n)) are checked by the caller.

struct TomeSourceArgs {
  Tensor map;  // dense, on the call's device
  int64_t B = 0, L = 0, n = 0;
  MergeDecisions d;  // tome_source_update only
};

// The part both source ops share: 'map' (input 0, dense) and option 'n'.
inline TomeSourceArgs parse_source_map(const OpArgs& a) {
  TomeSourceArgs s;
  s.map = a.input(0, "map", DType::I64, 2).contiguous();
  s.B = s.map.size(0);
  s.L = s.map.size(1);
  s.n = a.attrs.i("n");
  return s;
}

inline TomeSourceArgs parse_tome_source_update(const OpArgs& a) {
  TomeSourceArgs s = parse_source_map(a);
  MVQ_CHECK_RANGE(s.n >= 1, "tome_source_update: option 'n' (tokens before the merge) must be >= 1, got ", s.n);
  // Every current token has at least one source position, so n <= L; checked (with the split the
  // decisions imply) before the [B, n] table of destinations is allocated.
  MVQ_CHECK_RANGE(s.n <= s.L, "tome_source_update: option 'n' (tokens before the merge) must be <= ", s.L,
                  " (the positions of 'map' ", s.map.shape_str(), "), got ", s.n);
  {
    const Tensor& unm = a.input(1, "unm_idx", DType::I64, 2);
    const Tensor& src = a.input(2, "src_idx", DType::I64, 2);
    MVQ_CHECK_RANGE(src.size(1) == 0 || unm.size(1) + src.size(1) == (s.n + 1) / 2, "tome_source_update: 'unm_idx' ", unm.shape_str(),
                    " and 'src_idx' ", src.shape_str(), " must split the ", (s.n + 1) / 2, " even rows of n = ", s.n, " tokens");
  }
  s.d = parse_merge_decisions("tome_source_update", a, 1, s.B, s.n);
  return s;
}

inline TomeSourceArgs parse_tome_source_dense(const OpArgs& a) {
  TomeSourceArgs s = parse_source_map(a);
  MVQ_CHECK_RANGE(s.n >= 0, "tome_source_dense: option 'n' must be >= 0, got ", s.n);
  return s;
}

// ---------------------------------------------------------------------------------------------
// unmerge(kept f32 [B, K, C], map int64 [B, L]) and unmerge_backward(g_full f32 [B, L, C], map, {k}).
// The 'map' entries (in [0, K)) are checked by the caller.

struct UnmergeArgs {
  Tensor x;    // kept (unmerge) or g_full (unmerge_backward), dense
  Tensor map;  // dense
  int64_t B = 0, K = 0, L = 0, C = 0;
};

inline UnmergeArgs parse_unmerge(const OpArgs& a) {
  UnmergeArgs u;
  u.x = a.input(0, "kept", DType::F32, 3).contiguous();
  u.map = a.input(1, "map", DType::I64, 2).contiguous();
  u.B = u.x.size(0);
  u.K = u.x.size(1);
  u.C = u.x.size(2);
  u.L = u.map.size(1);
  MVQ_CHECK_RANGE(u.map.size(0) == u.B, "unmerge: 'map' ", u.map.shape_str(), " must have batch ", u.B);
  return u;
}

inline UnmergeArgs parse_unmerge_backward(const OpArgs& a) {
  UnmergeArgs u;
  u.x = a.input(0, "g_full", DType::F32, 3).contiguous();
  u.map = a.input(1, "map", DType::I64, 2).contiguous();
  u.B = u.x.size(0);
  u.L = u.x.size(1);
  u.C = u.x.size(2);
  u.K = a.attrs.i("k");
  MVQ_CHECK_RANGE(u.map.size(0) == u.B && u.map.size(1) == u.L, "unmerge_backward: 'map' must be [", u.B, ", ", u.L, "], got ",
                  u.map.shape_str());
  MVQ_CHECK_RANGE(u.K >= 0, "unmerge_backward: option 'k' must be >= 0, got ", u.K);
  return u;
}

}  // namespace mvq
