// Shared helpers for the CPU element-wise / reduction / indexing / layout ops:
// dim normalization, index validation, NumPy broadcasting, and a strided n-ary iterator that
// collapses dimensions and hands contiguous-or-strided inner rows to a kernel.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"

namespace mvq {
namespace cpu {

// Normalizes a possibly negative dim against rank nd; RangeError naming the op otherwise.
inline int norm_dim(const std::string& op, int64_t d, int nd, const char* what = "dim") {
  int64_t r = d < 0 ? d + nd : d;
  MVQ_CHECK_RANGE(r >= 0 && r < nd, op, ": option '", what, "' must be in [", -nd, ", ", nd - 1, "], got ", d);
  return static_cast<int>(r);
}

// Reads an int32/int64 index tensor (any layout) into int64, checking every value is in
// [0, limit). Throws RangeError naming the op and the first bad value before anything is written.
inline std::vector<int64_t> read_indices(const std::string& op, const char* name, const Tensor& idx, int64_t limit) {
  MVQ_CHECK_TYPE(idx.dtype() == DType::I64 || idx.dtype() == DType::I32, op, ": '", name,
                 "' must be int64 or int32, got ", dtype_name(idx.dtype()), " ", idx.shape_str());
  Tensor c = idx.contiguous();
  const int64_t n = c.numel();
  std::vector<int64_t> v(static_cast<size_t>(n));
  if (c.dtype() == DType::I64) {
    const int64_t* p = c.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  } else {
    const int32_t* p = c.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  }
  for (int64_t i = 0; i < n; ++i)
    if (v[i] < 0 || v[i] >= limit)
      throw_range(op, ": index ", v[i], " in '", name, "' (element ", i, ") is out of range [0, ", limit, ")");
  return v;
}

// NumPy broadcast of several shapes; RangeError naming the op when incompatible.
inline Shape broadcast_shapes(const std::string& op, const std::vector<Shape>& shapes) {
  size_t nd = 0;
  for (auto& s : shapes) nd = std::max(nd, s.size());
  Shape out(nd, 1);
  for (auto& s : shapes) {
    for (size_t i = 0; i < s.size(); ++i) {
      int64_t& o = out[nd - s.size() + i];
      const int64_t v = s[i];
      if (v == o || v == 1) continue;
      if (o == 1) {
        o = v;
        continue;
      }
      std::string all;
      for (size_t k = 0; k < shapes.size(); ++k) all += (k ? " and " : "") + shape_to_string(shapes[k]);
      throw_range(op, ": shapes ", all, " cannot be broadcast together");
    }
  }
  return out;
}

// Strides (in elements) with which `t` is read when broadcast to `out` (0 on broadcast dims).
inline Shape broadcast_strides(const Tensor& t, const Shape& out) {
  const size_t nd = out.size(), td = t.shape().size();
  Shape st(nd, 0);
  for (size_t i = 0; i < td; ++i) {
    const size_t o = nd - td + i;
    st[o] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  }
  return st;
}

// An iteration space of shape `shape` over up to 4 operands, each with its own element strides.
// make() drops size-1 dims and merges dims that are jointly contiguous, so a same-shape dense op
// becomes one row and a per-channel bias on NCHW becomes [B, C, HW] with strides [0, 1, 0].
struct NdIter {
  static constexpr int kMax = 4;
  Shape shape;
  int nops = 0;
  std::array<Shape, kMax> st;
  int64_t numel = 0;

  static NdIter make(const Shape& shape, const std::vector<Shape>& strides) {
    NdIter it;
    it.nops = static_cast<int>(strides.size());
    it.numel = 1;
    for (int64_t s : shape) it.numel *= s;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] == 1) continue;
      it.shape.push_back(shape[d]);
      for (int k = 0; k < it.nops; ++k) it.st[k].push_back(strides[k][d]);
    }
    if (it.shape.empty()) {
      it.shape.push_back(1);
      for (int k = 0; k < it.nops; ++k) it.st[k].push_back(0);
    }
    // Merge dim i into dim i+1 (row-major) when every operand allows it.
    Shape sh;
    std::array<Shape, kMax> ss;
    sh.push_back(it.shape[0]);
    for (int k = 0; k < it.nops; ++k) ss[k].push_back(it.st[k][0]);
    for (size_t d = 1; d < it.shape.size(); ++d) {
      bool ok = true;
      for (int k = 0; k < it.nops; ++k)
        if (ss[k].back() != it.st[k][d] * it.shape[d]) ok = false;
      if (ok) {
        sh.back() *= it.shape[d];
        for (int k = 0; k < it.nops; ++k) ss[k].back() = it.st[k][d];
      } else {
        sh.push_back(it.shape[d]);
        for (int k = 0; k < it.nops; ++k) ss[k].push_back(it.st[k][d]);
      }
    }
    it.shape = sh;
    it.st = ss;
    return it;
  }
  int nd() const { return static_cast<int>(shape.size()); }
  int64_t inner() const { return shape.back(); }
  int64_t inner_stride(int k) const { return st[k].back(); }

  // Calls fn(offs, n) for every inner row: offs[k] is operand k's element offset of the row start.
  // Rows are spread over the thread pool in chunks of about `grain` elements.
  template <class F>
  void for_rows(int64_t grain, F fn) const {
    if (numel == 0) return;
    const int64_t n = inner();
    const int64_t rows = numel / n;
    const int nd1 = nd() - 1;
    const int64_t grain_rows = std::max<int64_t>(1, grain / std::max<int64_t>(n, 1));
    parallel_for(rows, grain_rows, [&](int64_t b, int64_t e) {
      std::vector<int64_t> coord(static_cast<size_t>(std::max(nd1, 1)), 0);
      std::array<int64_t, kMax> offs{};
      int64_t r = b;
      for (int d = nd1 - 1; d >= 0; --d) {
        coord[d] = r % shape[d];
        r /= shape[d];
        for (int k = 0; k < nops; ++k) offs[k] += coord[d] * st[k][d];
      }
      for (int64_t row = b; row < e; ++row) {
        fn(offs.data(), n);
        for (int d = nd1 - 1; d >= 0; --d) {
          for (int k = 0; k < nops; ++k) offs[k] += st[k][d];
          if (++coord[d] < shape[d]) break;
          for (int k = 0; k < nops; ++k) offs[k] -= coord[d] * st[k][d];
          coord[d] = 0;
        }
      }
    });
  }
};

// Dense row-major copy of any strided CPU view (negative and zero strides allowed). Defined in
// layout.cc; blocks 2-D transposes for cache reuse.
Tensor materialize(const Tensor& view);
// Copies src into the (possibly strided) dst view of the same shape and dtype.
void strided_copy(const Tensor& dst, const Tensor& src);
// A stride-0 view of x broadcast to `shape` (RangeError naming op when incompatible).
Tensor broadcast_view(const std::string& op, const Tensor& x, const Shape& shape);

// Sum of float32 x over the dims where reduce[d] is true, accumulated in float64 (reduce.cc).
// The result keeps the reduced dims as size 1.
Tensor reduce_sum_keepdim(const Tensor& x, const std::vector<bool>& reduce);

}  // namespace cpu
}  // namespace mvq
