// Losses and their backward ops: cross_entropy (class targets, torch semantics for ignore_index,
// label smoothing and reductions), soft_cross_entropy (probability targets), kl_div_softmax
// (distillation KL with a temperature, batchmean), l1_loss, mse_loss.
//
// Per-row log-sum-exp uses the AVX2 expf of nn_common.h and float64 sums; the loss itself is
// accumulated in float64 and rounded once.
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

// log(sum(exp(x))) over one row; tmp receives exp(x - max) and *sum their float64 sum.
double row_lse(const float* x, int64_t C, float* tmp, double* sum, float* mx) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < C; ++c) m = std::max(m, x[c]);
  for (int64_t c = 0; c < C; ++c) tmp[c] = x[c] - m;
  exp_array(tmp, tmp, C);
  const double s = sum_f64(tmp, C);
  *sum = s;
  *mx = m;
  return m + std::log(s);
}

Tensor logits_input(const OpArgs& a, size_t i, const char* name) {
  const Tensor& t = a.input(i, name, DType::F32);
  MVQ_CHECK_RANGE(t.dim() == 2, a.op, ": '", name, "' must be float32 [N, C], got ", shp(t));
  return t.contiguous();
}

// Class targets as int64, validated against [0, C) or ignore_index.
std::vector<int64_t> targets(const OpArgs& a, size_t i, int64_t N, int64_t C, int64_t ignore) {
  const Tensor& t = a.input(i, "target");
  MVQ_CHECK_TYPE(t.dtype() == DType::I64 || t.dtype() == DType::I32, a.op, ": 'target' must be int64 [", N, "], got ",
                 dtype_name(t.dtype()), " ", shp(t));
  MVQ_CHECK_RANGE(t.dim() == 1 && t.size(0) == N, a.op, ": 'target' must be int64 [", N, "], got ", shp(t));
  Tensor c = t.contiguous();
  std::vector<int64_t> v(N);
  for (int64_t n = 0; n < N; ++n) {
    v[n] = t.dtype() == DType::I64 ? c.data<int64_t>()[n] : c.data<int32_t>()[n];
    MVQ_CHECK_RANGE(v[n] == ignore || (v[n] >= 0 && v[n] < C), a.op, ": target[", n, "] = ", v[n],
                    " is out of range [0, ", C, ") and is not ignore_index (", ignore, ")");
  }
  return v;
}

// Loss reduction of per-row float64 losses.
Tensor reduce_rows(const std::vector<double>& l, int red, double count) {
  if (red == 0) {
    Tensor o = empty({static_cast<int64_t>(l.size())});
    for (size_t i = 0; i < l.size(); ++i) o.data<float>()[i] = static_cast<float>(l[i]);
    return o;
  }
  double s = 0;
  for (double v : l) s += v;
  Tensor o = empty({});
  o.data<float>()[0] = static_cast<float>(red == 1 ? s / count : s);
  return o;
}

// Upstream gradient: scalar for mean/sum, [N] for none. Returns per-row multipliers.
std::vector<double> row_grads(const OpArgs& a, size_t i, int red, int64_t N, double count) {
  const Tensor& g = a.input(i, "gloss", DType::F32);
  Tensor gc = g.contiguous();
  std::vector<double> out(N);
  if (red == 0) {
    MVQ_CHECK_RANGE(g.numel() == N, a.op, ": 'gloss' must be float32 [", N, "] for reduction 'none', got ", shp(g));
    for (int64_t n = 0; n < N; ++n) out[n] = gc.data<float>()[n];
  } else {
    MVQ_CHECK_RANGE(g.numel() == 1, a.op, ": 'gloss' must be a float32 scalar, got ", shp(g));
    const double v = gc.data<float>()[0];
    for (int64_t n = 0; n < N; ++n) out[n] = red == 1 ? v / count : v;
  }
  return out;
}

