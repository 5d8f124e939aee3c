// Shared helpers for the CPU nn families (norm, activation, softmax, loss): the AVX2 expf of
// vexp.h (accurate to about 1 ulp), array appliers that handle tails without a scalar code path
// (so a value's result never depends on its position), float64 moments of float32 data, and
// argument checks.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "../core/op.h"
#include "vexp.h"

namespace mvq {
namespace nn {

// Applies a vector functor f(__m256...) -> __m256 over arrays of n floats: full blocks of 8 in
// place, the tail through a padded block so every element goes through the same code.
// In the non-AVX2 build the scalar functor g is used instead.
template <class FV, class FS>
inline void map1(const float* a, float* y, int64_t n, FV fv, FS fs) {
#ifdef MVQ_NN_AVX2
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fv(_mm256_loadu_ps(a + i)));
  if (i < n) {
    alignas(32) float ta[8] = {0}, ty[8];
    std::memcpy(ta, a + i, (n - i) * sizeof(float));
    _mm256_store_ps(ty, fv(_mm256_load_ps(ta)));
    std::memcpy(y + i, ty, (n - i) * sizeof(float));
  }
  (void)fs;
#else
  for (int64_t i = 0; i < n; ++i) y[i] = fs(a[i]);
  (void)fv;
#endif
}
template <class FV, class FS>
inline void map2(const float* a, const float* b, float* y, int64_t n, FV fv, FS fs) {
#ifdef MVQ_NN_AVX2
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fv(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) {
    alignas(32) float ta[8] = {0}, tb[8] = {0}, ty[8];
    std::memcpy(ta, a + i, (n - i) * sizeof(float));
    std::memcpy(tb, b + i, (n - i) * sizeof(float));
    _mm256_store_ps(ty, fv(_mm256_load_ps(ta), _mm256_load_ps(tb)));
    std::memcpy(y + i, ty, (n - i) * sizeof(float));
  }
  (void)fs;
#else
  for (int64_t i = 0; i < n; ++i) y[i] = fs(a[i], b[i]);
  (void)fv;
#endif
}

// Scalar exp matching the vector one closely enough for fallback builds.
inline float sexp(float x) { return std::exp(x); }

// exp over an array (y may alias a).
inline void exp_array(const float* a, float* y, int64_t n) {
#ifdef MVQ_NN_AVX2
  map1(a, y, n, [](__m256 v) { return vexp(v); }, [](float v) { return sexp(v); });
#else
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(a[i]);
#endif
}

// Sum of x[0..n) in float64.
inline double sum_f64(const float* x, int64_t n) {
#ifdef MVQ_NN_AVX2
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm_loadu_ps(x + i)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4)));
    s2 = _mm256_add_pd(s2, _mm256_cvtps_pd(_mm_loadu_ps(x + i + 8)));
    s3 = _mm256_add_pd(s3, _mm256_cvtps_pd(_mm_loadu_ps(x + i + 12)));
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
  double s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) s += x[i];
  return s;
#else
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
#endif
}

// Sum of (x - m)^2 in float64.
inline double sqdev_f64(const float* x, int64_t n, double m) {
#ifdef MVQ_NN_AVX2
  const __m256d mv = _mm256_set1_pd(m);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i)), mv);
    __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i + 4)), mv);
    __m256d d2 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i + 8)), mv);
    __m256d d3 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i + 12)), mv);
    s0 = _mm256_fmadd_pd(d0, d0, s0);
    s1 = _mm256_fmadd_pd(d1, d1, s1);
    s2 = _mm256_fmadd_pd(d2, d2, s2);
    s3 = _mm256_fmadd_pd(d3, d3, s3);
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
  double s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) {
    double d = x[i] - m;
    s += d * d;
  }
  return s;
#else
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = x[i] - m;
    s += d * d;
  }
  return s;
#endif
}

