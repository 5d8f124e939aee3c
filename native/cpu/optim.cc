// Optimizer, EMA and gradient-clipping ops on the CPU. These ops are IN PLACE by design: they
// update the tensors they are given (parameters, optimizer state, EMA shadows, gradients) and
// return the first of them. Every argument is validated before the first write, so a call that
// throws leaves every tensor unchanged.
//
//   adam_step(param, grad, exp_avg, exp_avg_sq, {lr, beta1, beta2, eps, weight_decay, decoupled, step})
//       One Adam (decoupled = false: weight decay added to the gradient, L2) or AdamW (decoupled =
//       true: param *= 1 - lr * weight_decay first) step for the 1-based `step`, in one pass, with
//       torch 1.13's single-tensor arithmetic in float32:
//         m = m * b1 + (1 - b1) * g                  (fused multiply-add, as torch's vector add_)
//         v = fma((1 - b2) * g, g, v * b2)           (as torch's vectorized addcmul_)
//         denom = sqrt(v) / sqrt(1 - b2^step) + eps
//         p = p + ((-lr / (1 - b1^step)) * m) / denom   (as addcdiv_)
//       Scalars are computed in float64 and rounded to float32 once, as torch does with Python
//       numbers. param, exp_avg and exp_avg_sq must be dense float32 of one shape; grad float32
//       of that shape with any strides; none may overlap another.
//   ema_update(shadow, param, {decay})      shadow -= (1 - decay) * (shadow - param), float32
//       (1 - decay rounded to float32 as torch computes it from a float32 decay).
//   l2_norms(x_0, ..., x_{n-1}) -> float32 [n]
//       sqrt(sum of squares) of each tensor, accumulated in float64 over fixed blocks (the result
//       does not depend on the thread count). Not in place.
//   scale_inplace(x_0, ..., x_{n-1}, {value})   x_i *= value (float32, any strides; any value, NaN
//       included, as torch's mul_). Inputs that are the same view (same memory, shape and
//       strides) are scaled once; other overlaps are refused.
//   copy_into(dst, src)                      dst[...] = src[...] (same shape and dtype, any strides).
//   libm_cos({x: number[]}) -> int64 [n]      the C library's cos of each float64 x, returned as the
//       IEEE-754 bit patterns (the core has no float64 dtype). Lr schedules use it so that their
//       cosines are the very values the reference's Python (the same C library) computes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ops_common.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace mvq {
namespace {

constexpr int64_t kGrain = 1 << 14;
constexpr int64_t kNormBlock = 1 << 15;

// Byte span [lo, hi) touched by a CPU tensor view (empty for numel 0).
struct Span {
  const char* lo = nullptr;
  const char* hi = nullptr;
  bool empty() const { return lo == hi; }
};
Span span_of(const Tensor& t) {
  Span s;
  if (t.numel() == 0) return s;
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype()));
  int64_t mn = 0, mx = 0;
  for (int d = 0; d < t.dim(); ++d) {
    const int64_t ext = (t.shape()[d] - 1) * t.strides()[d];
    if (ext < 0) mn += ext;
    else mx += ext;
  }
  const char* base = static_cast<const char*>(t.raw());
  s.lo = base + mn * es;
  s.hi = base + (mx + 1) * es;
  return s;
}
bool overlaps(const Span& a, const Span& b) { return !a.empty() && !b.empty() && a.lo < b.hi && b.lo < a.hi; }

bool same_view(const Tensor& a, const Tensor& b) {
  return a.raw() == b.raw() && a.dtype() == b.dtype() && a.shape() == b.shape() && a.strides() == b.strides();
}

double finite_attr(const OpArgs& a, const char* name, double lo, double hi, bool hi_open = false) {
  const double v = a.attrs.f(name);
  const bool ok = std::isfinite(v) && v >= lo && (hi_open ? v < hi : v <= hi);
  MVQ_CHECK_RANGE(ok, a.op, ": option '", name, "' must be a finite number in [", lo, ", ", hi, hi_open ? ")" : "]", ", got ", v);
  return v;
}

const Tensor& cpu_f32(const OpArgs& a, size_t i, const char* name) {
  const Tensor& t = a.input(i, name, DType::F32);
  MVQ_CHECK_TYPE(t.device() == Device::CPU, a.op, ": '", name, "' must be a CPU tensor");
  return t;
}

// ------------------------------------------------------------------ adam_step

struct AdamScalars {
  float b1, omb1, b2, omb2, wd, decay, bc2_sqrt, eps, neg_step_size;
  bool l2, decoupled;
};