struct CeOpts {
  double smoothing;
  int64_t ignore;
  int red;
};
CeOpts ce_opts(const OpArgs& a) {
  CeOpts o{a.attrs.f("label_smoothing", 0.0), a.attrs.i("ignore_index", -100), reduction_attr(a)};
  MVQ_CHECK_RANGE(o.smoothing >= 0 && o.smoothing <= 1, a.op, ": option 'label_smoothing' must be in [0, 1], got ", o.smoothing);
  return o;
}

// cross_entropy(logits [N, C], target int64 [N], {label_smoothing: 0, ignore_index: -100,
//               reduction: 'mean'}) -> [loss]
// loss_n = (1 - eps) * (-logp[t]) + eps * mean_c(-logp[c]); ignored rows give 0 and do not
// count toward the mean (all ignored: mean is NaN, as torch).
std::vector<Tensor> op_cross_entropy(const OpArgs& a) {
  Tensor x = logits_input(a, 0, "logits");
  const int64_t N = x.size(0), C = x.size(1);
  const CeOpts o = ce_opts(a);
  MVQ_CHECK_RANGE(C > 0 || N == 0, "cross_entropy: 'logits' needs at least one class, got ", shp(x));
  std::vector<int64_t> t = targets(a, 1, N, C, o.ignore);
  std::vector<double> l(N, 0.0);
  const float* xp = x.data<float>();
  parallel_for(N, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    std::vector<float> tmp(C);
    for (int64_t n = n0; n < n1; ++n) {
      if (t[n] == o.ignore) continue;
      const float* xr = xp + n * C;
      double s;
      float m;
      const double lse = row_lse(xr, C, tmp.data(), &s, &m);
      double v = (1.0 - o.smoothing) * (lse - xr[t[n]]);
      if (o.smoothing > 0) v += o.smoothing * (lse - sum_f64(xr, C) / C);
      l[n] = v;
    }
  });
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += t[n] != o.ignore;
  return {reduce_rows(l, o.red, static_cast<double>(count))};
}

// cross_entropy_backward(logits, target, gloss, {same options}) -> [glogits]
std::vector<Tensor> op_cross_entropy_backward(const OpArgs& a) {
  Tensor x = logits_input(a, 0, "logits");
  const int64_t N = x.size(0), C = x.size(1);
  const CeOpts o = ce_opts(a);
  std::vector<int64_t> t = targets(a, 1, N, C, o.ignore);
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += t[n] != o.ignore;
  std::vector<double> g = row_grads(a, 2, o.red, N, static_cast<double>(count));
  Tensor gx = empty(x.shape());
  const float* xp = x.data<float>();
  float* op = gx.data<float>();
  parallel_for(N, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* orow = op + n * C;
      if (t[n] == o.ignore) {
        std::fill(orow, orow + C, 0.0f);
        continue;
      }
      double s;
      float m;
      row_lse(xp + n * C, C, orow, &s, &m);
      const double gs = g[n] / s, off = g[n] * o.smoothing / C;
      const double et = orow[t[n]];
      for (int64_t c = 0; c < C; ++c) orow[c] = static_cast<float>(orow[c] * gs - off);
      // p_t - 1 = -(sum of the other classes' exps) / s, taken in double from the double sum: forming
      // p_t first and subtracting 1 cancels every digit when the target class holds nearly all the mass.
      orow[t[n]] = static_cast<float>(g[n] * (o.smoothing - (s - et) / s) - off);
    }
  });
  return {gx};
}

// soft_cross_entropy(logits [N, C], probs [N, C], {reduction: 'mean'}) -> [loss]
// loss_n = -sum_c probs[c] * logp[c]; mean divides by N (torch, probability targets).
std::vector<Tensor> op_soft_cross_entropy(const OpArgs& a) {
  Tensor x = logits_input(a, 0, "logits");
  Tensor q = logits_input(a, 1, "probs");
  MVQ_CHECK_RANGE(q.shape() == x.shape(), "soft_cross_entropy: 'probs' must have the shape of logits ", shp(x), ", got ", shp(q));
  const int red = reduction_attr(a);
  const int64_t N = x.size(0), C = x.size(1);
  std::vector<double> l(N, 0.0);
  const float* xp = x.data<float>();
  const float* qp = q.data<float>();
  parallel_for(N, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    std::vector<float> tmp(C);
    for (int64_t n = n0; n < n1; ++n) {
      double s;
      float m;
      const double lse = row_lse(xp + n * C, C, tmp.data(), &s, &m);
      l[n] = lse * sum_f64(qp + n * C, C) - dot_f64(qp + n * C, xp + n * C, C);
    }
  });
  return {reduce_rows(l, red, static_cast<double>(N))};
}

