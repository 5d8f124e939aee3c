// Normalization ops and their backward ops: group_norm (with a fused activation), layer_norm,
// rms_norm, batch_norm.
//
// Statistics are two-pass in float64 (mean, then the sum of squared deviations), so a group of
// millions of elements with a large mean still matches a float64 reference to ~1e-7. The affine
// step y = (x - mean) * rstd * w + b is evaluated in float64 and rounded once.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"
#include "nn_common.h"

namespace mvq {
namespace {

using namespace nn;

// Optional per-channel parameter input: absent, or float32 [C].
const float* opt_param(const OpArgs& a, size_t i, const char* name, int64_t C, Tensor* keep) {
  if (!a.has_input(i)) return nullptr;
  const Tensor& t = a.input(i, name, DType::F32);
  MVQ_CHECK_RANGE(t.dim() == 1 && t.size(0) == C, a.op, ": '", name, "' must be float32 [", C, "], got ", shp(t));
  *keep = t.contiguous();
  return keep->data<float>();
}

// Statistic input: float32 with `n` elements (mean, rstd...).
Tensor stat_input(const OpArgs& a, size_t i, const char* name, int64_t n, const char* expect) {
  const Tensor& t = a.input(i, name, DType::F32);
  MVQ_CHECK_RANGE(t.numel() == n, a.op, ": '", name, "' must be float32 ", expect, " (", n, " elements), got ", shp(t));
  return t.contiguous();
}

// y[i] = x[i] * s + t, in float64, rounded once.
inline void affine_d(const float* x, float* y, int64_t n, double s, double t) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<double>(x[i]) * s + t);
}

// Deterministic chunking of R rows for reductions over rows: the chunk count depends only on
// the sizes, never on the thread count.
int64_t row_chunks(int64_t R, int64_t C) {
  int64_t n = (R * std::max<int64_t>(C, 1)) / 32768;
  return std::max<int64_t>(1, std::min<int64_t>({n, R, 64}));
}

// ---------------------------------------------------------------------------------------------
// group_norm(x [B, C, *], weight? [C], bias? [C], {groups, eps: 1e-5, act: 'none'|'silu'|'gelu'|'gelu_tanh'})
//   -> [y, mean [B, G], rstd [B, G]]
std::vector<Tensor> op_group_norm(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 2, "group_norm: 'x' must be float32 [B, C, ...], got ", shp(x));
  x = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t G = a.attrs.i("groups");
  MVQ_CHECK_RANGE(G > 0 && C % G == 0, "group_norm: option 'groups' must be a positive divisor of C = ", C, ", got ", G);
  const double eps = a.attrs.f("eps", 1e-5);
  MVQ_CHECK_RANGE(eps >= 0 && std::isfinite(eps), "group_norm: option 'eps' must be a finite number >= 0, got ", eps);
  const Act act = act_attr(a, "act");
  Tensor wk, bk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  const float* bb = opt_param(a, 2, "bias", C, &bk);
  const int64_t HW = C ? x.numel() / std::max<int64_t>(B * C, 1) : 0;
  const int64_t Cg = C / G, D = Cg * HW;
  Tensor y = empty(x.shape()), mean = empty({B, G}), rstd = empty({B, G});
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  float* mp = mean.data<float>();
  float* rp = rstd.data<float>();
  parallel_for(B * G, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bg = b0; bg < b1; ++bg) {
      const float* xg = xp + bg * D;
      float* yg = yp + bg * D;
      const double m = D ? sum_f64(xg, D) / D : 0.0;
      const double var = D ? sqdev_f64(xg, D, m) / D : 0.0;
      const double rs = 1.0 / std::sqrt(var + eps);
      mp[bg] = static_cast<float>(m);
      rp[bg] = static_cast<float>(rs);
      const int64_t g = bg % G;
      for (int64_t c = 0; c < Cg; ++c) {
        const int64_t ch = g * Cg + c;
        const double sc = rs * (w ? w[ch] : 1.0f);
        const double sh = (bb ? bb[ch] : 0.0f) - m * sc;
        affine_d(xg + c * HW, yg + c * HW, HW, sc, sh);
        act_array(act, yg + c * HW, yg + c * HW, HW);
      }
    }
  });
  return {y, mean, rstd};
}

