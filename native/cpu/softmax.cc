// softmax / log_softmax along one dimension and their backward ops.
//
// The tensor is viewed as [outer, D, inner]. inner == 1 (the last dim) runs row by row; otherwise
// the D loop walks whole inner rows so every pass is a contiguous, vectorized loop.
// exp is the AVX2 expf of nn_common.h (~1 ulp); sums are float64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"
#include "nn_common.h"

namespace mvq {
namespace {

using namespace nn;

struct Layout {
  int64_t outer, D, inner;
};

Layout layout_of(const OpArgs& a, const Tensor& x) {
  const int d = norm_dim(a, a.attrs.i("dim", -1), x.dim());
  Layout L{1, x.size(d), 1};
  for (int i = 0; i < d; ++i) L.outer *= x.size(i);
  for (int i = d + 1; i < x.dim(); ++i) L.inner *= x.size(i);
  return L;
}

// Forward for one [D, inner] slab. log == true writes log_softmax.
void softmax_slab(const float* x, float* y, int64_t D, int64_t inner, bool log, float* mx, double* sm, float* tmp) {
  if (inner == 1) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t d = 0; d < D; ++d) m = std::max(m, x[d]);
    if (m == -std::numeric_limits<float>::infinity()) m = 0;  // all -inf: exp gives 0s, sum 0
    for (int64_t d = 0; d < D; ++d) tmp[d] = x[d] - m;
    exp_array(tmp, y, D);
    const double s = sum_f64(y, D);
    if (log) {
      const float lse = static_cast<float>(std::log(s));
      for (int64_t d = 0; d < D; ++d) y[d] = tmp[d] - lse;
    } else {
      const float inv = static_cast<float>(1.0 / s);
      for (int64_t d = 0; d < D; ++d) y[d] *= inv;
    }
    return;
  }
  for (int64_t i = 0; i < inner; ++i) {
    mx[i] = -std::numeric_limits<float>::infinity();
    sm[i] = 0;
  }
  for (int64_t d = 0; d < D; ++d) {
    const float* xr = x + d * inner;
    for (int64_t i = 0; i < inner; ++i) mx[i] = std::max(mx[i], xr[i]);
  }
  for (int64_t i = 0; i < inner; ++i)
    if (mx[i] == -std::numeric_limits<float>::infinity()) mx[i] = 0;
  for (int64_t d = 0; d < D; ++d) {
    const float* xr = x + d * inner;
    float* yr = y + d * inner;
    for (int64_t i = 0; i < inner; ++i) tmp[i] = xr[i] - mx[i];
    exp_array(tmp, yr, inner);
    for (int64_t i = 0; i < inner; ++i) sm[i] += yr[i];
  }
  if (log) {
    for (int64_t i = 0; i < inner; ++i) mx[i] += static_cast<float>(std::log(sm[i]));  // mx := max + lse
    for (int64_t d = 0; d < D; ++d) {
      const float* xr = x + d * inner;
      float* yr = y + d * inner;
      // (x - max) - log(sum) as in the row path
      for (int64_t i = 0; i < inner; ++i) yr[i] = xr[i] - mx[i];
    }
  } else {
    for (int64_t i = 0; i < inner; ++i) tmp[i] = static_cast<float>(1.0 / sm[i]);
    for (int64_t d = 0; d < D; ++d) {
      float* yr = y + d * inner;
      for (int64_t i = 0; i < inner; ++i) yr[i] *= tmp[i];
    }
  }
}

std::vector<Tensor> softmax_fwd(const OpArgs& a, bool log) {
  Tensor x = a.input(0, "x", DType::F32);
  const Layout L = layout_of(a, x);
  x = x.contiguous();
  Tensor y = empty(x.shape());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  const int64_t slab = L.D * L.inner;
  parallel_for(L.outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(slab, 1)), [&](int64_t o0, int64_t o1) {
    std::vector<float> mx(L.inner), tmp(std::max(L.inner, L.D));
    std::vector<double> sm(L.inner);
    for (int64_t o = o0; o < o1; ++o) softmax_slab(xp + o * slab, yp + o * slab, L.D, L.inner, log, mx.data(), sm.data(), tmp.data());
  });
  return {y};
}