// soft_cross_entropy_backward(logits, probs, gloss, {reduction}) -> [glogits, gprobs]
std::vector<Tensor> op_soft_cross_entropy_backward(const OpArgs& a) {
  Tensor x = logits_input(a, 0, "logits");
  Tensor q = logits_input(a, 1, "probs");
  MVQ_CHECK_RANGE(q.shape() == x.shape(), "soft_cross_entropy_backward: 'probs' must have the shape of logits ", shp(x), ", got ",
                  shp(q));
  const int red = reduction_attr(a);
  const int64_t N = x.size(0), C = x.size(1);
  std::vector<double> g = row_grads(a, 2, red, N, static_cast<double>(N));
  Tensor gx = empty(x.shape()), gq = empty(x.shape());
  const float* xp = x.data<float>();
  const float* qp = q.data<float>();
  float* op = gx.data<float>();
  float* oq = gq.data<float>();
  parallel_for(N, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = xp + n * C;
      const float* qr = qp + n * C;
      float* orow = op + n * C;
      double s;
      float m;
      const double lse = row_lse(xr, C, orow, &s, &m);
      const double sq = sum_f64(qr, C);
      const double gs = g[n] * sq / s;
      for (int64_t c = 0; c < C; ++c) {
        orow[c] = static_cast<float>(orow[c] * gs - g[n] * qr[c]);
        oq[n * C + c] = static_cast<float>(g[n] * (lse - xr[c]));
      }
    }
  });
  return {gx, gq};
}

double temperature_attr(const OpArgs& a) {
  const double T = a.attrs.f("temperature", 1.0);
  MVQ_CHECK_RANGE(T > 0 && std::isfinite(T), a.op, ": option 'temperature' must be a finite number > 0, got ", T);
  return T;
}

// kl_div_softmax(student [N, C], teacher [N, C], {temperature: 1}) -> [loss]
// KL(softmax(t/T) || softmax(s/T)) summed over classes and divided by N (batchmean). Callers
// scale by T^2 themselves (MergeVQ's alignment loss multiplies by 16 for T = 4).
std::vector<Tensor> op_kl_div_softmax(const OpArgs& a) {
  Tensor s = logits_input(a, 0, "student_logits");
  Tensor t = logits_input(a, 1, "teacher_logits");
  MVQ_CHECK_RANGE(t.shape() == s.shape(), "kl_div_softmax: 'teacher_logits' must have the shape of student_logits ", shp(s),
                  ", got ", shp(t));
  const float invT = static_cast<float>(1.0 / temperature_attr(a));
  const int64_t N = s.size(0), C = s.size(1);
  std::vector<double> l(N, 0.0);
  const float* sp = s.data<float>();
  const float* tp = t.data<float>();
  parallel_for(N, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    std::vector<float> ss(C), ts(C), e1(C), e2(C);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        ss[c] = sp[n * C + c] * invT;
        ts[c] = tp[n * C + c] * invT;
      }
      double sum_s, sum_t;
      float ms, mt;
      const double lse_s = row_lse(ss.data(), C, e1.data(), &sum_s, &ms);
      const double lse_t = row_lse(ts.data(), C, e2.data(), &sum_t, &mt);
      // sum_c p_c (log p_c - log q_c) = sum_c p_c ((t_c - s_c) - lse_t + lse_s)
      double acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += e2[c] * (static_cast<double>(ts[c]) - ss[c]);
      l[n] = acc / sum_t - lse_t + lse_s;
    }
  });
  return {reduce_rows(l, 1, static_cast<double>(N))};
}

