// Attention math shared by the CPU and CUDA kernels: the key-visibility rule and the online
// (streaming) softmax update used by flash-style attention.
//
// Visibility of key j for a query at absolute position qpos (= q_offset + i):
//   j < kv_len                                   always required
//   j <= qpos                                    when causal
//   keep[j] != 0  or  qpos - j <= window         when a keep mask is given (docs/model.md, "MergeAR"):
//                                                duplicates stay visible only inside the recent window;
//                                                j = qpos is always visible since window >= 0.
//
// Online softmax over key blocks, one row: keep the running max m and the running sum l of
// exp(s - m). A new block with max m_blk: m' = max(m, m_blk), alpha = exp(m - m'), l' = l*alpha +
// sum exp(s - m'), o' = o*alpha + sum exp(s - m') v. At the end o /= l, lse = m + log(l).
// A row that has seen no visible key keeps m = -inf, l = 0: the result is o = 0, lse = -inf
// (never NaN: every exp of -inf - -inf is avoided by attn_rescale).
#pragma once
#include <cmath>
#include <cstdint>

#include "hd.h"

namespace mvq {

MVQ_HD bool attn_key_visible(int64_t qpos, int64_t j, int64_t kv_len, bool causal, bool has_keep, bool keep_j,
                             int64_t window) {
  if (j >= kv_len) return false;
  if (causal && j > qpos) return false;
  if (has_keep && !keep_j && qpos - j > window) return false;
  return true;
}

// exp(m_old - m_new) for the rescale of earlier partial sums; 0 when nothing was seen yet.
MVQ_HD float attn_rescale(float m_old, float m_new) {
  if (m_old == -INFINITY) return 0.f;
  return expf(m_old - m_new);
}

// Final 1/l factor (0 for a fully masked row) and the log-sum-exp (-inf for a fully masked row).
MVQ_HD float attn_inv_sum(float l) { return l > 0.f ? 1.f / l : 0.f; }
MVQ_HD float attn_lse(float m, float l) { return l > 0.f ? m + logf(l) : -INFINITY; }

// Softmax probability recomputed from the saved lse in the backward pass; 0 for masked entries
// and for fully masked rows (lse = -inf).
MVQ_HD float attn_prob(float s, float lse) {
  if (lse == -INFINITY || s == -INFINITY) return 0.f;
  return expf(s - lse);
}

// Plain parameters of one attention call: pointers plus strides in elements, so kernels read
// strided (permuted) views without copying. Optional inputs have null pointers.
struct AttnParams {
  int64_t B = 0, H = 0, N = 0, M = 0, hd = 0;
  const float* q = nullptr;
  int64_t qs[4] = {0, 0, 0, 0};  // strides of q over (b, h, n, d)
  const float* k = nullptr;
  int64_t ks[4] = {0, 0, 0, 0};
  const float* v = nullptr;
  int64_t vs[4] = {0, 0, 0, 0};
  const float* bias = nullptr;  // key_bias [B, M] or null
  int64_t bs[2] = {0, 0};
  const uint8_t* keep = nullptr;  // keep [B, M] or null
  int64_t kps[2] = {0, 0};
  float scale = 1.f;
  bool causal = false;
  int64_t q_offset = 0, window = 2, kv_len = 0;

  // Number of keys a query at row i (relative, 0-based) can possibly see: min(kv_len, qpos + 1).
  MVQ_HD int64_t key_limit(int64_t i) const {
    int64_t lim = kv_len;
    if (causal && q_offset + i + 1 < lim) lim = q_offset + i + 1;
    return lim < 0 ? 0 : lim;
  }
  // Reads keep[b, j] only for j < kv_len (<= M), so callers may probe keys past the end.
  MVQ_HD bool visible(int64_t b, int64_t i, int64_t j) const {
    const int64_t qpos = q_offset + i;
    if (j >= kv_len || (causal && j > qpos)) return false;
    return attn_key_visible(qpos, j, kv_len, causal, keep != nullptr, keep ? keep[b * kps[0] + j * kps[1]] != 0 : true, window);
  }
  MVQ_HD float key_bias(int64_t b, int64_t j) const { return bias ? bias[b * bs[0] + j * bs[1]] : 0.f; }
};

}  // namespace mvq
