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
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"

namespace mvq {
namespace {

// Validated merge decisions for one call and the input-row -> output-row map they define.
struct Decisions {
  int64_t B = 0, N = 0, Na = 0, Nb = 0, Nu = 0, r = 0;
  bool identity = false;
  std::vector<int64_t> dest;  // [B, N]: output row of each input row
  int64_t out_rows() const { return identity ? N : Nu + Nb; }
};

Decisions decisions(const char* op, const OpArgs& a, size_t first, int64_t B, int64_t N) {
  const Tensor unm = a.input(first, "unm_idx", DType::I64, 2).contiguous();
  const Tensor src = a.input(first + 1, "src_idx", DType::I64, 2).contiguous();
  const Tensor dst = a.input(first + 2, "dst_idx", DType::I64, 2).contiguous();
  Decisions d;
  d.B = B;
  d.N = N;
  d.Na = (N + 1) / 2;
  d.Nb = N / 2;
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

// ---------------------------------------------------------------------------------------------

std::vector<Tensor> op_tome_match(const OpArgs& a) {
  const Tensor m = a.input(0, "metric", DType::F32, 3).contiguous();
  const int64_t B = m.size(0), N = m.size(1), C = m.size(2);
  const int64_t r_in = a.attrs.i("r");
  const bool cls = a.attrs.b("class_token", false);
  MVQ_CHECK_RANGE(r_in >= 0, "tome_match: option 'r' must be >= 0, got ", r_in);
  const int64_t p = cls ? 1 : 0;
  const int64_t r = std::max<int64_t>(0, std::min(r_in, (N - p) / 2));
  const int64_t Na = (N + 1) / 2, Nb = N / 2;
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

// Reads size [B, N] or [B, N, 1] (absent -> ones) as a dense [B, N] vector.
std::vector<float> read_size(const char* op, const OpArgs& a, size_t i, int64_t B, int64_t N, int* rank) {
  std::vector<float> s(static_cast<size_t>(B * N), 1.0f);
  *rank = 2;
  if (!a.has_input(i)) return s;
  const Tensor t = a.input(i, "size", DType::F32).contiguous();
  const bool ok = (t.dim() == 2 && t.size(0) == B && t.size(1) == N) || (t.dim() == 3 && t.size(0) == B && t.size(1) == N && t.size(2) == 1);
  MVQ_CHECK_RANGE(ok, op, ": 'size' must be float32 [", B, ", ", N, "] or [", B, ", ", N, ", 1], got ", t.shape_str());
  *rank = t.dim();
  std::memcpy(s.data(), t.data<float>(), s.size() * sizeof(float));
  return s;
}

// Group sums per output row, accumulated in the reference's order: the Bset row itself, then the
// merged A rows in src_idx order; unmerged rows alone.
struct Groups {
  std::vector<int64_t> first;  // [B * out]: the input row that starts each output row
  std::vector<int64_t> next;   // [B * N]: the next input row of the same output row, -1 at the end
};
Groups groups(const Decisions& d, const OpArgs& a, size_t first_idx) {
  const int64_t out = d.out_rows();
  Groups g;
  g.first.assign(static_cast<size_t>(d.B * out), -1);
  g.next.assign(static_cast<size_t>(d.B * d.N), -1);
  std::vector<int64_t> last(static_cast<size_t>(out));
  const Tensor src = d.identity ? Tensor() : a.in[first_idx + 1].contiguous();
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
      const int64_t* sp = src.data<int64_t>() + b * d.r;
      for (int64_t j = 0; j < d.r; ++j) {
        const int64_t i = 2 * sp[j], o = de[i];
        nx[last[o]] = i;
        last[o] = i;
      }
    }
  }
  return g;
}

// tome_merge(x [B, N, C], size [B, N] | [B, N, 1] | null, unm_idx, src_idx, dst_idx)
//   -> [x_new [B, N', C], size_new (size's rank)]: x_new = sum(x*s) / sum(s) per group.
std::vector<Tensor> op_tome_merge(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32, 3).contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  int srank;
  const std::vector<float> s = read_size("tome_merge", a, 1, B, N, &srank);
  const Decisions d = decisions("tome_merge", a, 2, B, N);
  const Groups g = groups(d, a, 2);
  const int64_t out = d.out_rows();
  Tensor y = empty({B, out, C}, DType::F32);
  Tensor sz = srank == 3 ? empty({B, out, 1}, DType::F32) : empty({B, out}, DType::F32);
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
  const Tensor x = a.input(0, "x", DType::F32, 3);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  int srank;
  const std::vector<float> s = read_size("tome_merge_backward", a, 1, B, N, &srank);
  const Decisions d = decisions("tome_merge_backward", a, 2, B, N);
  const int64_t out = d.out_rows();
  const Tensor gy = a.input(5, "g_x_new", DType::F32, 3).contiguous();
  MVQ_CHECK_RANGE(gy.size(0) == B && gy.size(1) == out && gy.size(2) == C, "tome_merge_backward: 'g_x_new' must be [", B, ", ", out,
                  ", ", C, "], got ", gy.shape_str());
  std::vector<float> ssum(static_cast<size_t>(B * out), 0.0f);
  {
    const Groups g = groups(d, a, 2);
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
  const Tensor mp = a.input(0, "map", DType::I64, 2).contiguous();
  const int64_t B = mp.size(0), L = mp.size(1);
  const int64_t n = a.attrs.i("n");
  MVQ_CHECK_RANGE(n >= 1, "tome_source_update: option 'n' (tokens before the merge) must be >= 1, got ", n);
  // Every current token has at least one source position, so n <= L; checked (with the split the
  // decisions imply) before the [B, n] table of destinations is allocated.
  MVQ_CHECK_RANGE(n <= L, "tome_source_update: option 'n' (tokens before the merge) must be <= ", L,
                  " (the positions of 'map' ", mp.shape_str(), "), got ", n);
  {
    const Tensor unm = a.input(1, "unm_idx", DType::I64, 2);
    const Tensor src = a.input(2, "src_idx", DType::I64, 2);
    MVQ_CHECK_RANGE(src.size(1) == 0 || unm.size(1) + src.size(1) == (n + 1) / 2, "tome_source_update: 'unm_idx' ", unm.shape_str(),
                    " and 'src_idx' ", src.shape_str(), " must split the ", (n + 1) / 2, " even rows of n = ", n, " tokens");
  }
  const Decisions d = decisions("tome_source_update", a, 1, B, n);
  Tensor out = empty({B, L}, DType::I64);
  const int64_t* ip = mp.data<int64_t>();
  int64_t* op = out.data<int64_t>();
  for (int64_t t = 0; t < B * L; ++t) {
    const int64_t k = ip[t];
    MVQ_CHECK_RANGE(k >= 0 && k < n, "tome_source_update: 'map' entries must be in [0, ", n, "), got ", k, " at [", t / L, ", ", t % L,
                    "]");
    op[t] = d.dest[(t / L) * n + k];
  }
  return {out};
}

// tome_source_dense(map [B, L], {n}) -> f32 [B, n, L], 1 where map[b, l] = k.
std::vector<Tensor> op_tome_source_dense(const OpArgs& a) {
  const Tensor mp = a.input(0, "map", DType::I64, 2).contiguous();
  const int64_t B = mp.size(0), L = mp.size(1);
  const int64_t n = a.attrs.i("n");
  MVQ_CHECK_RANGE(n >= 0, "tome_source_dense: option 'n' must be >= 0, got ", n);
  Tensor out = zeros({B, n, L}, DType::F32);
  const int64_t* ip = mp.data<int64_t>();
  float* op = out.data<float>();
  for (int64_t t = 0; t < B * L; ++t) {
    const int64_t k = ip[t];
    MVQ_CHECK_RANGE(k >= 0 && k < n, "tome_source_dense: 'map' entries must be in [0, ", n, "), got ", k);
    op[((t / L) * n + k) * L + t % L] = 1.0f;
  }
  return {out};
}

// unmerge(kept [B, K, C], map [B, L]) -> [B, L, C], full[l] = kept[map[l]].
std::vector<Tensor> op_unmerge(const OpArgs& a) {
  const Tensor kept = a.input(0, "kept", DType::F32, 3).contiguous();
  const Tensor mp = a.input(1, "map", DType::I64, 2).contiguous();
  const int64_t B = kept.size(0), K = kept.size(1), C = kept.size(2), L = mp.size(1);
  MVQ_CHECK_RANGE(mp.size(0) == B, "unmerge: 'map' ", mp.shape_str(), " must have batch ", B);
  const int64_t* ip = mp.data<int64_t>();
  for (int64_t t = 0; t < B * L; ++t)
    MVQ_CHECK_RANGE(ip[t] >= 0 && ip[t] < K, "unmerge: 'map' entries must be in [0, ", K, "), got ", ip[t]);
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
  const Tensor g = a.input(0, "g_full", DType::F32, 3).contiguous();
  const Tensor mp = a.input(1, "map", DType::I64, 2).contiguous();
  const int64_t B = g.size(0), L = g.size(1), C = g.size(2);
  const int64_t K = a.attrs.i("k");
  MVQ_CHECK_RANGE(mp.size(0) == B && mp.size(1) == L, "unmerge_backward: 'map' must be [", B, ", ", L, "], got ", mp.shape_str());
  MVQ_CHECK_RANGE(K >= 0, "unmerge_backward: option 'k' must be >= 0, got ", K);
  const int64_t* ip = mp.data<int64_t>();
  for (int64_t t = 0; t < B * L; ++t)
    MVQ_CHECK_RANGE(ip[t] >= 0 && ip[t] < K, "unmerge_backward: 'map' entries must be in [0, ", K, "), got ", ip[t]);
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
