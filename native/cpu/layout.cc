// Layout ops (any dtype): permute, concat, split, slice, pad2d, depth_to_space / space_to_depth,
// flip and expand. Each builds a strided view of its input and copies it densely with
// strided_copy, which collapses dims and switches to cache-blocked tiles when the copy is a
// (batched) 2-D transpose, e.g. [B, C, HW] <-> [B, HW, C].
#include <cstring>

#include "ops_common.h"

namespace mvq {
namespace cpu {

namespace {

constexpr int64_t kGrain = 1 << 15;
constexpr int64_t kTile = 32;

template <class T>
void copy_kernel(const Tensor& dst, const Tensor& src) {
  const Shape& shape = src.shape();
  NdIter it = NdIter::make(shape, {dst.strides(), src.strides()});
  T* dp = dst.data<T>();
  const T* sp = src.data<T>();
  const int nd = it.nd();
  const int64_t sd = it.inner_stride(0), ss = it.inner_stride(1);
  // Transpose pattern: dst is dense along the inner dim, src is not, and src is dense along
  // another dim k. Copy [rows of k] x [inner] tiles so both sides stay in cache.
  int k = -1;
  if (nd >= 2 && sd == 1 && ss != 1 && it.inner() >= 8) {
    for (int d = nd - 2; d >= 0; --d)
      if (it.st[1][d] == 1 && it.shape[d] >= 8) {
        k = d;
        break;
      }
  }
  if (k < 0) {
    it.for_rows(kGrain, [&](const int64_t* o, int64_t n) {
      T* d = dp + o[0];
      const T* s = sp + o[1];
      if (sd == 1 && ss == 1) {
        std::memcpy(d, s, static_cast<size_t>(n) * sizeof(T));
      } else {
        for (int64_t i = 0; i < n; ++i) d[i * sd] = s[i * ss];
      }
    });
    return;
  }
  // Iterate over every dim except k and the inner one; each task copies one tile of (k, inner).
  Shape outer_shape;
  std::array<Shape, NdIter::kMax> ost;
  for (int d = 0; d < nd - 1; ++d) {
    if (d == k) continue;
    outer_shape.push_back(it.shape[d]);
    ost[0].push_back(it.st[0][d]);
    ost[1].push_back(it.st[1][d]);
  }
  const int64_t K = it.shape[k], N = it.inner();
  const int64_t dk = it.st[0][k], sn = ss;  // dst stride along k, src stride along inner
  const int64_t tk = (K + kTile - 1) / kTile, tn = (N + kTile - 1) / kTile;
  int64_t outer = 1;
  for (int64_t s : outer_shape) outer *= s;
  parallel_for(outer * tk * tn, std::max<int64_t>(1, kGrain / (kTile * kTile)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t o = t / (tk * tn), r = t % (tk * tn);
      const int64_t k0 = (r / tn) * kTile, n0 = (r % tn) * kTile;
      int64_t doff = 0, soff = 0;
      for (int d = static_cast<int>(outer_shape.size()) - 1; d >= 0; --d) {
        const int64_t c = o % outer_shape[d];
        o /= outer_shape[d];
        doff += c * ost[0][d];
        soff += c * ost[1][d];
      }
      const int64_t k1 = std::min(K, k0 + kTile), n1 = std::min(N, n0 + kTile);
      for (int64_t kk = k0; kk < k1; ++kk) {
        T* d = dp + doff + kk * dk;
        const T* s = sp + soff + kk;
        for (int64_t n = n0; n < n1; ++n) d[n] = s[n * sn];
      }
    }
  });
}

}  // namespace

void strided_copy(const Tensor& dst, const Tensor& src) {
  if (src.numel() == 0) return;
  switch (dtype_size(src.dtype())) {
    case 1: copy_kernel<uint8_t>(dst, src); break;
    case 2: copy_kernel<uint16_t>(dst, src); break;
    case 4: copy_kernel<uint32_t>(dst, src); break;
    default: copy_kernel<uint64_t>(dst, src); break;
  }
}

Tensor materialize(const Tensor& view) {
  Tensor out = empty(view.shape(), view.dtype());
  strided_copy(out, view);
  return out;
}

Tensor broadcast_view(const std::string& op, const Tensor& x, const Shape& shape) {
  MVQ_CHECK_RANGE(shape.size() >= x.shape().size(), op, ": cannot broadcast shape ", x.shape_str(), " to ",
                  shape_to_string(shape));
  const Shape b = broadcast_shapes(op, {x.shape(), shape});
  MVQ_CHECK_RANGE(b == shape, op, ": cannot broadcast shape ", x.shape_str(), " to ", shape_to_string(shape));
  return Tensor(x.storage(), x.dtype(), shape, broadcast_strides(x, shape), x.offset());
}

namespace {

Tensor with_layout(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  return Tensor(x.storage(), x.dtype(), std::move(shape), std::move(strides), offset);
}

std::vector<Tensor> op_permute(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const auto dims = a.attrs.ints("dims");
  MVQ_CHECK_RANGE(static_cast<int>(dims.size()) == x.dim(), "permute: option 'dims' must list ", x.dim(),
                  " dims for x of shape ", x.shape_str(), ", got ", dims.size());
  std::vector<int> d(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    d[i] = norm_dim(a.op, dims[i], x.dim(), "dims");
    MVQ_CHECK_RANGE(!seen[d[i]], "permute: option 'dims' repeats dim ", d[i]);
    seen[d[i]] = true;
  }
  return {materialize(x.permute(d))};
}

std::vector<Tensor> op_expand(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const auto shape = a.attrs.ints("shape");
  return {materialize(broadcast_view(a.op, x, shape))};
}

std::vector<Tensor> op_concat(const OpArgs& a) {
  MVQ_CHECK_TYPE(!a.in.empty(), "concat: needs at least one tensor");
  const Tensor& x0 = a.input(0, "x0");
  const int d = norm_dim(a.op, a.attrs.i("dim", 0), x0.dim());
  Shape out = x0.shape();
  out[d] = 0;
  for (size_t i = 0; i < a.in.size(); ++i) {
    const std::string name = "x" + std::to_string(i);
    const Tensor& t = a.input(i, name.c_str());
    MVQ_CHECK_TYPE(t.dtype() == x0.dtype(), "concat: '", name, "' must be ", dtype_name(x0.dtype()), ", got ",
                   dtype_name(t.dtype()));
    bool ok = t.dim() == x0.dim();
    for (int k = 0; ok && k < t.dim(); ++k)
      if (k != d && t.shape()[k] != x0.shape()[k]) ok = false;
    MVQ_CHECK_RANGE(ok, "concat: '", name, "' has shape ", t.shape_str(), ", incompatible with x0 ", x0.shape_str(),
                    " outside dim ", d);
    out[d] += t.shape()[d];
  }
  Tensor y = empty(out, x0.dtype());
  const Shape yst = y.strides();
  int64_t at = 0;
  for (const Tensor& t : a.in) {
    Shape sh = out;
    sh[d] = t.shape()[d];
    strided_copy(with_layout(y, sh, yst, at * yst[d]), t);
    at += t.shape()[d];
  }
  return {y};
}

std::vector<Tensor> op_split(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const int d = norm_dim(a.op, a.attrs.i("dim", 0), x.dim());
  const auto sizes = a.attrs.ints("sizes");
  int64_t total = 0;
  for (int64_t s : sizes) {
    MVQ_CHECK_RANGE(s >= 0, "split: option 'sizes' must be non-negative, got ", s);
    total += s;
  }
  MVQ_CHECK_RANGE(total == x.shape()[d], "split: option 'sizes' must sum to x.shape[", d, "] = ", x.shape()[d],
                  ", got ", total);
  std::vector<Tensor> outs;
  int64_t at = 0;
  for (int64_t s : sizes) {
    Shape sh = x.shape();
    sh[d] = s;
    outs.push_back(materialize(with_layout(x, sh, x.strides(), x.offset() + at * x.strides()[d])));
    at += s;
  }
  return outs;
}

// slice(x, {dim, start = 0, end = size, step = 1}): Python semantics (negative start/end count
// from the end, out-of-range bounds clamp), step >= 1.
std::vector<Tensor> op_slice(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const int d = norm_dim(a.op, a.attrs.i("dim", 0), x.dim());
  const int64_t n = x.shape()[d];
  int64_t start = a.attrs.i("start", 0), end = a.attrs.i("end", n);
  const int64_t step = a.attrs.i("step", 1);
  MVQ_CHECK_RANGE(step >= 1, "slice: option 'step' must be >= 1, got ", step);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::min(std::max<int64_t>(start, 0), n);
  end = std::min(std::max<int64_t>(end, start), n);
  Shape sh = x.shape(), st = x.strides();
  sh[d] = (end - start + step - 1) / step;
  st[d] *= step;
  return {materialize(with_layout(x, sh, st, x.offset() + start * x.strides()[d]))};
}

std::vector<Tensor> op_flip(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const auto dims = a.attrs.ints("dims");
  Shape st = x.strides();
  int64_t off = x.offset();
  std::vector<bool> seen(x.dim(), false);
  for (int64_t dd : dims) {
    const int d = norm_dim(a.op, dd, x.dim(), "dims");
    MVQ_CHECK_RANGE(!seen[d], "flip: option 'dims' repeats dim ", d);
    seen[d] = true;
    if (x.shape()[d] > 0) off += (x.shape()[d] - 1) * st[d];
    st[d] = -st[d];
  }
  return {materialize(with_layout(x, x.shape(), st, off))};
}

// pad2d(x [..., H, W], {pad: [l, r, t, b], value = 0}), float32.
std::vector<Tensor> op_pad2d(const OpArgs& a) {
  const Tensor& x = a.input(0, "x", DType::F32);
  MVQ_CHECK_RANGE(x.dim() >= 2, "pad2d: 'x' must have at least 2 dims, got ", x.shape_str());
  const auto pad = a.attrs.ints("pad");
  MVQ_CHECK_RANGE(pad.size() == 4, "pad2d: option 'pad' must be [left, right, top, bottom], got ", pad.size(), " values");
  for (int64_t p : pad) MVQ_CHECK_RANGE(p >= 0, "pad2d: option 'pad' entries must be >= 0, got ", p);
  const float value = static_cast<float>(a.attrs.f("value", 0.0));
  const int nd = x.dim();
  Shape out = x.shape();
  out[nd - 1] += pad[0] + pad[1];
  out[nd - 2] += pad[2] + pad[3];
  Tensor y = empty(out);
  float* yp = y.data<float>();
  const int64_t n = y.numel();
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) { std::fill(yp + b, yp + e, value); });
  const Shape yst = y.strides();
  strided_copy(with_layout(y, x.shape(), yst, pad[2] * yst[nd - 2] + pad[0]), x);
  return {y};
}