// group_norm_backward(x, weight?, mean [B, G], rstd [B, G], gy, bias?, {groups, act, has_weight, has_bias})
//   -> [gx, gweight or null, gbias or null]
// With a fused activation the pre-activation is recomputed from x, so `bias` (input 5) is needed
// when the forward had one.
std::vector<Tensor> op_group_norm_backward(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 2, "group_norm_backward: 'x' must be float32 [B, C, ...], got ", shp(x));
  x = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t G = a.attrs.i("groups");
  MVQ_CHECK_RANGE(G > 0 && C % G == 0, "group_norm_backward: option 'groups' must be a positive divisor of C = ", C, ", got ", G);
  const Act act = act_attr(a, "act");
  Tensor wk, bk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  const bool has_weight = a.attrs.b("has_weight", w != nullptr);
  MVQ_CHECK_TYPE(!has_weight || w, "group_norm_backward: has_weight is true but input 'weight' is missing");
  const float* bb = opt_param(a, 5, "bias", C, &bk);
  const bool has_bias = a.attrs.b("has_bias", bb != nullptr);
  MVQ_CHECK_TYPE(act == Act::None || !has_bias || bb,
                 "group_norm_backward: with a fused activation and has_bias, input 5 'bias' is required");
  Tensor mean = stat_input(a, 2, "mean", B * G, "[B, G]");
  Tensor rstd = stat_input(a, 3, "rstd", B * G, "[B, G]");
  Tensor gy = a.input(4, "gy", DType::F32);
  MVQ_CHECK_RANGE(gy.shape() == x.shape(), "group_norm_backward: 'gy' must have the shape of x ", shp(x), ", got ", shp(gy));
  gy = gy.contiguous();
  const int64_t HW = C ? x.numel() / std::max<int64_t>(B * C, 1) : 0;
  const int64_t Cg = C / G, D = Cg * HW;
  Tensor gx = empty(x.shape());
  std::vector<double> dw(B * C), db(B * C);
  const float* xp = x.data<float>();
  const float* gp = gy.data<float>();
  float* op = gx.data<float>();
  const float* mp = mean.data<float>();
  const float* rp = rstd.data<float>();
  parallel_for(B * G, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bg = b0; bg < b1; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const double m = mp[bg], rs = rp[bg];
      double S1 = 0, S2 = 0;
      for (int64_t c = 0; c < Cg; ++c) {
        const int64_t ch = g * Cg + c;
        const float* xr = xp + bg * D + c * HW;
        const float* gr = gp + bg * D + c * HW;
        float* orow = op + bg * D + c * HW;
        const double wc = w ? w[ch] : 1.0;
        const float* gz = gr;
        if (act != Act::None) {
          const double sc = rs * wc, sh = (has_bias && bb ? bb[ch] : 0.0f) - m * sc;
          affine_d(xr, orow, HW, sc, sh);  // pre-activation z
          act_grad_mul(act, orow, gr, orow, HW);
          gz = orow;
        }
        const double sg = sum_f64(gz, HW);
        const double sgx = rs * (dot_f64(gz, xr, HW) - m * sg);  // sum gz * xhat
        dw[b * C + ch] = sgx;
        db[b * C + ch] = sg;
        S1 += wc * sg;
        S2 += wc * sgx;
      }
      const double m1 = D ? S1 / D : 0.0, m2 = D ? S2 / D : 0.0;
      for (int64_t c = 0; c < Cg; ++c) {
        const int64_t ch = g * Cg + c;
        const float* xr = xp + bg * D + c * HW;
        const float* gz = act != Act::None ? op + bg * D + c * HW : gp + bg * D + c * HW;
        float* orow = op + bg * D + c * HW;
        const double A = rs * (w ? w[ch] : 1.0), Bc = -rs * rs * m2, Cc = rs * (m * rs * m2 - m1);
        for (int64_t i = 0; i < HW; ++i) orow[i] = static_cast<float>(A * gz[i] + Bc * xr[i] + Cc);
      }
    }
  });
  Tensor gw, gb;
  if (has_weight) {
    gw = empty({C});
    float* p = gw.data<float>();
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t b = 0; b < B; ++b) s += dw[b * C + c];
      p[c] = static_cast<float>(s);
    }
  }
  if (has_bias) {
    gb = empty({C});
    float* p = gb.data<float>();
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t b = 0; b < B; ++b) s += db[b * C + c];
      p[c] = static_cast<float>(s);
    }
  }
  return {gx, gw, gb};
}