// Rounds `x` here: an empty asm that claims to modify x keeps the compiler from fusing the
// multiply that produced it into a following add (floating-point contraction is on by default
// in GCC's C++ modes), so exactly the operations written below are rounded, in float32.
inline float rounded(float x) {
#if defined(__GNUC__)
  asm volatile("" : "+x"(x));
#endif
  return x;
}

// The element loop. The fused multiply-adds are explicit where torch's vectorized CPU kernels
// fuse (add_ with alpha, addcmul_, and the L2 grad.add(param, alpha)); every other product is
// rounded before it is added. With this, results are bit-identical to torch 1.13's CPU Adam /
// AdamW (checked in test/optim.test.ts). One instance per weight-decay mode keeps the loop
// branch-free.
#if defined(__AVX2__) && defined(__FMA__)
inline __m256 rounded8(__m256 x) {
  asm volatile("" : "+x"(x));
  return x;
}
#endif

template <bool L2, bool DECOUPLED>
void adam_kernel(float* p, const float* g, float* m, float* v, int64_t n, const AdamScalars s) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // The same operations, eight lanes at a time (bit-identical to the scalar loop below).
  const __m256 b1 = _mm256_set1_ps(s.b1), omb1 = _mm256_set1_ps(s.omb1), b2 = _mm256_set1_ps(s.b2),
               omb2 = _mm256_set1_ps(s.omb2), wd = _mm256_set1_ps(s.wd), decay = _mm256_set1_ps(s.decay),
               bc2 = _mm256_set1_ps(s.bc2_sqrt), eps = _mm256_set1_ps(s.eps), nss = _mm256_set1_ps(s.neg_step_size);
  for (; i + 8 <= n; i += 8) {
    __m256 pi = _mm256_loadu_ps(p + i);
    __m256 gi = _mm256_loadu_ps(g + i);
    if (L2) gi = _mm256_fmadd_ps(pi, wd, gi);
    if (DECOUPLED) pi = rounded8(_mm256_mul_ps(pi, decay));
    const __m256 mi = _mm256_fmadd_ps(gi, omb1, rounded8(_mm256_mul_ps(_mm256_loadu_ps(m + i), b1)));
    const __m256 vi = _mm256_fmadd_ps(rounded8(_mm256_mul_ps(omb2, gi)), gi, rounded8(_mm256_mul_ps(_mm256_loadu_ps(v + i), b2)));
    const __m256 denom = _mm256_add_ps(rounded8(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2)), eps);
    const __m256 u = rounded8(_mm256_mul_ps(nss, mi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_div_ps(u, denom)));
  }
#endif
  for (; i < n; ++i) {
    float pi = p[i];
    float gi = g[i];
    if (L2) gi = std::fma(pi, s.wd, gi);
    if (DECOUPLED) pi = rounded(pi * s.decay);
    const float mi = std::fma(gi, s.omb1, rounded(m[i] * s.b1));
    const float vi = std::fma(rounded(s.omb2 * gi), gi, rounded(v[i] * s.b2));
    const float denom = rounded(std::sqrt(vi) / s.bc2_sqrt) + s.eps;
    const float u = rounded(s.neg_step_size * mi);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + u / denom;
  }
}

void adam_range(float* p, const float* g, float* m, float* v, int64_t n, const AdamScalars& s) {
  if (s.l2) adam_kernel<true, false>(p, g, m, v, n, s);
  else if (s.decoupled) adam_kernel<false, true>(p, g, m, v, n, s);
  else adam_kernel<false, false>(p, g, m, v, n, s);
}

