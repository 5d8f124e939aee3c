// Pooling ops: max_pool2d (torch semantics, floor mode, no dilation) and its backward.
//
// max_pool2d returns the maxima and, per output, the flat index ih * W + iw of the chosen input
// inside its [H, W] plane (int64, as torch's return_indices). The window is scanned row by row and
// a value replaces the running maximum only when it is strictly greater (so ties keep the first
// maximum) or NaN (so a NaN propagates; the last NaN of a window is the one chosen). Padding never
// wins: the running maximum starts at -inf with the index of the window's first in-plane element.
// The backward routes each output gradient to the recorded index (summing where windows overlap).
// Both ops run over the B*C planes on the thread pool; a plane is handled by one task, so the
// backward's accumulation never races.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops_common.h"

namespace mvq {
namespace cpu {
namespace {

// About this many input reads per task.
constexpr int64_t kGrain = 1 << 15;

// An integer or [h, w] option, each entry >= min.
std::vector<int64_t> pair_option(const OpArgs& a, const char* k, const std::vector<int64_t>& dflt, int64_t min) {
  std::vector<int64_t> v = a.attrs.ints(k, dflt);
  MVQ_CHECK_TYPE(v.size() == 1 || v.size() == 2, a.op, ": option '", k, "' must be an integer or [h, w], got ",
                 v.size(), " values");
  if (v.size() == 1) v.push_back(v[0]);
  MVQ_CHECK_RANGE(v[0] >= min && v[1] >= min, a.op, ": option '", k, "' must be >= ", min, ", got [", v[0], ", ", v[1],
                  "]");
  return v;
}

struct PoolGeom {
  int64_t planes, H, W;
  int64_t kh, kw, sh, sw, ph, pw;
  int64_t Ho, Wo;
};

PoolGeom make_geom(const OpArgs& a, const Tensor& x) {
  MVQ_CHECK_TYPE(x.dim() == 4, a.op, ": 'x' must be float32 [B, C, H, W], got ", x.shape_str());
  MVQ_CHECK_RANGE(x.size(2) >= 1 && x.size(3) >= 1, a.op, ": 'x' must have H >= 1 and W >= 1, got ", x.shape_str());
  MVQ_CHECK_TYPE(a.attrs.has("kernel"), a.op, ": option 'kernel' (an integer or [h, w]) is required");
  const std::vector<int64_t> k = pair_option(a, "kernel", {}, 1);
  const std::vector<int64_t> s = pair_option(a, "stride", k, 1);  // torch: stride defaults to the kernel
  const std::vector<int64_t> p = pair_option(a, "padding", {0}, 0);
  MVQ_CHECK_RANGE(2 * p[0] <= k[0] && 2 * p[1] <= k[1], a.op, ": option 'padding' must be at most half the kernel ([",
                  k[0] / 2, ", ", k[1] / 2, "]), got [", p[0], ", ", p[1], "]");
  PoolGeom g;
  g.planes = x.size(0) * x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.kh = k[0];
  g.kw = k[1];
  g.sh = s[0];
  g.sw = s[1];
  g.ph = p[0];
  g.pw = p[1];
  const int64_t eh = g.H + 2 * g.ph - g.kh, ew = g.W + 2 * g.pw - g.kw;
  MVQ_CHECK_RANGE(eh >= 0 && ew >= 0, a.op, ": kernel ", g.kh, "x", g.kw, " is larger than the padded input ",
                  g.H + 2 * g.ph, "x", g.W + 2 * g.pw, " (x ", x.shape_str(), ")");
  g.Ho = eh / g.sh + 1;
  g.Wo = ew / g.sw + 1;
  return g;
}

// One plane: y and idx of [Ho, Wo] from x [H, W].
void pool_plane(const PoolGeom& g, const float* x, float* y, int64_t* idx) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t h0 = std::max<int64_t>(oh * g.sh - g.ph, 0);
    const int64_t h1 = std::min<int64_t>(oh * g.sh - g.ph + g.kh, g.H);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t w0 = std::max<int64_t>(ow * g.sw - g.pw, 0);
      const int64_t w1 = std::min<int64_t>(ow * g.sw - g.pw + g.kw, g.W);
      float best = -std::numeric_limits<float>::infinity();
      int64_t at = h0 * g.W + w0;
      for (int64_t ih = h0; ih < h1; ++ih) {
        const float* row = x + ih * g.W;
        for (int64_t iw = w0; iw < w1; ++iw) {
          const float v = row[iw];
          if (v > best || std::isnan(v)) {
            best = v;
            at = ih * g.W + iw;
          }
        }
      }
      y[oh * g.Wo + ow] = best;
      idx[oh * g.Wo + ow] = at;
    }
  }
}

// Tasks of whole planes with about kGrain input reads each.
int64_t plane_grain(int64_t work_per_plane) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(work_per_plane, 1)); }