// ---------------------------------------------------------------------------------------------
Shape leading_shape(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }

// layer_norm(x [..., C], weight? [C], bias? [C], {eps: 1e-5}) -> [y, mean [...], rstd [...]]
std::vector<Tensor> op_layer_norm(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 1, "layer_norm: 'x' must be float32 [..., C], got ", shp(x));
  x = x.contiguous();
  const int64_t C = x.size(-1), R = C ? x.numel() / C : shape_numel(leading_shape(x));
  const double eps = a.attrs.f("eps", 1e-5);
  MVQ_CHECK_RANGE(eps >= 0 && std::isfinite(eps), "layer_norm: option 'eps' must be a finite number >= 0, got ", eps);
  Tensor wk, bk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  const float* bb = opt_param(a, 2, "bias", C, &bk);
  Tensor y = empty(x.shape()), mean = empty(leading_shape(x)), rstd = empty(leading_shape(x));
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  float* mp = mean.data<float>();
  float* rp = rstd.data<float>();
  parallel_for(R, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      float* yr = yp + r * C;
      const double m = C ? sum_f64(xr, C) / C : 0.0;
      const double var = C ? sqdev_f64(xr, C, m) / C : 0.0;
      const double rs = 1.0 / std::sqrt(var + eps);
      mp[r] = static_cast<float>(m);
      rp[r] = static_cast<float>(rs);
      if (w && bb) {
        for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<float>((xr[c] - m) * rs * w[c] + bb[c]);
      } else if (w) {
        for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<float>((xr[c] - m) * rs * w[c]);
      } else if (bb) {
        for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<float>((xr[c] - m) * rs + bb[c]);
      } else {
        for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<float>((xr[c] - m) * rs);
      }
    }
  });
  return {y, mean, rstd};
}

// layer_norm_backward(x, weight?, mean, rstd, gy, {has_weight, has_bias}) -> [gx, gw or null, gb or null]
std::vector<Tensor> op_layer_norm_backward(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 1, "layer_norm_backward: 'x' must be float32 [..., C], got ", shp(x));
  x = x.contiguous();
  const int64_t C = x.size(-1), R = C ? x.numel() / C : shape_numel(leading_shape(x));
  Tensor wk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  const bool has_weight = a.attrs.b("has_weight", w != nullptr);
  const bool has_bias = a.attrs.b("has_bias", true);
  Tensor mean = stat_input(a, 2, "mean", R, "[...]");
  Tensor rstd = stat_input(a, 3, "rstd", R, "[...]");
  Tensor gy = a.input(4, "gy", DType::F32);
  MVQ_CHECK_RANGE(gy.shape() == x.shape(), "layer_norm_backward: 'gy' must have the shape of x ", shp(x), ", got ", shp(gy));
  gy = gy.contiguous();
  Tensor gx = empty(x.shape());
  const float* xp = x.data<float>();
  const float* gp = gy.data<float>();
  float* op = gx.data<float>();
  const float* mp = mean.data<float>();
  const float* rp = rstd.data<float>();
  const int64_t nch = row_chunks(R, C);
  std::vector<double> part(static_cast<size_t>(nch) * 2 * C, 0.0);
  parallel_tasks(nch, [&](int64_t t, int) {
    const int64_t r0 = R * t / nch, r1 = R * (t + 1) / nch;
    double* pw = part.data() + t * 2 * C;
    double* pb = pw + C;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      const float* gr = gp + r * C;
      float* orow = op + r * C;
      const double m = mp[r], rs = rp[r];
      if (w) {
        for (int64_t c = 0; c < C; ++c) orow[c] = gr[c] * w[c];
      } else {
        for (int64_t c = 0; c < C; ++c) orow[c] = gr[c];
      }
      const double sg = sum_f64(orow, C);
      const double sgx = rs * (dot_f64(orow, xr, C) - m * sg);
      const double a1 = C ? sg / C : 0.0, a2 = C ? sgx / C : 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double xh = (xr[c] - m) * rs;
        pw[c] += gr[c] * xh;
        pb[c] += gr[c];
        orow[c] = static_cast<float>(rs * (orow[c] - a1 - xh * a2));
      }
    }
  });
  Tensor gw, gb;
  if (has_weight) gw = empty({C});
  if (has_bias) gb = empty({C});
  for (int64_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (int64_t t = 0; t < nch; ++t) {
      sw += part[t * 2 * C + c];
      sb += part[t * 2 * C + C + c];
    }
    if (has_weight) gw.data<float>()[c] = static_cast<float>(sw);
    if (has_bias) gb.data<float>()[c] = static_cast<float>(sb);
  }
  return {gx, gw, gb};
}