// softmax(x, {dim: -1}) -> [y]
std::vector<Tensor> op_softmax(const OpArgs& a) { return softmax_fwd(a, false); }
// log_softmax(x, {dim: -1}) -> [y]
std::vector<Tensor> op_log_softmax(const OpArgs& a) { return softmax_fwd(a, true); }

// softmax_backward(y, gy, {dim}):      gx = y * (gy - sum(gy * y))
// log_softmax_backward(y, gy, {dim}):  gx = gy - exp(y) * sum(gy)
std::vector<Tensor> softmax_bwd(const OpArgs& a, bool log) {
  Tensor y = a.input(0, "y", DType::F32);
  Tensor gy = a.input(1, "gy", DType::F32);
  MVQ_CHECK_RANGE(gy.shape() == y.shape(), a.op, ": 'gy' must have the shape of y ", shp(y), ", got ", shp(gy));
  const Layout L = layout_of(a, y);
  y = y.contiguous();
  gy = gy.contiguous();
  Tensor gx = empty(y.shape());
  const float* yp = y.data<float>();
  const float* gp = gy.data<float>();
  float* op = gx.data<float>();
  const int64_t slab = L.D * L.inner;
  parallel_for(L.outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(slab, 1)), [&](int64_t o0, int64_t o1) {
    std::vector<double> sm(L.inner);
    std::vector<float> sf(L.inner);
    for (int64_t o = o0; o < o1; ++o) {
      const float* ys = yp + o * slab;
      const float* gs = gp + o * slab;
      float* os = op + o * slab;
      if (L.inner == 1) {
        if (log) {
          const float s = static_cast<float>(sum_f64(gs, L.D));
          exp_array(ys, os, L.D);
          for (int64_t d = 0; d < L.D; ++d) os[d] = gs[d] - os[d] * s;
        } else {
          const float s = static_cast<float>(dot_f64(gs, ys, L.D));
          for (int64_t d = 0; d < L.D; ++d) os[d] = ys[d] * (gs[d] - s);
        }
        continue;
      }
      std::fill(sm.begin(), sm.end(), 0.0);
      for (int64_t d = 0; d < L.D; ++d) {
        const float* yr = ys + d * L.inner;
        const float* gr = gs + d * L.inner;
        if (log) {
          for (int64_t i = 0; i < L.inner; ++i) sm[i] += gr[i];
        } else {
          for (int64_t i = 0; i < L.inner; ++i) sm[i] += static_cast<double>(gr[i]) * yr[i];
        }
      }
      for (int64_t i = 0; i < L.inner; ++i) sf[i] = static_cast<float>(sm[i]);
      for (int64_t d = 0; d < L.D; ++d) {
        const float* yr = ys + d * L.inner;
        const float* gr = gs + d * L.inner;
        float* orow = os + d * L.inner;
        if (log) {
          exp_array(yr, orow, L.inner);
          for (int64_t i = 0; i < L.inner; ++i) orow[i] = gr[i] - orow[i] * sf[i];
        } else {
          for (int64_t i = 0; i < L.inner; ++i) orow[i] = yr[i] * (gr[i] - sf[i]);
        }
      }
    }
  });
  return {gx};
}

std::vector<Tensor> op_softmax_backward(const OpArgs& a) { return softmax_bwd(a, false); }
std::vector<Tensor> op_log_softmax_backward(const OpArgs& a) { return softmax_bwd(a, true); }

}  // namespace

MVQ_REGISTER_OP("softmax", Device::CPU, op_softmax);
MVQ_OP_ATTRS("softmax", "dim");
MVQ_REGISTER_OP("log_softmax", Device::CPU, op_log_softmax);
MVQ_OP_ATTRS("log_softmax", "dim");
MVQ_REGISTER_OP("softmax_backward", Device::CPU, op_softmax_backward);
MVQ_OP_ATTRS("softmax_backward", "dim");
MVQ_REGISTER_OP("log_softmax_backward", Device::CPU, op_log_softmax_backward);
MVQ_OP_ATTRS("log_softmax_backward", "dim");

}  // namespace mvq
