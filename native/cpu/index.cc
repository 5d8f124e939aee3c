// Indexing ops: index_select (+ backward scatter-add), embedding (+ backward), gather (+ backward),
// scatter_reduce (sum / mean / amax, torch include_self semantics) (+ backward for sum / mean).
// Index tensors may be int64 or int32; every index is validated before any output is written, and
// a bad one is a RangeError naming the op and the value.
#include <cmath>
#include <cstring>
#include <limits>

#include "ops_common.h"

namespace mvq {
namespace cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;

// x viewed as [outer, D, inner] around dim d.
void split_dims(const Shape& s, int d, int64_t* outer, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int k = 0; k < d; ++k) *outer *= s[k];
  for (size_t k = d + 1; k < s.size(); ++k) *inner *= s[k];
}

Tensor select_rows(const Tensor& xc, int d, const std::vector<int64_t>& idx) {
  int64_t outer, inner;
  split_dims(xc.shape(), d, &outer, &inner);
  const int64_t D = xc.shape()[d], K = static_cast<int64_t>(idx.size());
  Shape out = xc.shape();
  out[d] = K;
  Tensor y = empty(out, xc.dtype());
  const size_t es = dtype_size(xc.dtype());
  const char* xp = static_cast<const char*>(xc.raw());
  char* yp = static_cast<char*>(y.raw());
  const size_t row = static_cast<size_t>(inner) * es;
  parallel_for(outer * K, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / K, k = t % K;
      std::memcpy(yp + static_cast<size_t>(t) * row, xp + static_cast<size_t>(o * D + idx[k]) * row, row);
    }
  });
  return y;
}

// out [outer, size, inner] = sum over k of g [outer, K, inner] rows into row idx[k]. Parallel over
// (outer, column chunk) so duplicate indices never race.
Tensor scatter_add_rows(const Tensor& gc, int d, const std::vector<int64_t>& idx, int64_t size) {
  int64_t outer, inner;
  split_dims(gc.shape(), d, &outer, &inner);
  const int64_t K = static_cast<int64_t>(idx.size());
  Shape out = gc.shape();
  out[d] = size;
  Tensor y = zeros(out);
  float* yp = y.data<float>();
  const float* gp = gc.data<float>();
  constexpr int64_t kChunk = 512;
  const int64_t chunks = (inner + kChunk - 1) / kChunk;
  parallel_for(outer * chunks, std::max<int64_t>(1, kGrain / std::max<int64_t>(K * kChunk, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / chunks, j0 = (t % chunks) * kChunk, j1 = std::min(inner, j0 + kChunk);
      for (int64_t k = 0; k < K; ++k) {
        float* dst = yp + (o * size + idx[k]) * inner;
        const float* src = gp + (o * K + k) * inner;
        for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
      }
    }
  });
  return y;
}

std::vector<Tensor> op_index_select(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const Tensor& idx = a.input(1, "idx");
  const int d = norm_dim(a.op, a.attrs.i("dim", 0), x.dim());
  MVQ_CHECK_RANGE(idx.dim() <= 1, "index_select: 'idx' must be 1-D, got shape ", idx.shape_str());
  auto iv = read_indices(a.op, "idx", idx, x.shape()[d]);
  return {select_rows(x.contiguous(), d, iv)};
}

// index_select_backward(g, idx, {dim, size}) -> gx with gx.shape[dim] = size.
std::vector<Tensor> op_index_select_backward(const OpArgs& a) {
  const Tensor& g = a.input(0, "g", DType::F32);
  const Tensor& idx = a.input(1, "idx");
  const int d = norm_dim(a.op, a.attrs.i("dim", 0), g.dim());
  const int64_t size = a.attrs.i("size");
  MVQ_CHECK_RANGE(idx.dim() <= 1 && idx.numel() == g.shape()[d], "index_select_backward: 'idx' must be 1-D with ",
                  g.shape()[d], " entries, got shape ", idx.shape_str());
  auto iv = read_indices(a.op, "idx", idx, size);
  return {scatter_add_rows(g.contiguous(), d, iv, size)};
}

// embedding(weight [V, D], idx [...]) -> [..., D].
std::vector<Tensor> op_embedding(const OpArgs& a) {
  const Tensor& w = a.input(0, "weight", DType::F32, 2);
  const Tensor& idx = a.input(1, "idx");
  auto iv = read_indices(a.op, "idx", idx, w.shape()[0]);
  Tensor y = select_rows(w.contiguous(), 0, iv);
  Shape out = idx.shape();
  out.push_back(w.shape()[1]);
  return {y.view(out)};
}

