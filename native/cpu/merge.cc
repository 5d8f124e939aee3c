// ToMe bipartite soft matching, size-weighted merging, compact source tracking and unmerging.
//
// Decisions (tome_match), for metric [B, N, C] and r' = min(r, (N - p) // 2), p = class_token:
//   A = even rows (Na = ceil(N/2)), Bset = odd rows (Nb = N/2); rows normalized as x / ||x||
//   (norm accumulated in double, rounded to fp32, fp32 division: the reference's fp32 result);
//   score(i, j) = <a_i, b_j> accumulated in double over 8 interleaved partial sums (lane k % 8,
//   combined as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))) and rounded to fp32. With a class token A
//   row 0 scores -inf. best_i = max_j score, dst_i = the lowest j attaining it. A rows are
//   stable-sorted by best descending (ties: lower index first); the first r' are merged (src_idx,
//   with dst_idx = their dst), the rest are unmerged (unm_idx), re-sorted ascending with a class
//   token. Indices are positions within A / Bset, as in the reference's gather formulation.
//   r' = 0 is the reference's do_nothing: all three index tensors are empty ([B, 0]) and every
//   op below treats that as the identity merge.
// Merged order: [unmerged A rows (unm_idx order)..., all Bset rows...]. Input row i goes to
//   even i = 2u: position of u in unm_idx, or Nu + dst_idx[j] when u = src_idx[j];
//   odd  i = 2v + 1: Nu + v                                       (Nu = Na - r')
// Compact source: map [B, L] int64, map[b, l] = the current token holding full position l.
// Argument checks, the decisions' row map and group order: kernels/merge_args.h (shared with CUDA).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"
#include "../kernels/merge_args.h"

namespace mvq {
namespace {

std::vector<Tensor> op_tome_match(const OpArgs& a) {
  const TomeMatchArgs ma = parse_tome_match(a);
  const Tensor& m = ma.metric;
  const int64_t B = ma.B, N = ma.N, C = ma.C, r = ma.r, Na = ma.Na, Nb = ma.Nb;
  const bool cls = ma.cls;
  if (r == 0) return {empty({B, 0}, DType::I64), empty({B, 0}, DType::I64), empty({B, 0}, DType::I64)};
  const int64_t Nu = Na - r;
  Tensor unm = empty({B, Nu}, DType::I64), src = empty({B, r}, DType::I64), dst = empty({B, r}, DType::I64);

  // Normalized rows, fp32.
  std::vector<float> xn(static_cast<size_t>(B * N * C));
  const float* mp = m.data<float>();
  parallel_for(B * N, 64, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const float* x = mp + row * C;
      double s = 0.0;
      for (int64_t k = 0; k < C; ++k) s += static_cast<double>(x[k]) * x[k];
      const float nrm = static_cast<float>(std::sqrt(s));
      for (int64_t k = 0; k < C; ++k) xn[row * C + k] = x[k] / nrm;
    }
  });
  std::vector<float> best(static_cast<size_t>(B * Na));
  std::vector<int64_t> arg(static_cast<size_t>(B * Na));
  parallel_for(B * Na, 4, [&](int64_t b0, int64_t e0) {
    for (int64_t t = b0; t < e0; ++t) {
      const int64_t b = t / Na, i = t % Na;
      if (cls && i == 0) {
        best[t] = -std::numeric_limits<float>::infinity();
        arg[t] = 0;
        continue;
      }
      const float* ai = xn.data() + (b * N + 2 * i) * C;
      float bv = 0.0f;
      int64_t bj = -1;
      for (int64_t j = 0; j < Nb; ++j) {
        const float* bj_row = xn.data() + (b * N + 2 * j + 1) * C;
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 8 <= C; k += 8)
          for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(ai[k + l]) * static_cast<double>(bj_row[k + l]);
        for (; k < C; ++k) acc[k % 8] += static_cast<double>(ai[k]) * static_cast<double>(bj_row[k]);
        const float sc = static_cast<float>(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
        // First maximum wins; NaN scores (zero-norm rows) never win over a number.
        if (bj < 0 || sc > bv || (std::isnan(bv) && !std::isnan(sc))) {
          bv = sc;
          bj = j;
        }
      }
      best[t] = bv;
      arg[t] = bj;
    }
  });
  int64_t* up = unm.data<int64_t>();
  int64_t* sp = src.data<int64_t>();
  int64_t* dp = dst.data<int64_t>();
  std::vector<int64_t> order(static_cast<size_t>(Na));
  for (int64_t b = 0; b < B; ++b) {
    const float* bb = best.data() + b * Na;
    std::iota(order.begin(), order.end(), 0);
    // NaN sorts last (treated as smaller than everything).
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      const float fx = bb[x], fy = bb[y];
      if (std::isnan(fy)) return !std::isnan(fx);
      if (std::isnan(fx)) return false;
      return fx > fy;
    });
    for (int64_t j = 0; j < r; ++j) {
      sp[b * r + j] = order[j];
      dp[b * r + j] = arg[b * Na + order[j]];
    }
    if (cls) std::sort(order.begin() + r, order.end());
    for (int64_t p2 = 0; p2 < Nu; ++p2) up[b * Nu + p2] = order[r + p2];
  }
  return {unm, src, dst};
}

