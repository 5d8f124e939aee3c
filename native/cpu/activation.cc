// Element-wise activations and their backward ops: gelu (erf or tanh form), silu, leaky_relu,
// swiglu (silu(a) * b, the LlamaGen FFN gate).
//
// exp-based forms run on an AVX2 expf accurate to ~1 ulp (nn_common.h); the erf form uses
// std::erf in float64 and rounds once.
#include <cmath>

#include "../core/op.h"
#include "../core/parallel.h"
#include "nn_common.h"

namespace mvq {
namespace {

using namespace nn;

constexpr int64_t kGrain = 1 << 14;

Act gelu_kind(const OpArgs& a) {
  std::string s = a.attrs.s("approximate", "none");
  if (s == "none") return Act::GeluErf;
  if (s == "tanh") return Act::GeluTanh;
  throw_type(a.op, ": option 'approximate' must be 'none' or 'tanh', got '", s, "'");
}

Tensor unary(const OpArgs& a, Act act) {
  Tensor x = f32_input(a, 0, "x");
  Tensor y = empty(x.shape());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) { act_array(act, xp + b, yp + b, e - b); });
  return y;
}

Tensor unary_backward(const OpArgs& a, Act act) {
  Tensor x = f32_input(a, 0, "x");
  Tensor gy = f32_input(a, 1, "gy");
  MVQ_CHECK_RANGE(gy.shape() == x.shape(), a.op, ": gy must have the shape of x ", shp(x), ", got ", shp(gy));
  Tensor gx = empty(x.shape());
  const float* xp = x.data<float>();
  const float* gp = gy.data<float>();
  float* op = gx.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) { act_grad_mul(act, xp + b, gp + b, op + b, e - b); });
  return gx;
}

// gelu(x, {approximate: 'none' | 'tanh'}) -> [y]
std::vector<Tensor> op_gelu(const OpArgs& a) { return {unary(a, gelu_kind(a))}; }
// gelu_backward(x, gy, {approximate}) -> [gx]
std::vector<Tensor> op_gelu_backward(const OpArgs& a) { return {unary_backward(a, gelu_kind(a))}; }
// silu(x) = x * sigmoid(x) -> [y]
std::vector<Tensor> op_silu(const OpArgs& a) { return {unary(a, Act::Silu)}; }
// silu_backward(x, gy) -> [gx]
std::vector<Tensor> op_silu_backward(const OpArgs& a) { return {unary_backward(a, Act::Silu)}; }

float slope_attr(const OpArgs& a) {
  double s = a.attrs.f("slope", 0.2);
  MVQ_CHECK_RANGE(std::isfinite(s), a.op, ": option 'slope' must be a finite number, got ", s);
  return static_cast<float>(s);
}

// leaky_relu(x, {slope: 0.2}) -> [y]: x > 0 ? x : slope * x
std::vector<Tensor> op_leaky_relu(const OpArgs& a) {
  float s = slope_attr(a);
  Tensor x = f32_input(a, 0, "x");
  Tensor y = empty(x.shape());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) yp[i] = xp[i] > 0.0f ? xp[i] : xp[i] * s;
  });
  return {y};
}

// leaky_relu_backward(x, gy, {slope}) -> [gx]: gy where x > 0, else slope * gy (torch: x > 0)
std::vector<Tensor> op_leaky_relu_backward(const OpArgs& a) {
  float s = slope_attr(a);
  Tensor x = f32_input(a, 0, "x");
  Tensor gy = f32_input(a, 1, "gy");
  MVQ_CHECK_RANGE(gy.shape() == x.shape(), a.op, ": gy must have the shape of x ", shp(x), ", got ", shp(gy));
  Tensor gx = empty(x.shape());
  const float* xp = x.data<float>();
  const float* gp = gy.data<float>();
  float* op = gx.data<float>();
  parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) op[i] = xp[i] > 0.0f ? gp[i] : gp[i] * s;
  });
  return {gx};
}