// embedding_backward(g [..., D], idx [...], {num_embeddings}) -> [V, D].
std::vector<Tensor> op_embedding_backward(const OpArgs& a) {
  const Tensor& g = a.input(0, "g", DType::F32);
  const Tensor& idx = a.input(1, "idx");
  const int64_t V = a.attrs.i("num_embeddings");
  MVQ_CHECK_RANGE(g.dim() == idx.dim() + 1 && std::equal(idx.shape().begin(), idx.shape().end(), g.shape().begin()),
                  "embedding_backward: 'g' must have shape idx.shape + [D] = ", idx.shape_str(), " + [D], got ",
                  g.shape_str());
  auto iv = read_indices(a.op, "idx", idx, V);
  const int64_t D = g.shape().back();
  return {scatter_add_rows(g.contiguous().view({static_cast<int64_t>(iv.size()), D}), 0, iv, V)};
}

// ---------------------------------------------------------------- gather / scatter

// Lines along `dim` of an index tensor of shape `ishape`: each line is a fixed choice of the other
// coordinates. fn(line_offsets[k]) gets every operand's element offset of the line start
// (operands' strides given per dim; the dim's own stride is applied by the caller).
template <class F>
void for_lines(const Shape& ishape, int d, const std::vector<Shape>& strides, F fn) {
  Shape sh;
  std::vector<Shape> st(strides.size());
  for (size_t k = 0; k < ishape.size(); ++k) {
    if (static_cast<int>(k) == d) continue;
    sh.push_back(ishape[k]);
    for (size_t o = 0; o < strides.size(); ++o) st[o].push_back(strides[o][k]);
  }
  int64_t lines = 1;
  for (int64_t s : sh) lines *= s;
  if (lines == 0 || ishape[d] == 0) return;
  parallel_for(lines, std::max<int64_t>(1, kGrain / ishape[d]), [&](int64_t b, int64_t e) {
    std::vector<int64_t> offs(strides.size());
    for (int64_t l = b; l < e; ++l) {
      std::fill(offs.begin(), offs.end(), 0);
      int64_t r = l;
      for (int k = static_cast<int>(sh.size()) - 1; k >= 0; --k) {
        const int64_t c = r % sh[k];
        r /= sh[k];
        for (size_t o = 0; o < strides.size(); ++o) offs[o] += c * st[o][k];
      }
      fn(offs.data());
    }
  });
}

void check_index_shape(const std::string& op, const Tensor& idx, const Tensor& t, const char* tname, int d, bool dim_too) {
  bool ok = idx.dim() == t.dim();
  for (int k = 0; ok && k < t.dim(); ++k)
    if ((k != d || dim_too) && idx.shape()[k] > t.shape()[k]) ok = false;
  MVQ_CHECK_RANGE(ok, op, ": 'idx' of shape ", idx.shape_str(), " must have the rank of '", tname, "' ", t.shape_str(),
                  " and no larger size", dim_too ? "" : " outside dim ", dim_too ? "" : std::to_string(d));
}

// gather(x, idx, {dim}): out[..i..] = x[..idx[..i..] at dim..], out.shape = idx.shape.
std::vector<Tensor> op_gather(const OpArgs& a) {
  const Tensor& x = a.input(0, "x");
  const Tensor& idx = a.input(1, "idx");
  const int d = norm_dim(a.op, a.attrs.i("dim"), x.dim());
  check_index_shape(a.op, idx, x, "x", d, false);
  auto iv = read_indices(a.op, "idx", idx, x.shape()[d]);
  Tensor y = empty(idx.shape(), x.dtype());
  const Shape ist = contiguous_strides(idx.shape());
  const int64_t J = idx.shape()[d], is = ist[d], xs = x.strides()[d];
  const size_t es = dtype_size(x.dtype());
  const char* xp = static_cast<const char*>(x.raw());
  char* yp = static_cast<char*>(y.raw());
  for_lines(idx.shape(), d, {ist, x.strides()}, [&](const int64_t* o) {
    for (int64_t j = 0; j < J; ++j) {
      const int64_t io = o[0] + j * is;
      std::memcpy(yp + io * es, xp + (o[1] + iv[io] * xs) * static_cast<int64_t>(es), es);
    }
  });
  return {y};
}

