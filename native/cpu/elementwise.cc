// Element-wise float32 ops with NumPy broadcasting: binary arithmetic, scalar forms, unary math,
// fused addcmul, where, and the unary backward helpers. Every op reads its inputs through their
// own strides (no copies for permuted views or broadcasts) via NdIter, which collapses dims so
// dense same-shape ops are one flat loop and per-channel / per-row broadcasts get a scalar-or-
// vector inner loop the compiler vectorizes.
#include <cmath>
#include <limits>

#include "ops_common.h"

namespace mvq {
namespace {

using cpu::NdIter;
constexpr int64_t kGrain = 1 << 15;

const Tensor& f32_input(const OpArgs& a, size_t i, const char* name) { return a.input(i, name, DType::F32); }

// ---------------------------------------------------------------- unary

template <class F>
Tensor unary_map(const Tensor& x, F f) {
  Tensor y = empty(x.shape());
  NdIter it = NdIter::make(x.shape(), {contiguous_strides(x.shape()), x.strides()});
  float* yp = y.data<float>();
  const float* xp = x.data<float>();
  const int64_t sx = it.inner_stride(1);
  it.for_rows(kGrain, [&](const int64_t* o, int64_t n) {
    float* yo = yp + o[0];
    const float* xo = xp + o[1];
    if (sx == 1) {
      for (int64_t i = 0; i < n; ++i) yo[i] = f(xo[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) yo[i] = f(xo[i * sx]);
    }
  });
  return y;
}

// ---------------------------------------------------------------- binary

template <class F>
Tensor binary_map(const std::string& op, const Tensor& a, const Tensor& b, F f) {
  const Shape out = cpu::broadcast_shapes(op, {a.shape(), b.shape()});
  Tensor y = empty(out);
  NdIter it = NdIter::make(out, {contiguous_strides(out), cpu::broadcast_strides(a, out), cpu::broadcast_strides(b, out)});
  float* yp = y.data<float>();
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  const int64_t sa = it.inner_stride(1), sb = it.inner_stride(2);
  it.for_rows(kGrain, [&](const int64_t* o, int64_t n) {
    float* yo = yp + o[0];
    const float* ao = ap + o[1];
    const float* bo = bp + o[2];
    if (sa == 1 && sb == 1) {
      for (int64_t i = 0; i < n; ++i) yo[i] = f(ao[i], bo[i]);
    } else if (sa == 1 && sb == 0) {
      const float bv = *bo;
      for (int64_t i = 0; i < n; ++i) yo[i] = f(ao[i], bv);
    } else if (sa == 0 && sb == 1) {
      const float av = *ao;
      for (int64_t i = 0; i < n; ++i) yo[i] = f(av, bo[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) yo[i] = f(ao[i * sa], bo[i * sb]);
    }
  });
  return y;
}

template <class F>
std::vector<Tensor> binary_op(const OpArgs& a, F f) {
  return {binary_map(a.op, f32_input(a, 0, "a"), f32_input(a, 1, "b"), f)};
}

std::vector<Tensor> op_add(const OpArgs& a) {
  const float alpha = static_cast<float>(a.attrs.f("alpha", 1.0));
  if (alpha == 1.0f) return binary_op(a, [](float x, float y) { return x + y; });
  return binary_op(a, [alpha](float x, float y) { return x + alpha * y; });
}
std::vector<Tensor> op_sub(const OpArgs& a) {
  const float alpha = static_cast<float>(a.attrs.f("alpha", 1.0));
  if (alpha == 1.0f) return binary_op(a, [](float x, float y) { return x - y; });
  return binary_op(a, [alpha](float x, float y) { return x - alpha * y; });
}
std::vector<Tensor> op_mul(const OpArgs& a) { return binary_op(a, [](float x, float y) { return x * y; }); }
std::vector<Tensor> op_div(const OpArgs& a) { return binary_op(a, [](float x, float y) { return x / y; }); }
// NaN-propagating like torch.maximum / torch.minimum.
std::vector<Tensor> op_maximum(const OpArgs& a) {
  return binary_op(a, [](float x, float y) { return (x != x || x > y) ? x : (y != y ? y : (x == y ? x : y)); });
}
std::vector<Tensor> op_minimum(const OpArgs& a) {
  return binary_op(a, [](float x, float y) { return (x != x || x < y) ? x : (y != y ? y : (x == y ? x : y)); });
}

// Backward helpers (saved tensor, grad_out) -> grad_in; broadcasting as the forward ops.
std::vector<Tensor> op_sigmoid_backward(const OpArgs& a) {
  return {binary_map(a.op, f32_input(a, 0, "y"), f32_input(a, 1, "gy"), [](float y, float g) { return g * y * (1.0f - y); })};
}
std::vector<Tensor> op_tanh_backward(const OpArgs& a) {
  return {binary_map(a.op, f32_input(a, 0, "y"), f32_input(a, 1, "gy"), [](float y, float g) { return g * (1.0f - y * y); })};
}
std::vector<Tensor> op_abs_backward(const OpArgs& a) {
  return {binary_map(a.op, f32_input(a, 0, "x"), f32_input(a, 1, "gy"), [](float x, float g) {
    return x > 0 ? g : (x < 0 ? -g : 0.0f);
  })};
}
// Gradient passes where min <= x <= max (as torch.clamp's backward).
std::vector<Tensor> op_clamp_backward(const OpArgs& a) {
  const float lo = a.attrs.has("min") ? static_cast<float>(a.attrs.f("min")) : -std::numeric_limits<float>::infinity();
  const float hi = a.attrs.has("max") ? static_cast<float>(a.attrs.f("max")) : std::numeric_limits<float>::infinity();
  return {binary_map(a.op, f32_input(a, 0, "x"), f32_input(a, 1, "gy"), [lo, hi](float x, float g) {
    return (x >= lo && x <= hi) ? g : 0.0f;
  })};
}

// ---------------------------------------------------------------- unary ops

#define MVQ_UNARY(fname, expr)                                 \
  std::vector<Tensor> fname(const OpArgs& a) {                 \
    return {unary_map(f32_input(a, 0, "x"), [](float v) { return expr; })}; \
  }
MVQ_UNARY(op_neg, -v)
MVQ_UNARY(op_exp, std::exp(v))
MVQ_UNARY(op_log, std::log(v))
MVQ_UNARY(op_sqrt, std::sqrt(v))
MVQ_UNARY(op_rsqrt, 1.0f / std::sqrt(v))
MVQ_UNARY(op_abs, std::fabs(v))
MVQ_UNARY(op_sign, v > 0 ? 1.0f : (v < 0 ? -1.0f : (v == 0 ? 0.0f : v)))
MVQ_UNARY(op_tanh, std::tanh(v))
MVQ_UNARY(op_sigmoid, v >= 0 ? 1.0f / (1.0f + std::exp(-v)) : std::exp(v) / (1.0f + std::exp(v)))
#undef MVQ_UNARY

std::vector<Tensor> op_clamp(const OpArgs& a) {
  const bool has_lo = a.attrs.has("min"), has_hi = a.attrs.has("max");
  MVQ_CHECK_TYPE(has_lo || has_hi, "clamp: at least one of options 'min' and 'max' must be given");
  const float lo = has_lo ? static_cast<float>(a.attrs.f("min")) : -std::numeric_limits<float>::infinity();
  const float hi = has_hi ? static_cast<float>(a.attrs.f("max")) : std::numeric_limits<float>::infinity();
  // torch.clamp: min(max(x, lo), hi); NaN stays NaN.
  return {unary_map(f32_input(a, 0, "x"), [lo, hi](float v) { return v != v ? v : std::min(std::max(v, lo), hi); })};
}

std::vector<Tensor> op_scale(const OpArgs& a) {
  const float m = static_cast<float>(a.attrs.f("mul", 1.0)), c = static_cast<float>(a.attrs.f("add", 0.0));
  return {unary_map(f32_input(a, 0, "x"), [m, c](float v) { return v * m + c; })};
}

std::vector<Tensor> op_pow_scalar(const OpArgs& a) {
  const double p = a.attrs.f("p");
  const Tensor& x = f32_input(a, 0, "x");
  if (p == 2.0) return {unary_map(x, [](float v) { return v * v; })};
  if (p == 1.0) return {unary_map(x, [](float v) { return v; })};
  if (p == 0.5) return {unary_map(x, [](float v) { return std::sqrt(v); })};
  if (p == -1.0) return {unary_map(x, [](float v) { return 1.0f / v; })};
  const float pf = static_cast<float>(p);
  return {unary_map(x, [pf](float v) { return std::pow(v, pf); })};
}

// ---------------------------------------------------------------- ternary

// addcmul(a, b, c, {value}) = a + value * b * c, broadcasting all three.
std::vector<Tensor> op_addcmul(const OpArgs& args) {
  const Tensor& a = f32_input(args, 0, "a");
  const Tensor& b = f32_input(args, 1, "b");
  const Tensor& c = f32_input(args, 2, "c");
  const float v = static_cast<float>(args.attrs.f("value", 1.0));
  const Shape out = cpu::broadcast_shapes(args.op, {a.shape(), b.shape(), c.shape()});
  Tensor y = empty(out);
  NdIter it = NdIter::make(out, {contiguous_strides(out), cpu::broadcast_strides(a, out), cpu::broadcast_strides(b, out),
                                 cpu::broadcast_strides(c, out)});
  float* yp = y.data<float>();
  const float *ap = a.data<float>(), *bp = b.data<float>(), *cp = c.data<float>();
  const int64_t sa = it.inner_stride(1), sb = it.inner_stride(2), sc = it.inner_stride(3);
  it.for_rows(kGrain, [&](const int64_t* o, int64_t n) {
    float* yo = yp + o[0];
    const float *ao = ap + o[1], *bo = bp + o[2], *co = cp + o[3];
    if (sa == 1 && sb == 1 && sc == 1) {
      for (int64_t i = 0; i < n; ++i) yo[i] = ao[i] + v * bo[i] * co[i];
    } else {
      for (int64_t i = 0; i < n; ++i) yo[i] = ao[i * sa] + v * bo[i * sb] * co[i * sc];
    }
  });
  return {y};
}

// where(cond uint8, a, b): cond != 0 ? a : b, broadcasting all three. a and b share any dtype.
template <class T>
void where_kernel(const NdIter& it, const Tensor& y, const Tensor& cond, const Tensor& a, const Tensor& b) {
  T* yp = y.data<T>();
  const uint8_t* cp = cond.data<uint8_t>();
  const T *ap = a.data<T>(), *bp = b.data<T>();
  const int64_t sc = it.inner_stride(1), sa = it.inner_stride(2), sb = it.inner_stride(3);
  it.for_rows(kGrain, [&](const int64_t* o, int64_t n) {
    T* yo = yp + o[0];
    const uint8_t* co = cp + o[1];
    const T *ao = ap + o[2], *bo = bp + o[3];
    for (int64_t i = 0; i < n; ++i) yo[i] = co[i * sc] ? ao[i * sa] : bo[i * sb];
  });
}

std::vector<Tensor> op_where(const OpArgs& args) {
  const Tensor& cond = args.input(0, "cond", DType::U8);
  const Tensor& a = args.input(1, "a");
  const Tensor& b = args.input(2, "b");
  MVQ_CHECK_TYPE(a.dtype() == b.dtype(), "where: 'a' and 'b' must have one dtype, got ", dtype_name(a.dtype()), " and ",
                 dtype_name(b.dtype()));
  const Shape out = cpu::broadcast_shapes(args.op, {cond.shape(), a.shape(), b.shape()});
  Tensor y = empty(out, a.dtype());
  NdIter it = NdIter::make(out, {contiguous_strides(out), cpu::broadcast_strides(cond, out), cpu::broadcast_strides(a, out),
                                 cpu::broadcast_strides(b, out)});
  switch (dtype_size(a.dtype())) {
    case 1: where_kernel<uint8_t>(it, y, cond, a, b); break;
    case 2: where_kernel<uint16_t>(it, y, cond, a, b); break;
    case 4: where_kernel<uint32_t>(it, y, cond, a, b); break;
    default: where_kernel<uint64_t>(it, y, cond, a, b); break;
  }
  return {y};
}

}  // namespace

MVQ_REGISTER_OP("add", Device::CPU, op_add);
MVQ_OP_ATTRS("add", "alpha");
MVQ_REGISTER_OP("sub", Device::CPU, op_sub);
MVQ_OP_ATTRS("sub", "alpha");
MVQ_REGISTER_OP("mul", Device::CPU, op_mul);
MVQ_REGISTER_OP("div", Device::CPU, op_div);
MVQ_REGISTER_OP("maximum", Device::CPU, op_maximum);
MVQ_REGISTER_OP("minimum", Device::CPU, op_minimum);
MVQ_REGISTER_OP("scale", Device::CPU, op_scale);
MVQ_OP_ATTRS("scale", "add", "mul");
MVQ_REGISTER_OP("pow_scalar", Device::CPU, op_pow_scalar);
MVQ_OP_ATTRS("pow_scalar", "p");
MVQ_REGISTER_OP("neg", Device::CPU, op_neg);
MVQ_REGISTER_OP("exp", Device::CPU, op_exp);
MVQ_REGISTER_OP("log", Device::CPU, op_log);
MVQ_REGISTER_OP("sqrt", Device::CPU, op_sqrt);
MVQ_REGISTER_OP("rsqrt", Device::CPU, op_rsqrt);
MVQ_REGISTER_OP("abs", Device::CPU, op_abs);
MVQ_REGISTER_OP("sign", Device::CPU, op_sign);
MVQ_REGISTER_OP("tanh", Device::CPU, op_tanh);
MVQ_REGISTER_OP("sigmoid", Device::CPU, op_sigmoid);
MVQ_REGISTER_OP("clamp", Device::CPU, op_clamp);
MVQ_OP_ATTRS("clamp", "max", "min");
MVQ_REGISTER_OP("addcmul", Device::CPU, op_addcmul);
MVQ_OP_ATTRS("addcmul", "value");
MVQ_REGISTER_OP("where", Device::CPU, op_where);
MVQ_REGISTER_OP("sigmoid_backward", Device::CPU, op_sigmoid_backward);
MVQ_REGISTER_OP("tanh_backward", Device::CPU, op_tanh_backward);
MVQ_REGISTER_OP("clamp_backward", Device::CPU, op_clamp_backward);
MVQ_OP_ATTRS("clamp_backward", "max", "min");
MVQ_REGISTER_OP("abs_backward", Device::CPU, op_abs_backward);

}  // namespace mvq