// swiglu(a, b) = silu(a) * b -> [y]
std::vector<Tensor> op_swiglu(const OpArgs& args) {
  Tensor a = f32_input(args, 0, "a");
  Tensor b = f32_input(args, 1, "b");
  MVQ_CHECK_RANGE(a.shape() == b.shape(), "swiglu: b must have the shape of a ", shp(a), ", got ", shp(b));
  Tensor y = empty(a.shape());
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  float* yp = y.data<float>();
  parallel_for(a.numel(), kGrain, [&](int64_t s, int64_t e) {
#ifdef MVQ_NN_AVX2
    map2(ap + s, bp + s, yp + s, e - s, [](__m256 u, __m256 v) { return _mm256_mul_ps(silu_v(u), v); },
         [](float u, float v) { return silu_s(u) * v; });
#else
    for (int64_t i = s; i < e; ++i) yp[i] = silu_s(ap[i]) * bp[i];
#endif
  });
  return {y};
}

// swiglu_backward(a, b, gy) -> [ga, gb]: ga = gy * b * silu'(a), gb = gy * silu(a)
std::vector<Tensor> op_swiglu_backward(const OpArgs& args) {
  Tensor a = f32_input(args, 0, "a");
  Tensor b = f32_input(args, 1, "b");
  Tensor gy = f32_input(args, 2, "gy");
  MVQ_CHECK_RANGE(a.shape() == b.shape(), "swiglu_backward: b must have the shape of a ", shp(a), ", got ", shp(b));
  MVQ_CHECK_RANGE(a.shape() == gy.shape(), "swiglu_backward: gy must have the shape of a ", shp(a), ", got ", shp(gy));
  Tensor ga = empty(a.shape()), gb = empty(a.shape());
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  const float* gp = gy.data<float>();
  float* gap = ga.data<float>();
  float* gbp = gb.data<float>();
  parallel_for(a.numel(), kGrain, [&](int64_t s, int64_t e) {
#ifdef MVQ_NN_AVX2
    int64_t i = s;
    auto block = [](const float* u, const float* v, const float* g, float* oa, float* ob) {
      const __m256 one = _mm256_set1_ps(1.0f);
      __m256 x = _mm256_loadu_ps(u), bv = _mm256_loadu_ps(v), gv = _mm256_loadu_ps(g);
      __m256 sg = sigmoid_v(x);
      __m256 silu = _mm256_mul_ps(x, sg);
      __m256 d = _mm256_mul_ps(sg, _mm256_fmadd_ps(x, _mm256_sub_ps(one, sg), one));
      _mm256_storeu_ps(oa, _mm256_mul_ps(_mm256_mul_ps(gv, bv), d));
      _mm256_storeu_ps(ob, _mm256_mul_ps(gv, silu));
    };
    for (; i + 8 <= e; i += 8) block(ap + i, bp + i, gp + i, gap + i, gbp + i);
    if (i < e) {
      const int64_t r = e - i;
      alignas(32) float tu[8] = {0}, tv[8] = {0}, tg[8] = {0}, ta[8], tb[8];
      std::memcpy(tu, ap + i, r * 4);
      std::memcpy(tv, bp + i, r * 4);
      std::memcpy(tg, gp + i, r * 4);
      block(tu, tv, tg, ta, tb);
      std::memcpy(gap + i, ta, r * 4);
      std::memcpy(gbp + i, tb, r * 4);
    }
#else
    for (int64_t i = s; i < e; ++i) {
      gap[i] = gp[i] * bp[i] * silu_grad_s(ap[i]);
      gbp[i] = gp[i] * silu_s(ap[i]);
    }
#endif
  });
  return {ga, gb};
}

}  // namespace

MVQ_REGISTER_OP("gelu", Device::CPU, op_gelu);
MVQ_OP_ATTRS("gelu", "approximate");
MVQ_REGISTER_OP("gelu_backward", Device::CPU, op_gelu_backward);
MVQ_OP_ATTRS("gelu_backward", "approximate");
MVQ_REGISTER_OP("silu", Device::CPU, op_silu);
MVQ_REGISTER_OP("silu_backward", Device::CPU, op_silu_backward);
MVQ_REGISTER_OP("leaky_relu", Device::CPU, op_leaky_relu);
MVQ_OP_ATTRS("leaky_relu", "slope");
MVQ_REGISTER_OP("leaky_relu_backward", Device::CPU, op_leaky_relu_backward);
MVQ_OP_ATTRS("leaky_relu_backward", "slope");
MVQ_REGISTER_OP("swiglu", Device::CPU, op_swiglu);
MVQ_REGISTER_OP("swiglu_backward", Device::CPU, op_swiglu_backward);

}  // namespace mvq