std::vector<Tensor> op_adam_step(const OpArgs& a) {
  const Tensor& param = cpu_f32(a, 0, "param");
  const Tensor& grad0 = cpu_f32(a, 1, "grad");
  const Tensor& m = cpu_f32(a, 2, "exp_avg");
  const Tensor& v = cpu_f32(a, 3, "exp_avg_sq");
  const char* names[4] = {"param", "grad", "exp_avg", "exp_avg_sq"};
  const Tensor* ts[4] = {&param, &grad0, &m, &v};
  for (int k = 1; k < 4; ++k)
    MVQ_CHECK_RANGE(ts[k]->shape() == param.shape(), a.op, ": '", names[k], "' must have the shape of 'param' ",
                    param.shape_str(), ", got ", ts[k]->shape_str());
  for (int k : {0, 2, 3})
    MVQ_CHECK_RANGE(ts[k]->is_contiguous(), a.op, ": '", names[k], "' must be a dense (contiguous) tensor, it is updated in place");
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      MVQ_CHECK_RANGE(!overlaps(span_of(*ts[i]), span_of(*ts[j])), a.op, ": '", names[i], "' and '", names[j],
                      "' must not share memory");
  const double lr = finite_attr(a, "lr", 0, std::numeric_limits<double>::max());
  const double beta1 = finite_attr(a, "beta1", 0, 1, true);
  const double beta2 = finite_attr(a, "beta2", 0, 1, true);
  const double eps = finite_attr(a, "eps", 0, std::numeric_limits<double>::max());
  const double wd = a.attrs.has("weight_decay") ? finite_attr(a, "weight_decay", 0, std::numeric_limits<double>::max()) : 0.0;
  const bool decoupled = a.attrs.b("decoupled", false);
  const int64_t step = a.attrs.i("step");
  MVQ_CHECK_RANGE(step >= 1, a.op, ": option 'step' must be an integer >= 1 (1-based), got ", step);

  AdamScalars s;
  s.b1 = static_cast<float>(beta1);
  s.omb1 = static_cast<float>(1.0 - beta1);
  s.b2 = static_cast<float>(beta2);
  s.omb2 = static_cast<float>(1.0 - beta2);
  s.wd = static_cast<float>(wd);
  s.l2 = !decoupled && wd != 0.0;
  s.decoupled = decoupled && wd != 0.0;
  s.decay = static_cast<float>(1.0 - lr * wd);
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  s.eps = static_cast<float>(eps);
  s.neg_step_size = static_cast<float>(-(lr / bc1));

  // The only allocation (a dense copy of a strided grad) happens before any write.
  const Tensor grad = grad0.contiguous();
  float* pp = param.data<float>();
  const float* gp = grad.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  parallel_for(param.numel(), kGrain, [&](int64_t b, int64_t e) { adam_range(pp + b, gp + b, mp + b, vp + b, e - b, s); });
  return {param};
}

// ------------------------------------------------------------------ ema_update

void ema_kernel(float* sh, const float* p, int64_t n, float omd) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 o = _mm256_set1_ps(omd);
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(sh + i);
    const __m256 d = _mm256_sub_ps(x, _mm256_loadu_ps(p + i));
    _mm256_storeu_ps(sh + i, _mm256_sub_ps(x, rounded8(_mm256_mul_ps(o, d))));
  }
#endif
  for (; i < n; ++i) {
    const float d = sh[i] - p[i];
    sh[i] = sh[i] - rounded(omd * d);
  }
}

std::vector<Tensor> op_ema_update(const OpArgs& a) {
  const Tensor& shadow = cpu_f32(a, 0, "shadow");
  const Tensor& param0 = cpu_f32(a, 1, "param");
  MVQ_CHECK_RANGE(param0.shape() == shadow.shape(), a.op, ": 'param' must have the shape of 'shadow' ", shadow.shape_str(),
                  ", got ", param0.shape_str());
  MVQ_CHECK_RANGE(shadow.is_contiguous(), a.op, ": 'shadow' must be a dense (contiguous) tensor, it is updated in place");
  MVQ_CHECK_RANGE(!overlaps(span_of(shadow), span_of(param0)), a.op, ": 'shadow' and 'param' must not share memory");
  const double decay = finite_attr(a, "decay", 0, 1);
  const float omd = 1.0f - static_cast<float>(decay);
  const Tensor param = param0.contiguous();
  float* sp = shadow.data<float>();
  const float* pp = param.data<float>();
  parallel_for(shadow.numel(), kGrain, [&](int64_t b, int64_t e) { ema_kernel(sp + b, pp + b, e - b, omd); });
  return {shadow};
}

// ------------------------------------------------------------------ l2_norms

double block_sumsq(const float* x, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(x[i]) * x[i];
    s1 += static_cast<double>(x[i + 1]) * x[i + 1];
    s2 += static_cast<double>(x[i + 2]) * x[i + 2];
    s3 += static_cast<double>(x[i + 3]) * x[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(x[i]) * x[i];
  return (s0 + s1) + (s2 + s3);
}

std::vector<Tensor> op_l2_norms(const OpArgs& a) {
  const size_t n = a.in.size();
  for (size_t i = 0; i < n; ++i) {
    const std::string nm = "x[" + std::to_string(i) + "]";
    cpu_f32(a, i, nm.c_str());
  }
  Tensor out = empty({static_cast<int64_t>(n)});
  float* op = out.data<float>();
  for (size_t i = 0; i < n; ++i) {
    const Tensor x = a.in[i].contiguous();
    const float* xp = x.data<float>();
    const int64_t len = x.numel();
    const int64_t nb = (len + kNormBlock - 1) / kNormBlock;
    std::vector<double> part(static_cast<size_t>(nb), 0.0);
    parallel_for(nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t s = k * kNormBlock;
        part[k] = block_sumsq(xp + s, std::min(kNormBlock, len - s));
      }
    });
    double tot = 0;
    for (double p : part) tot += p;
    op[i] = static_cast<float>(std::sqrt(tot));
  }
  return {out};
}