// depth_to_space(x [B, C*r*r, H, W], {block: r}) -> [B, C, H*r, W*r], DCR order:
// view [B, r, r, C, H, W] -> permute [B, C, H, r, W, r].
std::vector<Tensor> op_depth_to_space(const OpArgs& a) {
  const Tensor& x = a.input(0, "x", a.input(0, "x").dtype(), 4);
  const int64_t r = a.attrs.i("block");
  MVQ_CHECK_RANGE(r >= 1, "depth_to_space: option 'block' must be >= 1, got ", r);
  const int64_t B = x.size(0), CRR = x.size(1), H = x.size(2), W = x.size(3);
  MVQ_CHECK_RANGE(CRR % (r * r) == 0, "depth_to_space: x.shape[1] = ", CRR, " must be divisible by block^2 = ", r * r);
  const int64_t C = CRR / (r * r);
  if (x.dtype() == DType::F32 && x.is_contiguous()) {
    // Direct kernel: output row (b, c, h, i) interleaves the r source rows (b, (i*r + j)*C + c, h).
    Tensor y = empty({B, C, H * r, W * r});
    const float* xp = x.data<float>();
    float* yp = y.data<float>();
    parallel_for(B * C * H * r, std::max<int64_t>(1, kGrain / std::max<int64_t>(W * r, 1)), [&](int64_t b0, int64_t e0) {
      for (int64_t t = b0; t < e0; ++t) {
        const int64_t i = t % r, h = (t / r) % H, c = (t / (r * H)) % C, b = t / (r * H * C);
        float* yr = yp + t * W * r;
        for (int64_t j = 0; j < r; ++j) {
          const float* xr = xp + ((b * CRR + (i * r + j) * C + c) * H + h) * W;
          for (int64_t w = 0; w < W; ++w) yr[w * r + j] = xr[w];
        }
      }
    });
    return {y};
  }
  const Shape& s = x.strides();
  // Strides of the [B, r, r, C, H, W] split of x, permuted to [B, C, H, r, W, r].
  const int64_t sb = s[0], sr1 = s[1] * r * C, sr2 = s[1] * C, sc = s[1], sh = s[2], sw = s[3];
  Tensor v = with_layout(x, {B, C, H, r, W, r}, {sb, sc, sh, sr1, sw, sr2}, x.offset());
  return {materialize(v).view({B, C, H * r, W * r})};
}