// size as a dense [B, N] vector (ones when absent).
std::vector<float> size_values(const TomeMergeArgs& m) {
  std::vector<float> s(static_cast<size_t>(m.B * m.N), 1.0f);
  if (m.size.defined()) std::memcpy(s.data(), m.size.data<float>(), s.size() * sizeof(float));
  return s;
}

// tome_merge(x [B, N, C], size [B, N] | [B, N, 1] | null, unm_idx, src_idx, dst_idx)
//   -> [x_new [B, N', C], size_new (size's rank)]: x_new = sum(x*s) / sum(s) per group.
std::vector<Tensor> op_tome_merge(const OpArgs& a) {
  const TomeMergeArgs m = parse_tome_merge(a, "tome_merge");
  const Tensor x = m.x.contiguous();
  const int64_t B = m.B, N = m.N, C = m.C;
  const std::vector<float> s = size_values(m);
  const MergeDecisions& d = m.d;
  const MergeGroups g = merge_groups(d);
  const int64_t out = d.out_rows();
  Tensor y = empty({B, out, C}, DType::F32);
  Tensor sz = m.size_rank == 3 ? empty({B, out, 1}, DType::F32) : empty({B, out}, DType::F32);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  float* szp = sz.data<float>();
  parallel_for(B * out, 8, [&](int64_t b0, int64_t e0) {
    std::vector<float> acc(static_cast<size_t>(C));
    for (int64_t t = b0; t < e0; ++t) {
      const int64_t b = t / out;
      int64_t i = g.first[t];
      float ssum = s[b * N + i];
      for (int64_t k = 0; k < C; ++k) acc[k] = xp[(b * N + i) * C + k] * ssum;
      for (i = g.next[b * N + i]; i >= 0; i = g.next[b * N + i]) {
        const float si = s[b * N + i];
        ssum += si;
        for (int64_t k = 0; k < C; ++k) acc[k] += xp[(b * N + i) * C + k] * si;
      }
      for (int64_t k = 0; k < C; ++k) yp[t * C + k] = acc[k] / ssum;
      szp[t] = ssum;
    }
  });
  return {y, sz};
}

// tome_merge_backward(x, size, unm_idx, src_idx, dst_idx, g_x_new) -> [g_x]:
// g_x[i] = g_x_new[o(i)] * s_i / sum(s over o(i)).
std::vector<Tensor> op_tome_merge_backward(const OpArgs& a) {
  const TomeMergeArgs m = parse_tome_merge(a, "tome_merge_backward");
  const int64_t B = m.B, N = m.N, C = m.C;
  const std::vector<float> s = size_values(m);
  const MergeDecisions& d = m.d;
  const int64_t out = d.out_rows();
  const Tensor gy = parse_tome_merge_grad(a, m);
  std::vector<float> ssum(static_cast<size_t>(B * out), 0.0f);
  {
    const MergeGroups g = merge_groups(d);
    for (int64_t t = 0; t < B * out; ++t) {
      const int64_t b = t / out;
      float acc = 0.0f;
      for (int64_t i = g.first[t]; i >= 0; i = g.next[b * N + i]) acc += s[b * N + i];
      ssum[t] = acc;
    }
  }
  Tensor gx = empty({B, N, C}, DType::F32);
  const float* gyp = gy.data<float>();
  float* gxp = gx.data<float>();
  parallel_for(B * N, 16, [&](int64_t b0, int64_t e0) {
    for (int64_t t = b0; t < e0; ++t) {
      const int64_t b = t / N;
      const int64_t o = b * out + d.dest[t];
      const float w = s[t] / ssum[o];
      for (int64_t k = 0; k < C; ++k) gxp[t * C + k] = gyp[o * C + k] * w;
    }
  });
  return {gx};
}