// ------------------------------------------------------------------ scale_inplace

std::vector<Tensor> op_scale_inplace(const OpArgs& a) {
  const size_t n = a.in.size();
  std::vector<bool> dup(n, false);
  for (size_t i = 0; i < n; ++i) {
    const std::string nm = "x[" + std::to_string(i) + "]";
    cpu_f32(a, i, nm.c_str());
  }
  for (size_t i = 0; i < n; ++i) {
    if (dup[i]) continue;
    for (size_t j = i + 1; j < n; ++j) {
      if (dup[j]) continue;
      if (same_view(a.in[i], a.in[j])) {
        dup[j] = true;
        continue;
      }
      MVQ_CHECK_RANGE(!overlaps(span_of(a.in[i]), span_of(a.in[j])), a.op, ": 'x[", i, "]' and 'x[", j,
                      "]' share memory without being the same view (each element would be scaled an unclear number of times)");
    }
  }
  const double value = a.attrs.f("value");
  const float s = static_cast<float>(value);
  for (size_t i = 0; i < n; ++i) {
    if (dup[i]) continue;
    const Tensor& x = a.in[i];
    if (x.numel() == 0) continue;
    cpu::NdIter it = cpu::NdIter::make(x.shape(), {x.strides()});
    float* xp = x.data<float>();
    const int64_t st = it.inner_stride(0);
    it.for_rows(kGrain, [&](const int64_t* o, int64_t len) {
      float* r = xp + o[0];
      if (st == 1) {
        for (int64_t k = 0; k < len; ++k) r[k] *= s;
      } else {
        for (int64_t k = 0; k < len; ++k) r[k * st] *= s;
      }
    });
  }
  return n ? std::vector<Tensor>{a.in[0]} : std::vector<Tensor>{};
}

// ------------------------------------------------------------------ copy_into

std::vector<Tensor> op_copy_into(const OpArgs& a) {
  const Tensor& dst = a.input(0, "dst");
  const Tensor& src = a.input(1, "src");
  MVQ_CHECK_TYPE(dst.device() == Device::CPU && src.device() == Device::CPU, a.op, ": 'dst' and 'src' must be CPU tensors");
  MVQ_CHECK_TYPE(src.dtype() == dst.dtype(), a.op, ": 'src' must have the dtype of 'dst' (", dtype_name(dst.dtype()), "), got ",
                 dtype_name(src.dtype()));
  MVQ_CHECK_RANGE(src.shape() == dst.shape(), a.op, ": 'src' must have the shape of 'dst' ", dst.shape_str(), ", got ",
                  src.shape_str());
  if (same_view(dst, src)) return {dst};
  // A zero stride in dst would write one element several times.
  for (int d = 0; d < dst.dim(); ++d)
    MVQ_CHECK_RANGE(dst.shape()[d] <= 1 || dst.strides()[d] != 0, a.op, ": 'dst' must not be a broadcast (stride 0) view");
  // An overlapping source is copied first, so the result is as if read before any write.
  const Tensor s = overlaps(span_of(dst), span_of(src)) ? cpu::materialize(src) : src;
  cpu::strided_copy(dst, s);
  return {dst};
}

// ------------------------------------------------------------------ libm_cos

std::vector<Tensor> op_libm_cos(const OpArgs& a) {
  MVQ_CHECK_TYPE(a.in.empty(), a.op, ": takes no tensor inputs, got ", a.in.size());
  const std::vector<double> x = a.attrs.floats("x", {});
  Tensor out = empty({static_cast<int64_t>(x.size())}, DType::I64);
  int64_t* op = out.data<int64_t>();
  for (size_t i = 0; i < x.size(); ++i) {
    const double c = std::cos(x[i]);
    std::memcpy(&op[i], &c, sizeof c);
  }
  return {out};
}

}  // namespace

MVQ_REGISTER_OP("libm_cos", Device::CPU, op_libm_cos);
MVQ_OP_ATTRS("libm_cos", "x");
MVQ_REGISTER_OP("adam_step", Device::CPU, op_adam_step);
MVQ_OP_ATTRS("adam_step", "beta1", "beta2", "decoupled", "eps", "lr", "step", "weight_decay");
MVQ_REGISTER_OP("ema_update", Device::CPU, op_ema_update);
MVQ_OP_ATTRS("ema_update", "decay");
MVQ_REGISTER_OP("l2_norms", Device::CPU, op_l2_norms);
MVQ_REGISTER_OP("scale_inplace", Device::CPU, op_scale_inplace);
MVQ_OP_ATTRS("scale_inplace", "value");
MVQ_REGISTER_OP("copy_into", Device::CPU, op_copy_into);

}  // namespace mvq