// gather_backward(g, idx, {dim, shape}) -> gx of `shape` (x's shape): scatter-add of g.
std::vector<Tensor> op_gather_backward(const OpArgs& a) {
  const Tensor g = a.input(0, "g", DType::F32).contiguous();
  const Tensor& idx = a.input(1, "idx");
  const Shape shape = a.attrs.ints("shape");
  const int d = norm_dim(a.op, a.attrs.i("dim"), static_cast<int>(shape.size()));
  MVQ_CHECK_RANGE(g.shape() == idx.shape(), "gather_backward: 'g' must have idx's shape ", idx.shape_str(), ", got ",
                  g.shape_str());
  Tensor gx = zeros(shape);
  check_index_shape(a.op, idx, gx, "shape", d, false);
  auto iv = read_indices(a.op, "idx", idx, shape[d]);
  const Shape ist = contiguous_strides(idx.shape());
  const int64_t J = idx.shape()[d], is = ist[d], xs = gx.strides()[d];
  float* xp = gx.data<float>();
  const float* gp = g.data<float>();
  for_lines(idx.shape(), d, {ist, gx.strides()}, [&](const int64_t* o) {
    for (int64_t j = 0; j < J; ++j) {
      const int64_t io = o[0] + j * is;
      xp[o[1] + iv[io] * xs] += gp[io];
    }
  });
  return {gx};
}

enum class SR { Sum, Mean, Amax };

SR parse_reduce(const OpArgs& a) {
  const std::string r = a.attrs.s("reduce", "sum");
  if (r == "sum") return SR::Sum;
  if (r == "mean") return SR::Mean;
  if (r == "amax") return SR::Amax;
  throw_range(a.op, ": option 'reduce' must be 'sum', 'mean' or 'amax', got '", r, "'");
}

// Per-position count of scattered elements (int32, base's shape, dense).
std::vector<int32_t> scatter_counts(const Tensor& out_like, const Tensor& idx, int d, const std::vector<int64_t>& iv) {
  std::vector<int32_t> cnt(static_cast<size_t>(out_like.numel()), 0);
  const Shape ist = contiguous_strides(idx.shape());
  const Shape ost = contiguous_strides(out_like.shape());
  const int64_t J = idx.shape()[d], is = ist[d], os = ost[d];
  for_lines(idx.shape(), d, {ist, ost}, [&](const int64_t* o) {
    for (int64_t j = 0; j < J; ++j) ++cnt[o[1] + iv[o[0] + j * is] * os];
  });
  return cnt;
}

// scatter_reduce(base, idx, src, {dim, reduce, include_self = true}) as torch.Tensor.scatter_reduce:
// out = base; out[..idx[i]..] reduce= src[i]. With include_self false, positions that receive at
// least one element ignore base; mean divides by the number of contributions (base counting one
// when included); positions receiving nothing keep base.
std::vector<Tensor> op_scatter_reduce(const OpArgs& a) {
  const Tensor base = a.input(0, "base", DType::F32).contiguous();
  const Tensor& idx = a.input(1, "idx");
  const Tensor& src = a.input(2, "src", DType::F32);
  const int d = norm_dim(a.op, a.attrs.i("dim"), base.dim());
  const SR red = parse_reduce(a);
  const bool self = a.attrs.b("include_self", true);
  check_index_shape(a.op, idx, src, "src", d, true);
  check_index_shape(a.op, idx, base, "base", d, false);
  auto iv = read_indices(a.op, "idx", idx, base.shape()[d]);
  Tensor out = to_device(base, Device::CPU);  // fresh copy
  float* op = out.data<float>();
  const float* sp = src.data<float>();
  const Shape ist = contiguous_strides(idx.shape());
  const int64_t J = idx.shape()[d], is = ist[d], os = out.strides()[d], ss = src.strides()[d];
  std::vector<int32_t> cnt = scatter_counts(out, idx, d, iv);
  if (!self) {
    const float init = red == SR::Amax ? -std::numeric_limits<float>::infinity() : 0.0f;
    for (size_t i = 0; i < cnt.size(); ++i)
      if (cnt[i]) op[i] = init;
  }
  for_lines(idx.shape(), d, {ist, out.strides(), src.strides()}, [&](const int64_t* o) {
    for (int64_t j = 0; j < J; ++j) {
      float& dst = op[o[1] + iv[o[0] + j * is] * os];
      const float v = sp[o[2] + j * ss];
      if (red == SR::Amax) dst = (v != v || v > dst) ? v : dst;
      else dst += v;
    }
  });
  if (red == SR::Mean) {
    for (size_t i = 0; i < cnt.size(); ++i)
      if (cnt[i]) op[i] /= static_cast<float>(cnt[i] + (self ? 1 : 0));
  }
  return {out};
}