// kl_div_softmax_backward(student, teacher, gloss, {temperature}) -> [gstudent]
//   gstudent = gloss / (N T) * (softmax(s/T) - softmax(t/T))
std::vector<Tensor> op_kl_div_softmax_backward(const OpArgs& a) {
  Tensor s = logits_input(a, 0, "student_logits");
  Tensor t = logits_input(a, 1, "teacher_logits");
  MVQ_CHECK_RANGE(t.shape() == s.shape(), "kl_div_softmax_backward: 'teacher_logits' must have the shape of student_logits ",
                  shp(s), ", got ", shp(t));
  const double T = temperature_attr(a);
  const float invT = static_cast<float>(1.0 / T);
  const int64_t N = s.size(0), C = s.size(1);
  std::vector<double> g = row_grads(a, 2, 1, N, static_cast<double>(N));
  Tensor gs = empty(s.shape());
  const float* sp = s.data<float>();
  const float* tp = t.data<float>();
  float* op = gs.data<float>();
  parallel_for(N, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t n0, int64_t n1) {
    std::vector<float> ss(C), ts(C), e1(C), e2(C);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        ss[c] = sp[n * C + c] * invT;
        ts[c] = tp[n * C + c] * invT;
      }
      double sum_s, sum_t;
      float ms, mt;
      row_lse(ss.data(), C, e1.data(), &sum_s, &ms);
      row_lse(ts.data(), C, e2.data(), &sum_t, &mt);
      const double k = g[n] / T, is = 1.0 / sum_s, it = 1.0 / sum_t;
      for (int64_t c = 0; c < C; ++c) op[n * C + c] = static_cast<float>(k * (e1[c] * is - e2[c] * it));
    }
  });
  return {gs};
}

// --- element-wise regression losses -----------------------------------------------------------
struct Pair {
  Tensor a, b;
};
Pair pair_inputs(const OpArgs& a) {
  Tensor x = a.input(0, "a", DType::F32);
  Tensor y = a.input(1, "b", DType::F32);
  MVQ_CHECK_RANGE(x.shape() == y.shape(), a.op, ": 'b' must have the shape of a ", shp(x), ", got ", shp(y));
  return {x.contiguous(), y.contiguous()};
}

// kind 0: |a - b|, kind 1: (a - b)^2
std::vector<Tensor> pointwise_loss(const OpArgs& a, int kind) {
  Pair p = pair_inputs(a);
  const int red = reduction_attr(a);
  const int64_t n = p.a.numel();
  const float* ap = p.a.data<float>();
  const float* bp = p.b.data<float>();
  if (red == 0) {
    Tensor o = empty(p.a.shape());
    float* op = o.data<float>();
    parallel_for(n, 1 << 15, [&](int64_t s, int64_t e) {
      if (kind == 0) {
        for (int64_t i = s; i < e; ++i) op[i] = std::fabs(ap[i] - bp[i]);
      } else {
        for (int64_t i = s; i < e; ++i) {
          const float d = ap[i] - bp[i];
          op[i] = d * d;
        }
      }
    });
    return {o};
  }
  // Deterministic chunked float64 sum (chunk count depends on n only).
  const int64_t chunk = 1 << 15;
  const int64_t nch = std::max<int64_t>(1, (n + chunk - 1) / chunk);
  std::vector<double> part(nch, 0.0);
  parallel_for(nch, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s = c * chunk, e = std::min(n, s + chunk);
      double acc = 0;
      for (int64_t i = s; i < e; ++i) {
        const double d = static_cast<double>(ap[i]) - bp[i];
        acc += kind == 0 ? std::fabs(d) : d * d;
      }
      part[c] = acc;
    }
  });
  double s = 0;
  for (double v : part) s += v;
  Tensor o = empty({});
  o.data<float>()[0] = static_cast<float>(red == 1 ? s / static_cast<double>(n) : s);
  return {o};
}