// ---------------------------------------------------------------------------------------------
// rms_norm(x [..., C], weight [C], {eps: 1e-5}) -> [y, rstd [...]]
// As LlamaGen's RMSNorm on float32: rstd = rsqrt(mean(x^2) + eps) (mean taken in float64 and
// rounded to float32), y = float32(x * rstd) * weight.
std::vector<Tensor> op_rms_norm(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 1, "rms_norm: 'x' must be float32 [..., C], got ", shp(x));
  x = x.contiguous();
  const int64_t C = x.size(-1), R = C ? x.numel() / C : shape_numel(leading_shape(x));
  const double eps = a.attrs.f("eps", 1e-5);
  MVQ_CHECK_RANGE(eps >= 0 && std::isfinite(eps), "rms_norm: option 'eps' must be a finite number >= 0, got ", eps);
  MVQ_CHECK_TYPE(a.has_input(1), "rms_norm: 'weight' must be float32 [", C, "], got nothing");
  Tensor wk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  Tensor y = empty(x.shape()), rstd = empty(leading_shape(x));
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  float* rp = rstd.data<float>();
  parallel_for(R, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      float* yr = yp + r * C;
      const double ms = C ? dot_f64(xr, xr, C) / C : 0.0;
      const float rs = static_cast<float>(1.0 / std::sqrt(static_cast<double>(static_cast<float>(ms) + static_cast<float>(eps))));
      rp[r] = rs;
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] * rs) * w[c];
    }
  });
  return {y, rstd};
}

// rms_norm_backward(x, weight, rstd, gy) -> [gx, gw]
std::vector<Tensor> op_rms_norm_backward(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 1, "rms_norm_backward: 'x' must be float32 [..., C], got ", shp(x));
  x = x.contiguous();
  const int64_t C = x.size(-1), R = C ? x.numel() / C : shape_numel(leading_shape(x));
  MVQ_CHECK_TYPE(a.has_input(1), "rms_norm_backward: 'weight' must be float32 [", C, "], got nothing");
  Tensor wk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  Tensor rstd = stat_input(a, 2, "rstd", R, "[...]");
  Tensor gy = a.input(3, "gy", DType::F32);
  MVQ_CHECK_RANGE(gy.shape() == x.shape(), "rms_norm_backward: 'gy' must have the shape of x ", shp(x), ", got ", shp(gy));
  gy = gy.contiguous();
  Tensor gx = empty(x.shape()), gw = empty({C});
  const float* xp = x.data<float>();
  const float* gp = gy.data<float>();
  const float* rp = rstd.data<float>();
  float* op = gx.data<float>();
  const int64_t nch = row_chunks(R, C);
  std::vector<double> part(static_cast<size_t>(nch) * C, 0.0);
  parallel_tasks(nch, [&](int64_t t, int) {
    const int64_t r0 = R * t / nch, r1 = R * (t + 1) / nch;
    double* pw = part.data() + t * C;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      const float* gr = gp + r * C;
      float* orow = op + r * C;
      const float rs = rp[r];
      for (int64_t c = 0; c < C; ++c) {
        pw[c] += static_cast<double>(gr[c]) * (xr[c] * rs);
        orow[c] = gr[c] * w[c];
      }
      const double s = C ? dot_f64(orow, xr, C) / C : 0.0;
      const double r3s = static_cast<double>(rs) * rs * rs * s;
      for (int64_t c = 0; c < C; ++c) orow[c] = static_cast<float>(static_cast<double>(rs) * orow[c] - r3s * xr[c]);
    }
  });
  float* gwp = gw.data<float>();
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t t = 0; t < nch; ++t) s += part[t * C + c];
    gwp[c] = static_cast<float>(s);
  }
  return {gx, gw};
}

