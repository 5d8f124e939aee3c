// Host-side argument checks for the LFQ ops, shared by the CPU (native/cpu/lfq.cc) and CUDA
// (native/cuda/lfq.cu) implementations so both accept and reject exactly the same calls with the
// same messages. Also the bit layout of z and the entropy's bit split, which both backends' kernels
// read (plain structs, passed by value to CUDA kernels).
//
// Value checks that read the data (index ranges of lfq_indices_to_codes / lfq_factorize /
// lfq_unfactorize) stay with the implementations.
#pragma once
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "../core/op.h"
#include "hd.h"

namespace mvq {

// Codes and indices are int64: an index has at most 62 bits (2^bits must fit in an int64).
constexpr int kLfqMaxIndexBits = 62;
// The entropy ops hold 2^d code probabilities (avg_probs): d in [1, 24].
constexpr int kLfqMaxEntropyBits = 24;

// The channel (bit) axis `dim` of a tensor; every other axis is a row. In a contiguous tensor,
// row n = p * post + q and bit j sit at (p * d + j) * post + q.
struct LfqLayout {
  int64_t pre = 1, d = 1, post = 1;
  int dim = 0;
  MVQ_HD int64_t rows() const { return pre * post; }
  // Element offset of (row, bit j) in a contiguous tensor.
  MVQ_HD int64_t at(int64_t row, int64_t j) const {
    const int64_t p = row / post, q = row % post;
    return (p * d + j) * post + q;
  }
  // Offset of (row, bit 0); bit j is at base(row) + j * post.
  MVQ_HD int64_t base(int64_t row) const { return post == 1 ? row * d : at(row, 0); }
};

// The layout of shape `s` with the bit axis at `dim` (already normalized to [0, rank)).
inline LfqLayout lfq_layout_of_shape(const Shape& s, int dim) {
  LfqLayout L;
  L.dim = dim;
  for (int i = 0; i < static_cast<int>(s.size()); ++i) {
    if (i < dim) L.pre *= s[i];
    else if (i > dim) L.post *= s[i];
  }
  L.d = s[dim];
  return L;
}

// z's layout for option 'dim' (negative counts from the end).
inline LfqLayout lfq_layout(const char* op, const Tensor& z, int64_t dim_attr) {
  const int r = z.dim();
  MVQ_CHECK_TYPE(r >= 1, op, ": 'z' must have at least one dimension, got ", z.shape_str());
  const int64_t dim = dim_attr < 0 ? dim_attr + r : dim_attr;
  MVQ_CHECK_RANGE(dim >= 0 && dim < r, op, ": option 'dim' must be in [", -r, ", ", r - 1, "] for 'z' ", z.shape_str(), ", got ",
                  dim_attr);
  return lfq_layout_of_shape(z.shape(), static_cast<int>(dim));
}

inline Shape lfq_without_dim(const Shape& s, int dim) {
  Shape o;
  for (int i = 0; i < static_cast<int>(s.size()); ++i)
    if (i != dim) o.push_back(s[i]);
  return o;
}

// ---------------------------------------------------------------------------------------------
// lfq_quantize(z f32, {dim = 1}) -> [codes (z's shape), indices int64 (z's shape without dim)]

struct LfqQuantizeArgs {
  Tensor z;  // dense, on the call's device
  LfqLayout L;
  Shape index_shape;
};

inline LfqQuantizeArgs parse_lfq_quantize(const OpArgs& a) {
  LfqQuantizeArgs q;
  q.z = a.input(0, "z", DType::F32).contiguous();
  q.L = lfq_layout("lfq_quantize", q.z, a.attrs.i("dim", 1));
  MVQ_CHECK_RANGE(q.L.d <= kLfqMaxIndexBits, "lfq_quantize: the channel dimension of 'z' must be at most ", kLfqMaxIndexBits,
                  " bits, got ", q.L.d);
  q.index_shape = lfq_without_dim(q.z.shape(), q.L.dim);
  return q;
}

// ---------------------------------------------------------------------------------------------
// lfq_indices_to_codes(indices int64, {bits in [1, 62], dim = 1}): the bit axis inserted at `dim`
// of the output (-1 appends it). The caller checks the indices are in [0, 2^bits).

struct LfqIndicesToCodesArgs {
  Tensor indices;  // dense
  int64_t bits = 0;
  Shape out_shape;
  LfqLayout L;  // of the output
};

inline LfqIndicesToCodesArgs parse_lfq_indices_to_codes(const OpArgs& a) {
  LfqIndicesToCodesArgs c;
  c.indices = a.input(0, "indices", DType::I64).contiguous();
  c.bits = a.attrs.i("bits");
  MVQ_CHECK_RANGE(c.bits >= 1 && c.bits <= kLfqMaxIndexBits, "lfq_indices_to_codes: option 'bits' must be in [1, ", kLfqMaxIndexBits,
                  "], got ", c.bits);
  const int orank = c.indices.dim() + 1;
  const int64_t dim_in = a.attrs.i("dim", 1);
  const int64_t dim = dim_in < 0 ? dim_in + orank : dim_in;
  MVQ_CHECK_RANGE(dim >= 0 && dim < orank, "lfq_indices_to_codes: option 'dim' must be in [", -orank, ", ", orank - 1, "] for indices ",
                  c.indices.shape_str(), ", got ", dim_in);
  c.out_shape = c.indices.shape();
  c.out_shape.insert(c.out_shape.begin() + dim, c.bits);
  c.L = lfq_layout_of_shape(c.out_shape, static_cast<int>(dim));
  return c;
}

// ---------------------------------------------------------------------------------------------
// lfq_factorize(indices, {bits: [b0, b1]}) and lfq_unfactorize(pre, post, {bits: [b0, b1]}):
// b0, b1 >= 1 with b0 + b1 <= 62. The caller checks the index values.

inline std::pair<int64_t, int64_t> lfq_factor_bits(const char* op, const Attrs& at) {
  const std::vector<int64_t> b = at.ints("bits");
  MVQ_CHECK_TYPE(b.size() == 2, op, ": option 'bits' must be [b0, b1], got ", b.size(), " entries");
  MVQ_CHECK_RANGE(b[0] >= 1 && b[1] >= 1 && b[0] + b[1] <= kLfqMaxIndexBits, op, ": option 'bits' must be positive with b0 + b1 <= ",
                  kLfqMaxIndexBits, ", got [", b[0], ", ", b[1], "]");
  return {b[0], b[1]};
}

struct LfqUnfactorizeArgs {
  Tensor pre, post;  // dense, same shape
  int64_t b0 = 0, b1 = 0;
};

inline LfqUnfactorizeArgs parse_lfq_unfactorize(const OpArgs& a) {
  LfqUnfactorizeArgs u;
  u.pre = a.input(0, "pre", DType::I64).contiguous();
  u.post = a.input(1, "post", DType::I64).contiguous();
  std::tie(u.b0, u.b1) = lfq_factor_bits("lfq_unfactorize", a.attrs);
  MVQ_CHECK_RANGE(u.pre.shape() == u.post.shape(), "lfq_unfactorize: 'pre' ", u.pre.shape_str(), " and 'post' ", u.post.shape_str(),
                  " must have the same shape");
  return u;
}

// ---------------------------------------------------------------------------------------------
// lfq_entropy(z, {temperature = 0.01, dim = -1}) and
// lfq_entropy_backward(z, g_per_sample [], g_codebook [], avg_probs? [2^d], {temperature, dim})

// The rows, the temperature's scale and the split of the d bits into a low and a high half, whose
// probability tables (2^lo and 2^hi entries, padded to multiples of 16) factor the 2^d codes.
struct LfqEntropyPlan {
  LfqLayout L;
  double scale = 0;        // a = scale * z = 4 z / T
  int lo = 0, hi = 0;      // low / high bit counts
  int64_t La = 0, Hb = 0;  // 2^lo, 2^hi
  int64_t Lp = 0, Hp = 0;  // their padded widths (dense tables)
};

struct LfqEntropyArgs {
  Tensor z;  // dense, on the call's device
  double T = 0;
  LfqEntropyPlan P;
};

inline LfqEntropyArgs parse_lfq_entropy(const OpArgs& a, const char* op) {
  LfqEntropyArgs e;
  e.z = a.input(0, "z", DType::F32).contiguous();
  LfqEntropyPlan& P = e.P;
  P.L = lfq_layout(op, e.z, a.attrs.i("dim", -1));
  e.T = a.attrs.f("temperature", 0.01);
  MVQ_CHECK_RANGE(P.L.d >= 1 && P.L.d <= kLfqMaxEntropyBits, op, ": the bit dimension of 'z' must be in [1, ", kLfqMaxEntropyBits,
                  "], got ", P.L.d);
  MVQ_CHECK_RANGE(P.L.rows() >= 1, op, ": 'z' must have at least one row");
  MVQ_CHECK_RANGE(e.T > 0 && std::isfinite(e.T), op, ": option 'temperature' must be positive, got ", e.T);
  P.scale = 4.0 / e.T;
  P.lo = static_cast<int>(P.L.d / 2);
  P.hi = static_cast<int>(P.L.d - P.lo);
  P.La = int64_t(1) << P.lo;
  P.Hb = int64_t(1) << P.hi;
  P.Lp = round_up(P.La, 16);
  P.Hp = round_up(P.Hb, 16);
  return e;
}

// The backward's other inputs (dense, on the call's device); avg_probs undefined when absent.
struct LfqEntropyGrads {
  Tensor g_per_sample, g_codebook, avg_probs;
};

inline LfqEntropyGrads parse_lfq_entropy_grads(const OpArgs& a, const LfqEntropyPlan& P) {
  LfqEntropyGrads g;
  g.g_per_sample = a.input(1, "g_per_sample", DType::F32).contiguous();
  g.g_codebook = a.input(2, "g_codebook", DType::F32).contiguous();
  MVQ_CHECK_RANGE(g.g_per_sample.numel() == 1 && g.g_codebook.numel() == 1,
                  "lfq_entropy_backward: 'g_per_sample' and 'g_codebook' must be scalars, got ", g.g_per_sample.shape_str(), " and ",
                  g.g_codebook.shape_str());
  if (a.has_input(3)) {
    g.avg_probs = a.input(3, "avg_probs", DType::F32).contiguous();
    MVQ_CHECK_RANGE(g.avg_probs.numel() == (int64_t(1) << P.L.d), "lfq_entropy_backward: 'avg_probs' must have 2^", P.L.d,
                    " elements, got ", g.avg_probs.shape_str());
  }
  return g;
}

}  // namespace mvq