// max_pool2d(x [B, C, H, W] float32, {kernel, stride = kernel, padding = 0}) -> [y [B, C, Ho, Wo],
// indices int64 [B, C, Ho, Wo]] with Ho = floor((H + 2 ph - kh) / sh) + 1 (likewise Wo).
std::vector<Tensor> op_max_pool2d(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  const PoolGeom g = make_geom(a, x);
  const Shape ys{x.size(0), x.size(1), g.Ho, g.Wo};
  Tensor y = empty(ys), idx = empty(ys, DType::I64);
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  int64_t* ip = idx.data<int64_t>();
  const int64_t in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
  parallel_for(g.planes, plane_grain(out_plane * g.kh * g.kw), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) pool_plane(g, xp + p * in_plane, yp + p * out_plane, ip + p * out_plane);
  });
  return {y, idx};
}

// Checks every index of one contiguous index tensor against [0, limit); RangeError naming the first bad one.
template <class I>
void check_index_range(const OpArgs& a, const I* v, int64_t n, int64_t limit) {
  for (int64_t i = 0; i < n; ++i)
    if (v[i] < 0 || v[i] >= limit)
      throw_range(a.op, ": index ", static_cast<int64_t>(v[i]), " in 'indices' (element ", i,
                  ") is out of range [0, ", limit, ") for an input plane of H*W = ", limit);
}

template <class I>
void unpool(int64_t planes, int64_t in_plane, int64_t out_plane, const float* gy, const I* iv, float* gx) {
  parallel_for(planes, plane_grain(in_plane + out_plane), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      float* o = gx + p * in_plane;
      std::fill(o, o + in_plane, 0.0f);
      const float* g = gy + p * out_plane;
      const I* ix = iv + p * out_plane;
      for (int64_t j = 0; j < out_plane; ++j) o[ix[j]] += g[j];
    }
  });
}

// max_pool2d_backward(gy [B, C, Ho, Wo] float32, indices int64/int32 [B, C, Ho, Wo],
// {shape: [B, C, H, W]}) -> [gx [B, C, H, W]]: gx[b, c].flat[indices[b, c, i]] += gy[b, c, i].
std::vector<Tensor> op_max_pool2d_backward(const OpArgs& a) {
  const Tensor gy = a.input(0, "gy", DType::F32, 4).contiguous();
  const Tensor& idx_in = a.input(1, "indices");
  MVQ_CHECK_TYPE(idx_in.dtype() == DType::I64 || idx_in.dtype() == DType::I32, a.op,
                 ": 'indices' must be int64 or int32, got ", dtype_name(idx_in.dtype()), " ", idx_in.shape_str());
  MVQ_CHECK_RANGE(idx_in.shape() == gy.shape(), a.op, ": 'indices' must have the shape of gy ", gy.shape_str(),
                  ", got ", idx_in.shape_str());
  MVQ_CHECK_TYPE(a.attrs.has("shape"), a.op, ": option 'shape' (the input shape [B, C, H, W]) is required");
  const Shape xs = a.attrs.ints("shape");
  MVQ_CHECK_RANGE(xs.size() == 4, a.op, ": option 'shape' must be the input shape [B, C, H, W], got ",
                  shape_to_string(xs));
  MVQ_CHECK_RANGE(xs[0] == gy.size(0) && xs[1] == gy.size(1), a.op, ": option 'shape' ", shape_to_string(xs),
                  " must start with gy's [B, C] = [", gy.size(0), ", ", gy.size(1), "]");
  MVQ_CHECK_RANGE(xs[2] >= 0 && xs[3] >= 0, a.op, ": option 'shape' must not be negative, got ", shape_to_string(xs));
  shape_numel(xs);  // RangeError on overflow
  const Tensor idx = idx_in.contiguous();
  const int64_t planes = xs[0] * xs[1], in_plane = xs[2] * xs[3], out_plane = gy.size(2) * gy.size(3);
  if (idx.dtype() == DType::I64)
    check_index_range(a, idx.data<int64_t>(), idx.numel(), in_plane);
  else
    check_index_range(a, idx.data<int32_t>(), idx.numel(), in_plane);
  Tensor gx = empty(xs);
  if (gx.numel() == 0) return {gx};
  if (idx.dtype() == DType::I64)
    unpool(planes, in_plane, out_plane, gy.data<float>(), idx.data<int64_t>(), gx.data<float>());
  else
    unpool(planes, in_plane, out_plane, gy.data<float>(), idx.data<int32_t>(), gx.data<float>());
  return {gx};
}

}  // namespace
}  // namespace cpu

MVQ_REGISTER_OP("max_pool2d", Device::CPU, cpu::op_max_pool2d);
MVQ_OP_ATTRS("max_pool2d", "kernel", "padding", "stride");
MVQ_REGISTER_OP("max_pool2d_backward", Device::CPU, cpu::op_max_pool2d_backward);
MVQ_OP_ATTRS("max_pool2d_backward", "shape");

}  // namespace mvq
