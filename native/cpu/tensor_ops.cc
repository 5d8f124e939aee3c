// Layout and dtype ops: contiguous copy, dtype conversion (f16/bf16 storage <-> f32 compute).
#include <cmath>
#include <cstring>

#include "../core/op.h"
#include "../core/parallel.h"
#include "../kernels/half.h"

namespace mvq {
namespace {

std::vector<Tensor> op_contiguous(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  Tensor c = x.contiguous();
  if (c.storage() == x.storage()) return {to_device(x, Device::CPU)};
  return {c};
}

template <class S, class D>
void convert(const S* s, D* d, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] = static_cast<D>(s[i]);
  });
}

// Reads element i of any dtype as double / writes double into any dtype.
double load(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.data<float>()[i];
    case DType::F16: return half_to_float(t.data<uint16_t>()[i]);
    case DType::BF16: return bf16_to_float(t.data<uint16_t>()[i]);
    case DType::I32: return t.data<int32_t>()[i];
    case DType::I64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::U8: return t.data<uint8_t>()[i];
  }
  return 0;
}
void store(const Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::F32: t.data<float>()[i] = static_cast<float>(v); break;
    case DType::F16: t.data<uint16_t>()[i] = float_to_half(static_cast<float>(v)); break;
    case DType::BF16: t.data<uint16_t>()[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::I32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::I64: t.data<int64_t>()[i] = static_cast<int64_t>(v); break;
    case DType::U8: t.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
  }
}

// cast(x, {dtype}): converts element-wise. Float -> int truncates toward zero; int64 -> float
// rounds to nearest. f16/bf16 rounding is round-to-nearest-even.
std::vector<Tensor> op_cast(const OpArgs& a) {
  const Tensor x = a.input(0, "x").contiguous();
  DType to;
  std::string name = a.attrs.s("dtype", "");
  MVQ_CHECK_TYPE(dtype_from_name(name, &to), "cast: option 'dtype' must be a dtype name, got '", name, "'");
  Tensor y = empty(x.shape(), to);
  const int64_t n = x.numel();
  if (x.dtype() == DType::F32 && to == DType::F16) {
    const float* s = x.data<float>();
    uint16_t* d = y.data<uint16_t>();
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) d[i] = float_to_half(s[i]); });
  } else if (x.dtype() == DType::F16 && to == DType::F32) {
    const uint16_t* s = x.data<uint16_t>();
    float* d = y.data<float>();
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) d[i] = half_to_float(s[i]); });
  } else if (x.dtype() == DType::F32 && to == DType::BF16) {
    const float* s = x.data<float>();
    uint16_t* d = y.data<uint16_t>();
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) d[i] = float_to_bf16(s[i]); });
  } else if (x.dtype() == DType::BF16 && to == DType::F32) {
    const uint16_t* s = x.data<uint16_t>();
    float* d = y.data<float>();
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) d[i] = bf16_to_float(s[i]); });
  } else if (x.dtype() == to) {
    if (n) std::memcpy(y.raw(), x.raw(), x.nbytes());
  } else {
    parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) store(y, i, load(x, i)); });
  }
  return {y};
}

// View ops: they return views that share the input's storage (no copy), so that programs can
// express reshapes and strided selections as recorded op calls (autograd sees them).
// reshape(x, {shape}): a view when x is contiguous, else a dense copy.
std::vector<Tensor> op_reshape(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  Shape shape = a.attrs.ints("shape");
  if (x.is_contiguous()) return {x.view(shape)};
  if (x.device() != Device::CPU) throw_runtime("ERR_UNSUPPORTED", "reshape: non-contiguous input on ", device_name(x.device()));
  return {x.contiguous().view(shape)};
}
// permute_view(x, {dims}): a strided view with dims permuted.
std::vector<Tensor> op_permute_view(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  auto d = a.attrs.ints("dims");
  return {x.permute(std::vector<int>(d.begin(), d.end()))};
}
// select(x, {dim, index}) and narrow(x, {dim, start, length}): strided views.
std::vector<Tensor> op_select(const OpArgs& a) {
  return {a.input(0, "x").select(static_cast<int>(a.attrs.i("dim")), a.attrs.i("index"))};
}
std::vector<Tensor> op_narrow(const OpArgs& a) {
  return {a.input(0, "x").narrow(static_cast<int>(a.attrs.i("dim")), a.attrs.i("start"), a.attrs.i("length"))};
}

// random_normal({shape, mean, std, seed, truncate}): normal draws, redrawn outside
// mean +- truncate*std when truncate > 0 (the reference's trunc_normal_ initializer). Counter-based
// (splitmix64 of seed and element index), so the result does not depend on the thread count.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
std::vector<Tensor> op_random_normal(const OpArgs& a) {
  Shape shape = a.attrs.ints("shape");
  const double mean = a.attrs.f("mean", 0.0), stdv = a.attrs.f("std", 1.0), trunc = a.attrs.f("truncate", 0.0);
  const uint64_t seed = static_cast<uint64_t>(a.attrs.i("seed", 0));
  MVQ_CHECK_RANGE(stdv >= 0 && trunc >= 0 && (trunc == 0 || trunc >= 0.5), "random_normal: std must be >= 0 and truncate 0 or >= 0.5");
  Tensor y = empty(shape);
  float* d = y.data<float>();
  parallel_for(y.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint64_t ctr = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i)));
      double z;
      for (;;) {
        uint64_t r1 = splitmix64(ctr++), r2 = splitmix64(ctr++);
        double u1 = (static_cast<double>(r1 >> 11) + 1.0) * (1.0 / 9007199254740992.0);
        double u2 = static_cast<double>(r2 >> 11) * (1.0 / 9007199254740992.0);
        z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        if (trunc == 0 || std::fabs(z) <= trunc) break;
      }
      d[i] = static_cast<float>(mean + stdv * z);
    }
  });
  return {y};
}

// detach(x): the same values as a new handle; autograd stops here.
std::vector<Tensor> op_detach(const OpArgs& a) { return {a.input(0, "x")}; }

}  // namespace

MVQ_REGISTER_OP("random_normal", Device::CPU, op_random_normal);
MVQ_OP_ATTRS("random_normal", "mean", "seed", "shape", "std", "truncate");
MVQ_REGISTER_OP("detach", Device::CPU, op_detach);
MVQ_REGISTER_OP("detach", Device::CUDA, op_detach);
MVQ_REGISTER_OP("reshape", Device::CPU, op_reshape);
MVQ_OP_ATTRS("reshape", "shape");
MVQ_REGISTER_OP("reshape", Device::CUDA, op_reshape);
MVQ_REGISTER_OP("permute_view", Device::CPU, op_permute_view);
MVQ_OP_ATTRS("permute_view", "dims");
MVQ_REGISTER_OP("permute_view", Device::CUDA, op_permute_view);
MVQ_REGISTER_OP("select", Device::CPU, op_select);
MVQ_OP_ATTRS("select", "dim", "index");
MVQ_REGISTER_OP("select", Device::CUDA, op_select);
MVQ_REGISTER_OP("narrow", Device::CPU, op_narrow);
MVQ_OP_ATTRS("narrow", "dim", "length", "start");
MVQ_REGISTER_OP("narrow", Device::CUDA, op_narrow);
MVQ_REGISTER_OP("contiguous", Device::CPU, op_contiguous);
MVQ_REGISTER_OP("cast", Device::CPU, op_cast);
MVQ_OP_ATTRS("cast", "dtype");

}  // namespace mvq