// scatter_reduce_backward(base, idx, src, gy, {dim, reduce: 'sum'|'mean', include_self})
// -> [g_base, g_src].
std::vector<Tensor> op_scatter_reduce_backward(const OpArgs& a) {
  const Tensor& base = a.input(0, "base", DType::F32);
  const Tensor& idx = a.input(1, "idx");
  const Tensor& src = a.input(2, "src", DType::F32);
  const Tensor gy = a.input(3, "gy", DType::F32).contiguous();
  const int d = norm_dim(a.op, a.attrs.i("dim"), base.dim());
  const SR red = parse_reduce(a);
  MVQ_CHECK_RANGE(red != SR::Amax, "scatter_reduce_backward: option 'reduce' must be 'sum' or 'mean', got 'amax'");
  const bool self = a.attrs.b("include_self", true);
  MVQ_CHECK_RANGE(gy.shape() == base.shape(), "scatter_reduce_backward: 'gy' must have base's shape ", base.shape_str(),
                  ", got ", gy.shape_str());
  check_index_shape(a.op, idx, src, "src", d, true);
  check_index_shape(a.op, idx, base, "base", d, false);
  auto iv = read_indices(a.op, "idx", idx, base.shape()[d]);
  std::vector<int32_t> cnt = scatter_counts(gy, idx, d, iv);
  // Per-position gradient of each contribution: gy / contributions for mean, gy for sum.
  Tensor gb = empty(base.shape());
  Tensor share = empty(base.shape());
  float *gbp = gb.data<float>(), *shp = share.data<float>();
  const float* gp = gy.data<float>();
  for (size_t i = 0; i < cnt.size(); ++i) {
    const float n = static_cast<float>(cnt[i] + (self ? 1 : 0));
    shp[i] = (red == SR::Mean && cnt[i]) ? gp[i] / n : gp[i];
    gbp[i] = cnt[i] == 0 ? gp[i] : (self ? shp[i] : 0.0f);
  }
  Tensor gs = zeros(src.shape());
  float* gsp = gs.data<float>();
  const Shape ist = contiguous_strides(idx.shape());
  const int64_t J = idx.shape()[d], is = ist[d], os = share.strides()[d], ss = gs.strides()[d];
  for_lines(idx.shape(), d, {ist, share.strides(), gs.strides()}, [&](const int64_t* o) {
    for (int64_t j = 0; j < J; ++j) gsp[o[2] + j * ss] = shp[o[1] + iv[o[0] + j * is] * os];
  });
  return {gb, gs};
}

}  // namespace
}  // namespace cpu

MVQ_REGISTER_OP("index_select", Device::CPU, cpu::op_index_select);
MVQ_OP_ATTRS("index_select", "dim");
MVQ_REGISTER_OP("index_select_backward", Device::CPU, cpu::op_index_select_backward);
MVQ_OP_ATTRS("index_select_backward", "dim", "size");
MVQ_REGISTER_OP("embedding", Device::CPU, cpu::op_embedding);
MVQ_REGISTER_OP("embedding_backward", Device::CPU, cpu::op_embedding_backward);
MVQ_OP_ATTRS("embedding_backward", "num_embeddings");
MVQ_REGISTER_OP("gather", Device::CPU, cpu::op_gather);
MVQ_OP_ATTRS("gather", "dim");
MVQ_REGISTER_OP("gather_backward", Device::CPU, cpu::op_gather_backward);
MVQ_OP_ATTRS("gather_backward", "dim", "shape");
MVQ_REGISTER_OP("scatter_reduce", Device::CPU, cpu::op_scatter_reduce);
MVQ_OP_ATTRS("scatter_reduce", "dim", "include_self", "reduce");
MVQ_REGISTER_OP("scatter_reduce_backward", Device::CPU, cpu::op_scatter_reduce_backward);
MVQ_OP_ATTRS("scatter_reduce_backward", "dim", "include_self", "reduce");

}  // namespace mvq