// space_to_depth(x [B, C, H*r, W*r], {block: r}) -> [B, C*r*r, H, W], the inverse of depth_to_space.
std::vector<Tensor> op_space_to_depth(const OpArgs& a) {
  const Tensor& x = a.input(0, "x", a.input(0, "x").dtype(), 4);
  const int64_t r = a.attrs.i("block");
  MVQ_CHECK_RANGE(r >= 1, "space_to_depth: option 'block' must be >= 1, got ", r);
  const int64_t B = x.size(0), C = x.size(1), HR = x.size(2), WR = x.size(3);
  MVQ_CHECK_RANGE(HR % r == 0 && WR % r == 0, "space_to_depth: spatial size ", HR, "x", WR,
                  " must be divisible by block = ", r);
  const int64_t H = HR / r, W = WR / r;
  if (x.dtype() == DType::F32 && x.is_contiguous()) {
    // Direct kernel: output row (b, i, j, c, h) takes every r-th element of source row (b, c, h*r + i).
    Tensor y = empty({B, C * r * r, H, W});
    const float* xp = x.data<float>();
    float* yp = y.data<float>();
    parallel_for(B * r * r * C * H, std::max<int64_t>(1, kGrain / std::max<int64_t>(W, 1)), [&](int64_t b0, int64_t e0) {
      for (int64_t t = b0; t < e0; ++t) {
        const int64_t h = t % H, c = (t / H) % C, j = (t / (H * C)) % r, i = (t / (H * C * r)) % r, b = t / (H * C * r * r);
        const float* xr = xp + ((b * C + c) * HR + h * r + i) * WR + j;
        float* yr = yp + t * W;
        for (int64_t w = 0; w < W; ++w) yr[w] = xr[w * r];
      }
    });
    return {y};
  }
  const Shape& s = x.strides();
  // x as [B, C, H, r1, W, r2] -> [B, r1, r2, C, H, W].
  Tensor v = with_layout(x, {B, r, r, C, H, W}, {s[0], s[2], s[3], s[1], s[2] * r, s[3] * r}, x.offset());
  return {materialize(v).view({B, C * r * r, H, W})};
}

}  // namespace
}  // namespace cpu