// *_loss_backward(a, b, gloss, {reduction}) -> [ga, gb]
std::vector<Tensor> pointwise_loss_backward(const OpArgs& a, int kind) {
  Pair p = pair_inputs(a);
  const int red = reduction_attr(a);
  const int64_t n = p.a.numel();
  const Tensor& g = a.input(2, "gloss", DType::F32);
  Tensor gc = g.contiguous();
  if (red == 0) {
    MVQ_CHECK_RANGE(g.shape() == p.a.shape(), a.op, ": 'gloss' must have the shape of a ", shp(p.a), " for reduction 'none', got ",
                    shp(g));
  } else {
    MVQ_CHECK_RANGE(g.numel() == 1, a.op, ": 'gloss' must be a float32 scalar, got ", shp(g));
  }
  const float* gp = gc.data<float>();
  const float scalar = red == 0 ? 0.0f : static_cast<float>(red == 1 ? gp[0] / static_cast<double>(n) : gp[0]);
  Tensor ga = empty(p.a.shape()), gb = empty(p.a.shape());
  const float* ap = p.a.data<float>();
  const float* bp = p.b.data<float>();
  float* oa = ga.data<float>();
  float* ob = gb.data<float>();
  parallel_for(n, 1 << 15, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) {
      const float gi = red == 0 ? gp[i] : scalar;
      const float d = ap[i] - bp[i];
      float v;
      if (kind == 0) v = d > 0 ? gi : (d < 0 ? -gi : 0.0f);  // torch: sign(0) = 0
      else v = 2.0f * d * gi;
      oa[i] = v;
      ob[i] = -v;
    }
  });
  return {ga, gb};
}

std::vector<Tensor> op_l1_loss(const OpArgs& a) { return pointwise_loss(a, 0); }
std::vector<Tensor> op_mse_loss(const OpArgs& a) { return pointwise_loss(a, 1); }
std::vector<Tensor> op_l1_loss_backward(const OpArgs& a) { return pointwise_loss_backward(a, 0); }
std::vector<Tensor> op_mse_loss_backward(const OpArgs& a) { return pointwise_loss_backward(a, 1); }

}  // namespace

MVQ_REGISTER_OP("cross_entropy", Device::CPU, op_cross_entropy);
MVQ_OP_ATTRS("cross_entropy", "ignore_index", "label_smoothing", "reduction");
MVQ_REGISTER_OP("cross_entropy_backward", Device::CPU, op_cross_entropy_backward);
MVQ_OP_ATTRS("cross_entropy_backward", "ignore_index", "label_smoothing", "reduction");
MVQ_REGISTER_OP("soft_cross_entropy", Device::CPU, op_soft_cross_entropy);
MVQ_OP_ATTRS("soft_cross_entropy", "reduction");
MVQ_REGISTER_OP("soft_cross_entropy_backward", Device::CPU, op_soft_cross_entropy_backward);
MVQ_OP_ATTRS("soft_cross_entropy_backward", "reduction");
MVQ_REGISTER_OP("kl_div_softmax", Device::CPU, op_kl_div_softmax);
MVQ_OP_ATTRS("kl_div_softmax", "temperature");
MVQ_REGISTER_OP("kl_div_softmax_backward", Device::CPU, op_kl_div_softmax_backward);
MVQ_OP_ATTRS("kl_div_softmax_backward", "temperature");
MVQ_REGISTER_OP("l1_loss", Device::CPU, op_l1_loss);
MVQ_OP_ATTRS("l1_loss", "reduction");
MVQ_REGISTER_OP("l1_loss_backward", Device::CPU, op_l1_loss_backward);
MVQ_OP_ATTRS("l1_loss_backward", "reduction");
MVQ_REGISTER_OP("mse_loss", Device::CPU, op_mse_loss);
MVQ_OP_ATTRS("mse_loss", "reduction");
MVQ_REGISTER_OP("mse_loss_backward", Device::CPU, op_mse_loss_backward);
MVQ_OP_ATTRS("mse_loss_backward", "reduction");

}  // namespace mvq