// ---------------------------------------------------------------------------------------------
// batch_norm(x [B, C, *], weight? [C], bias? [C], running_mean? [C], running_var? [C],
//            {training, momentum: 0.1, eps: 1e-5})
//   -> [y, mean [C], invstd [C], new_running_mean, new_running_var]
// Training normalizes with the batch statistics (biased variance) and returns running stats
// updated with the unbiased variance (null when none were given); eval uses the running stats
// and returns copies of them.
std::vector<Tensor> op_batch_norm(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 2, "batch_norm: 'x' must be float32 [B, C, ...], got ", shp(x));
  x = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t S = (B * C) != 0 ? x.numel() / (B * C) : 0;
  const bool training = a.attrs.b("training", false);
  const double momentum = a.attrs.f("momentum", 0.1);
  const double eps = a.attrs.f("eps", 1e-5);
  MVQ_CHECK_RANGE(eps >= 0 && std::isfinite(eps), "batch_norm: option 'eps' must be a finite number >= 0, got ", eps);
  MVQ_CHECK_RANGE(std::isfinite(momentum), "batch_norm: option 'momentum' must be a finite number, got ", momentum);
  Tensor wk, bk, rmk, rvk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  const float* bb = opt_param(a, 2, "bias", C, &bk);
  const float* rm = opt_param(a, 3, "running_mean", C, &rmk);
  const float* rv = opt_param(a, 4, "running_var", C, &rvk);
  MVQ_CHECK_TYPE((rm == nullptr) == (rv == nullptr), "batch_norm: give both 'running_mean' and 'running_var' or neither");
  MVQ_CHECK_TYPE(training || rm, "batch_norm: eval mode needs 'running_mean' and 'running_var'");
  const int64_t n = B * S;
  MVQ_CHECK_RANGE(!training || n > 1, "batch_norm: training needs more than 1 value per channel, got x ", shp(x));
  Tensor y = empty(x.shape()), mean = empty({C}), invstd = empty({C});
  Tensor nrm, nrv;
  if (rm) {
    nrm = empty({C});
    nrv = empty({C});
  }
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  float* mp = mean.data<float>();
  float* ip = invstd.data<float>();
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double m, is;
      if (training) {
        double s = 0;
        for (int64_t b = 0; b < B; ++b) s += sum_f64(xp + (b * C + c) * S, S);
        m = s / n;
        double q = 0;
        for (int64_t b = 0; b < B; ++b) q += sqdev_f64(xp + (b * C + c) * S, S, m);
        const double var = q / n;
        is = 1.0 / std::sqrt(var + eps);
        if (rm) {
          nrm.data<float>()[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * m);
          nrv.data<float>()[c] = static_cast<float>((1.0 - momentum) * rv[c] + momentum * q / (n - 1));
        }
      } else {
        m = rm[c];
        is = 1.0 / std::sqrt(static_cast<double>(rv[c]) + eps);
        nrm.data<float>()[c] = rm[c];
        nrv.data<float>()[c] = rv[c];
      }
      mp[c] = static_cast<float>(m);
      ip[c] = static_cast<float>(is);
      const double sc = is * (w ? w[c] : 1.0f);
      const double sh = (bb ? bb[c] : 0.0f) - m * sc;
      for (int64_t b = 0; b < B; ++b) affine_d(xp + (b * C + c) * S, yp + (b * C + c) * S, S, sc, sh);
    }
  });
  return {y, mean, invstd, nrm, nrv};
}