// tome_source_update(map [B, L], unm_idx, src_idx, dst_idx, {n}) -> new map.
std::vector<Tensor> op_tome_source_update(const OpArgs& a) {
  const TomeSourceArgs sa = parse_tome_source_update(a);
  const Tensor& mp = sa.map;
  const int64_t B = sa.B, L = sa.L, n = sa.n;
  const MergeDecisions& d = sa.d;
  Tensor out = empty({B, L}, DType::I64);
  const int64_t* ip = mp.data<int64_t>();
  int64_t* op = out.data<int64_t>();
  for (int64_t t = 0; t < B * L; ++t) {
    const int64_t k = ip[t];
    if (!map_entry_ok(k, n)) throw_map_entry_at("tome_source_update", n, k, t, L);
    op[t] = d.dest[(t / L) * n + k];
  }
  return {out};
}

// tome_source_dense(map [B, L], {n}) -> f32 [B, n, L], 1 where map[b, l] = k.
std::vector<Tensor> op_tome_source_dense(const OpArgs& a) {
  const TomeSourceArgs sa = parse_tome_source_dense(a);
  const Tensor& mp = sa.map;
  const int64_t B = sa.B, L = sa.L, n = sa.n;
  Tensor out = zeros({B, n, L}, DType::F32);
  const int64_t* ip = mp.data<int64_t>();
  float* op = out.data<float>();
  for (int64_t t = 0; t < B * L; ++t) {
    const int64_t k = ip[t];
    if (!map_entry_ok(k, n)) throw_map_entry("tome_source_dense", n, k);
    op[((t / L) * n + k) * L + t % L] = 1.0f;
  }
  return {out};
}

// unmerge(kept [B, K, C], map [B, L]) -> [B, L, C], full[l] = kept[map[l]].
std::vector<Tensor> op_unmerge(const OpArgs& a) {
  const UnmergeArgs u = parse_unmerge(a);
  const Tensor& kept = u.x;
  const int64_t B = u.B, K = u.K, C = u.C, L = u.L;
  const int64_t* ip = u.map.data<int64_t>();
  check_map_entries("unmerge", ip, B * L, K);
  Tensor out = empty({B, L, C}, DType::F32);
  const float* kp = kept.data<float>();
  float* op = out.data<float>();
  parallel_for(B * L, 64, [&](int64_t b0, int64_t e0) {
    for (int64_t t = b0; t < e0; ++t) std::memcpy(op + t * C, kp + ((t / L) * K + ip[t]) * C, C * sizeof(float));
  });
  return {out};
}

// unmerge_backward(g_full [B, L, C], map [B, L], {k}) -> [g_kept [B, k, C]] (sum over positions,
// in position order).
std::vector<Tensor> op_unmerge_backward(const OpArgs& a) {
  const UnmergeArgs u = parse_unmerge_backward(a);
  const Tensor& g = u.x;
  const int64_t B = u.B, L = u.L, C = u.C, K = u.K;
  const int64_t* ip = u.map.data<int64_t>();
  check_map_entries("unmerge_backward", ip, B * L, K);
  Tensor out = zeros({B, K, C}, DType::F32);
  const float* gp = g.data<float>();
  float* op = out.data<float>();
  parallel_for(B, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t b = b0; b < e0; ++b)
      for (int64_t l = 0; l < L; ++l) {
        float* dstp = op + (b * K + ip[b * L + l]) * C;
        const float* srcp = gp + (b * L + l) * C;
        for (int64_t c = 0; c < C; ++c) dstp[c] += srcp[c];
      }
  });
  return {out};
}

}  // namespace

MVQ_REGISTER_OP("tome_match", Device::CPU, op_tome_match);
MVQ_OP_ATTRS("tome_match", "class_token", "r");
MVQ_REGISTER_OP("tome_merge", Device::CPU, op_tome_merge);
MVQ_REGISTER_OP("tome_merge_backward", Device::CPU, op_tome_merge_backward);
MVQ_REGISTER_OP("tome_source_update", Device::CPU, op_tome_source_update);
MVQ_OP_ATTRS("tome_source_update", "n");
MVQ_REGISTER_OP("tome_source_dense", Device::CPU, op_tome_source_dense);
MVQ_OP_ATTRS("tome_source_dense", "n");
MVQ_REGISTER_OP("unmerge", Device::CPU, op_unmerge);
MVQ_REGISTER_OP("unmerge_backward", Device::CPU, op_unmerge_backward);
MVQ_OP_ATTRS("unmerge_backward", "k");

}  // namespace mvq