// Sum of a[i] * b[i] in float64.
inline double dot_f64(const float* a, const float* b, int64_t n) {
#ifdef MVQ_NN_AVX2
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i)), _mm256_cvtps_pd(_mm_loadu_ps(b + i)), s0);
    s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 4)), _mm256_cvtps_pd(_mm_loadu_ps(b + i + 4)), s1);
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(s0, s1));
  double s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
#else
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
#endif
}

// Float32 input check: defined, float32, CPU. Returns a dense copy when needed.
inline Tensor f32_input(const OpArgs& a, size_t i, const char* name) {
  const Tensor& t = a.input(i, name, DType::F32);
  return t.contiguous();
}

inline std::string shp(const Tensor& t) { return shape_to_string(t.shape()); }

// Reduction attr: 0 none, 1 mean, 2 sum.
inline int reduction_attr(const OpArgs& a) {
  std::string r = a.attrs.s("reduction", "mean");
  if (r == "none") return 0;
  if (r == "mean") return 1;
  if (r == "sum") return 2;
  throw_type(a.op, ": option 'reduction' must be 'mean', 'sum' or 'none', got '", r, "'");
}

// Normalizes dim against rank, naming the op.
inline int norm_dim(const OpArgs& a, int64_t dim, int rank) {
  MVQ_CHECK_RANGE(rank > 0, a.op, ": x must have at least one dimension");
  MVQ_CHECK_RANGE(dim >= -rank && dim < rank, a.op, ": option 'dim' must be in [", -rank, ", ", rank - 1, "], got ", dim);
  return static_cast<int>(dim < 0 ? dim + rank : dim);
}

// Activation kinds fused into group_norm and used by the activation ops.
enum class Act { None, Silu, GeluErf, GeluTanh };

inline Act act_attr(const OpArgs& a, const char* key) {
  std::string s = a.attrs.s(key, "none");
  if (s == "none") return Act::None;
  if (s == "silu") return Act::Silu;
  if (s == "gelu") return Act::GeluErf;
  if (s == "gelu_tanh") return Act::GeluTanh;
  throw_type(a.op, ": option '", key, "' must be 'none', 'silu', 'gelu' or 'gelu_tanh', got '", s, "'");
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// --- activation values and derivatives, scalar and 8-wide ---
// Sigmoids use e = exp(-|x|) (never overflows): sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e), so
// silu(-90) = -7.3e-38 is still right. The erf GELU uses Phi(x) = erfc(-x / sqrt 2) / 2 in
// float64, accurate in both tails.
inline float sigmoid_s(float x) {
  const float e = std::exp(-std::fabs(x));
  return (x >= 0 ? 1.0f : e) / (1.0f + e);
}
inline float silu_s(float x) {
  const float e = std::exp(-std::fabs(x));
  return (x >= 0 ? x : x * e) / (1.0f + e);
}
inline float silu_grad_s(float x) {
  const float s = sigmoid_s(x);
  return s * (1.0f + x * (1.0f - s));
}
inline float gelu_erf_s(float x) { return static_cast<float>(0.5 * x * std::erfc(-x * kInvSqrt2)); }
inline float gelu_erf_grad_s(float x) {
  double xd = x;
  return static_cast<float>(0.5 * std::erfc(-xd * kInvSqrt2) + xd * std::exp(-0.5 * xd * xd) * kInvSqrt2Pi);
}
// tanh GELU: 0.5 x (1 + tanh(u)) == x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3).
inline float gelu_tanh_s(float x) {
  float u2 = 2.0f * kSqrt2OverPi * (x + kGeluC * x * x * x);
  return x * sigmoid_s(u2);
}
inline float gelu_tanh_grad_s(float x) {
  float u2 = 2.0f * kSqrt2OverPi * (x + kGeluC * x * x * x);
  float s = sigmoid_s(u2);
  // d/dx [x s(2u)] = s + x * 2 s (1-s) * du/dx
  return s + 2.0f * x * s * (1.0f - s) * kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
}

#ifdef MVQ_NN_AVX2
inline __m256 vabs(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
// num(x) / (1 + e), e = exp(-|x|), num = x >= 0 ? a : a * e  ==  a * sigmoid(x)
inline __m256 mul_sigmoid_v(__m256 a, __m256 x) {
  __m256 e = vexp(_mm256_sub_ps(_mm256_setzero_ps(), vabs(x)));
  __m256 num = _mm256_blendv_ps(a, _mm256_mul_ps(a, e), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
inline __m256 sigmoid_v(__m256 x) { return mul_sigmoid_v(_mm256_set1_ps(1.0f), x); }
inline __m256 silu_v(__m256 x) { return mul_sigmoid_v(x, x); }
inline __m256 silu_grad_v(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 s = sigmoid_v(x);
  return _mm256_mul_ps(s, _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one));
}
inline __m256 gelu_u2_v(__m256 x) {
  __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
  return _mm256_mul_ps(_mm256_set1_ps(2.0f * kSqrt2OverPi), _mm256_fmadd_ps(_mm256_set1_ps(kGeluC), x3, x));
}
inline __m256 gelu_tanh_v(__m256 x) { return mul_sigmoid_v(x, gelu_u2_v(x)); }
inline __m256 gelu_tanh_grad_v(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 x2 = _mm256_mul_ps(x, x);
  __m256 s = sigmoid_v(gelu_u2_v(x));
  __m256 du = _mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), _mm256_fmadd_ps(_mm256_set1_ps(3.0f * kGeluC), x2, one));
  __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), x), _mm256_mul_ps(s, _mm256_sub_ps(one, s)));
  return _mm256_fmadd_ps(t, du, s);
}
#endif