// batch_norm_backward(x, weight?, mean [C], invstd [C], gy, {training}) -> [gx, gw, gb]
std::vector<Tensor> op_batch_norm_backward(const OpArgs& a) {
  Tensor x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 2, "batch_norm_backward: 'x' must be float32 [B, C, ...], got ", shp(x));
  x = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t S = (B * C) != 0 ? x.numel() / (B * C) : 0;
  const bool training = a.attrs.b("training", false);
  Tensor wk;
  const float* w = opt_param(a, 1, "weight", C, &wk);
  Tensor mean = stat_input(a, 2, "mean", C, "[C]");
  Tensor invstd = stat_input(a, 3, "invstd", C, "[C]");
  Tensor gy = a.input(4, "gy", DType::F32);
  MVQ_CHECK_RANGE(gy.shape() == x.shape(), "batch_norm_backward: 'gy' must have the shape of x ", shp(x), ", got ", shp(gy));
  gy = gy.contiguous();
  const int64_t n = B * S;
  Tensor gx = empty(x.shape()), gw = empty({C}), gb = empty({C});
  const float* xp = x.data<float>();
  const float* gp = gy.data<float>();
  float* op = gx.data<float>();
  const float* mp = mean.data<float>();
  const float* ip = invstd.data<float>();
  parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double m = mp[c], is = ip[c], wc = w ? w[c] : 1.0;
      double sg = 0, sgx = 0;
      for (int64_t b = 0; b < B; ++b) {
        const float* xr = xp + (b * C + c) * S;
        const float* gr = gp + (b * C + c) * S;
        const double s = sum_f64(gr, S);
        sg += s;
        sgx += dot_f64(gr, xr, S) - m * s;
      }
      sgx *= is;  // sum gy * xhat
      gw.data<float>()[c] = static_cast<float>(sgx);
      gb.data<float>()[c] = static_cast<float>(sg);
      double A = wc * is, Bc = 0, Cc = 0;
      if (training && n > 0) {
        // gx = w is (gy - sg/n - xhat sgx/n), xhat = (x - m) is
        Bc = -wc * is * is * sgx / n;
        Cc = -wc * is * sg / n - Bc * m;
      }
      for (int64_t b = 0; b < B; ++b) {
        const float* xr = xp + (b * C + c) * S;
        const float* gr = gp + (b * C + c) * S;
        float* orow = op + (b * C + c) * S;
        for (int64_t i = 0; i < S; ++i) orow[i] = static_cast<float>(A * gr[i] + Bc * xr[i] + Cc);
      }
    }
  });
  return {gx, gw, gb};
}

}  // namespace

MVQ_REGISTER_OP("group_norm", Device::CPU, op_group_norm);
MVQ_OP_ATTRS("group_norm", "act", "eps", "groups");
MVQ_REGISTER_OP("group_norm_backward", Device::CPU, op_group_norm_backward);
MVQ_OP_ATTRS("group_norm_backward", "act", "groups", "has_bias", "has_weight");
MVQ_REGISTER_OP("layer_norm", Device::CPU, op_layer_norm);
MVQ_OP_ATTRS("layer_norm", "eps");
MVQ_REGISTER_OP("layer_norm_backward", Device::CPU, op_layer_norm_backward);
MVQ_OP_ATTRS("layer_norm_backward", "has_bias", "has_weight");
MVQ_REGISTER_OP("rms_norm", Device::CPU, op_rms_norm);
MVQ_OP_ATTRS("rms_norm", "eps");
MVQ_REGISTER_OP("rms_norm_backward", Device::CPU, op_rms_norm_backward);
MVQ_REGISTER_OP("batch_norm", Device::CPU, op_batch_norm);
MVQ_OP_ATTRS("batch_norm", "eps", "momentum", "training");
MVQ_REGISTER_OP("batch_norm_backward", Device::CPU, op_batch_norm_backward);
MVQ_OP_ATTRS("batch_norm_backward", "training");

}  // namespace mvq