MVQ_REGISTER_OP("permute", Device::CPU, cpu::op_permute);
MVQ_OP_ATTRS("permute", "dims");
MVQ_REGISTER_OP("expand", Device::CPU, cpu::op_expand);
MVQ_OP_ATTRS("expand", "shape");
MVQ_REGISTER_OP("concat", Device::CPU, cpu::op_concat);
MVQ_OP_ATTRS("concat", "dim");
MVQ_REGISTER_OP("split", Device::CPU, cpu::op_split);
MVQ_OP_ATTRS("split", "dim", "sizes");
MVQ_REGISTER_OP("slice", Device::CPU, cpu::op_slice);
MVQ_OP_ATTRS("slice", "dim", "end", "start", "step");
MVQ_REGISTER_OP("flip", Device::CPU, cpu::op_flip);
MVQ_OP_ATTRS("flip", "dims");
MVQ_REGISTER_OP("pad2d", Device::CPU, cpu::op_pad2d);
MVQ_OP_ATTRS("pad2d", "pad", "value");
MVQ_REGISTER_OP("depth_to_space", Device::CPU, cpu::op_depth_to_space);
MVQ_OP_ATTRS("depth_to_space", "block");
MVQ_REGISTER_OP("space_to_depth", Device::CPU, cpu::op_space_to_depth);
MVQ_OP_ATTRS("space_to_depth", "block");

}  // namespace mvq