// y[i] = act(x[i]) over an array (y may alias x).
inline void act_array(Act act, const float* x, float* y, int64_t n) {
  switch (act) {
    case Act::None:
      if (x != y) std::memcpy(y, x, n * sizeof(float));
      break;
    case Act::Silu:
#ifdef MVQ_NN_AVX2
      map1(x, y, n, silu_v, silu_s);
#else
      for (int64_t i = 0; i < n; ++i) y[i] = silu_s(x[i]);
#endif
      break;
    case Act::GeluTanh:
#ifdef MVQ_NN_AVX2
      map1(x, y, n, gelu_tanh_v, gelu_tanh_s);
#else
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh_s(x[i]);
#endif
      break;
    case Act::GeluErf:
      for (int64_t i = 0; i < n; ++i) y[i] = gelu_erf_s(x[i]);
      break;
  }
}

// g[i] *= act'(z[i]) (g may alias nothing else; z is the pre-activation).
inline void act_grad_mul(Act act, const float* z, const float* gy, float* g, int64_t n) {
  switch (act) {
    case Act::None:
      if (gy != g) std::memcpy(g, gy, n * sizeof(float));
      break;
    case Act::Silu:
#ifdef MVQ_NN_AVX2
      map2(z, gy, g, n, [](__m256 a, __m256 b) { return _mm256_mul_ps(silu_grad_v(a), b); },
           [](float a, float b) { return silu_grad_s(a) * b; });
#else
      for (int64_t i = 0; i < n; ++i) g[i] = silu_grad_s(z[i]) * gy[i];
#endif
      break;
    case Act::GeluTanh:
#ifdef MVQ_NN_AVX2
      map2(z, gy, g, n, [](__m256 a, __m256 b) { return _mm256_mul_ps(gelu_tanh_grad_v(a), b); },
           [](float a, float b) { return gelu_tanh_grad_s(a) * b; });
#else
      for (int64_t i = 0; i < n; ++i) g[i] = gelu_tanh_grad_s(z[i]) * gy[i];
#endif
      break;
    case Act::GeluErf:
      for (int64_t i = 0; i < n; ++i) g[i] = gelu_erf_grad_s(z[i]) * gy[i];
      break;
  }
}

}  // namespace nn
}  // namespace mvq
