// Reductions over one or several dims of float32 tensors: sum, mean, var, amax, amin (float64
// accumulation for the sums), argmax, sum_to (gradient of a broadcast) and amax_backward.
//
// The input is made dense, then consecutive dims with the same role (kept / reduced) are merged,
// leaving alternating groups. When the last group is reduced, each output reduces contiguous runs
// ("row" reduction, parallel over outputs). When the last group is kept, rows of the input are
// accumulated into a vector of float64 accumulators ("column" reduction, parallel over output
// blocks), so both [N, C] -> [C] and [N, C] -> [N] read memory sequentially.
#include <cmath>
#include <limits>

#include "ops_common.h"

namespace mvq {
namespace cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;

enum class Red { Sum, SumSq, Max, Min };

struct Groups {
  Shape size;
  std::vector<bool> red;
};

Groups make_groups(const Shape& shape, const std::vector<bool>& reduce) {
  Groups g;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!g.size.empty() && g.red.back() == reduce[d]) {
      g.size.back() *= shape[d];
    } else {
      g.size.push_back(shape[d]);
      g.red.push_back(reduce[d]);
    }
  }
  return g;
}

inline double fold(Red r, double acc, float v) {
  switch (r) {
    case Red::Sum: return acc + v;
    case Red::SumSq: return acc + static_cast<double>(v) * v;
    case Red::Max: return (v != v || v > acc || acc != acc) ? (acc != acc ? acc : v) : acc;
    case Red::Min: return (v != v || v < acc || acc != acc) ? (acc != acc ? acc : v) : acc;
  }
  return acc;
}

// Reduces dense x (float32) into out_count outputs (row-major over kept dims) as float64.
// For SumSq, `center` (one value per output) is subtracted first.
std::vector<double> reduce_dense(const Tensor& xc, const std::vector<bool>& reduce, Red r, const double* center = nullptr) {
  const float* xp = xc.data<float>();
  Groups g = make_groups(xc.shape(), reduce);
  int64_t nout = 1;
  for (size_t i = 0; i < g.size.size(); ++i)
    if (!g.red[i]) nout *= g.size[i];
  const double init = (r == Red::Max) ? -std::numeric_limits<double>::infinity()
                      : (r == Red::Min) ? std::numeric_limits<double>::infinity() : 0.0;
  std::vector<double> out(static_cast<size_t>(nout), init);
  if (xc.numel() == 0) return out;
  const int ng = static_cast<int>(g.size.size());
  if (ng == 0) {  // single element
    out[0] = fold(r, init, center ? static_cast<float>(xp[0] - center[0]) : xp[0]);
    return out;
  }
  Shape gst(ng);
  {
    int64_t s = 1;
    for (int i = ng - 1; i >= 0; --i) {
      gst[i] = s;
      s *= g.size[i];
    }
  }
  // Kept and reduced groups with their strides.
  Shape ks, kst, rs, rst;
  for (int i = 0; i < ng; ++i) {
    if (g.red[i]) {
      rs.push_back(g.size[i]);
      rst.push_back(gst[i]);
    } else {
      ks.push_back(g.size[i]);
      kst.push_back(gst[i]);
    }
  }
  int64_t rcount = 1;
  for (int64_t s : rs) rcount *= s;
  auto offset_of = [](int64_t idx, const Shape& sz, const Shape& st) {
    int64_t off = 0;
    for (int d = static_cast<int>(sz.size()) - 1; d >= 0; --d) {
      off += (idx % sz[d]) * st[d];
      idx /= sz[d];
    }
    return off;
  };
  if (g.red.back()) {
    // Row reduction: the last reduced group is contiguous with length L.
    const int64_t L = rs.back();
    Shape rs2(rs.begin(), rs.end() - 1), rst2(rst.begin(), rst.end() - 1);
    const int64_t outer_r = rcount / L;
    parallel_for(nout, std::max<int64_t>(1, kGrain / std::max<int64_t>(rcount, 1)), [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        const int64_t base = offset_of(o, ks, kst);
        const double c = center ? center[o] : 0.0;
        double acc = init;
        for (int64_t q = 0; q < outer_r; ++q) {
          const float* p = xp + base + offset_of(q, rs2, rst2);
          if (r == Red::Sum) {
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t i = 0;
            for (; i + 4 <= L; i += 4) {
              s0 += p[i];
              s1 += p[i + 1];
              s2 += p[i + 2];
              s3 += p[i + 3];
            }
            for (; i < L; ++i) s0 += p[i];
            acc += (s0 + s1) + (s2 + s3);
          } else if (r == Red::SumSq) {
            double s0 = 0, s1 = 0;
            int64_t i = 0;
            for (; i + 2 <= L; i += 2) {
              const double d0 = p[i] - c, d1 = p[i + 1] - c;
              s0 += d0 * d0;
              s1 += d1 * d1;
            }
            for (; i < L; ++i) {
              const double d0 = p[i] - c;
              s0 += d0 * d0;
            }
            acc += s0 + s1;
          } else {
            for (int64_t i = 0; i < L; ++i) acc = fold(r, acc, p[i]);
          }
        }
        out[o] = acc;
      }
    });
    return out;
  }
  // Column reduction: the last kept group (length L) is contiguous; outputs come in blocks of L.
  const int64_t L = ks.back();
  Shape ks2(ks.begin(), ks.end() - 1), kst2(kst.begin(), kst.end() - 1);
  const int64_t blocks = nout / L;
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (L + kChunk - 1) / kChunk;
  parallel_for(blocks * chunks, std::max<int64_t>(1, kGrain / std::max<int64_t>(rcount * kChunk, 1)), [&](int64_t b, int64_t e) {
    double acc[kChunk];
    for (int64_t t = b; t < e; ++t) {
      const int64_t blk = t / chunks, j0 = (t % chunks) * kChunk, j1 = std::min(L, j0 + kChunk), n = j1 - j0;
      const int64_t base = offset_of(blk, ks2, kst2) + j0;
      const double* cen = center ? center + blk * L + j0 : nullptr;
      for (int64_t j = 0; j < n; ++j) acc[j] = init;
      for (int64_t q = 0; q < rcount; ++q) {
        const float* p = xp + base + offset_of(q, rs, rst);
        if (r == Red::Sum) {
          for (int64_t j = 0; j < n; ++j) acc[j] += p[j];
        } else if (r == Red::SumSq) {
          for (int64_t j = 0; j < n; ++j) {
            const double d0 = p[j] - cen[j];
            acc[j] += d0 * d0;
          }
        } else {
          for (int64_t j = 0; j < n; ++j) acc[j] = fold(r, acc[j], p[j]);
        }
      }
      for (int64_t j = 0; j < n; ++j) out[blk * L + j0 + j] = acc[j];
    }
  });
  return out;
}

// Parses {dims, keepdim} against x; returns the reduce mask and the output shape.
std::vector<bool> parse_dims(const OpArgs& a, const Tensor& x, Shape* out_shape, int64_t* count) {
  const int nd = x.dim();
  std::vector<bool> mask(nd, false);
  if (!a.attrs.has("dims")) {
    std::fill(mask.begin(), mask.end(), true);
  } else {
    for (int64_t dd : a.attrs.ints("dims")) {
      const int d = norm_dim(a.op, dd, nd, "dims");
      MVQ_CHECK_RANGE(!mask[d], a.op, ": option 'dims' repeats dim ", d);
      mask[d] = true;
    }
  }
  const bool keep = a.attrs.b("keepdim", false);
  out_shape->clear();
  *count = 1;
  for (int d = 0; d < nd; ++d) {
    if (mask[d]) {
      *count *= x.shape()[d];
      if (keep) out_shape->push_back(1);
    } else {
      out_shape->push_back(x.shape()[d]);
    }
  }
  return mask;
}

Tensor to_tensor(const std::vector<double>& v, const Shape& shape, double mul = 1.0) {
  Tensor y = empty(shape);
  float* p = y.data<float>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i] * mul);
  return y;
}

std::vector<Tensor> op_sum(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  Shape out;
  int64_t n;
  auto mask = parse_dims(a, x, &out, &n);
  return {to_tensor(reduce_dense(x, mask, Red::Sum), out)};
}

std::vector<Tensor> op_mean(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  Shape out;
  int64_t n;
  auto mask = parse_dims(a, x, &out, &n);
  auto s = reduce_dense(x, mask, Red::Sum);
  for (double& v : s) v = n ? v / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  return {to_tensor(s, out)};
}

// var(x, {dims, keepdim, unbiased = true}): two passes (mean, then squared deviations) in float64.
std::vector<Tensor> op_var(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  Shape out;
  int64_t n;
  auto mask = parse_dims(a, x, &out, &n);
  const bool unbiased = a.attrs.b("unbiased", true);
  auto mean = reduce_dense(x, mask, Red::Sum);
  for (double& v : mean) v /= static_cast<double>(n);
  auto ss = reduce_dense(x, mask, Red::SumSq, mean.data());
  const double den = static_cast<double>(n) - (unbiased ? 1.0 : 0.0);
  for (double& v : ss) v = den > 0 ? v / den : std::numeric_limits<double>::quiet_NaN();
  return {to_tensor(ss, out)};
}

std::vector<Tensor> op_amax(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  Shape out;
  int64_t n;
  auto mask = parse_dims(a, x, &out, &n);
  MVQ_CHECK_RANGE(n > 0, a.op, ": cannot reduce an empty dimension of x ", x.shape_str());
  return {to_tensor(reduce_dense(x, mask, a.op == "amax" ? Red::Max : Red::Min), out)};
}

// argmax(x, {dim, keepdim}) -> int64; the lowest index wins ties; NaN counts as the maximum.
std::vector<Tensor> op_argmax(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  const int d = norm_dim(a.op, a.attrs.i("dim"), x.dim());
  const bool keep = a.attrs.b("keepdim", false);
  const int64_t D = x.shape()[d];
  MVQ_CHECK_RANGE(D > 0, "argmax: cannot reduce an empty dim of x ", x.shape_str());
  int64_t outer = 1, inner = 1;
  for (int k = 0; k < d; ++k) outer *= x.shape()[k];
  for (int k = d + 1; k < x.dim(); ++k) inner *= x.shape()[k];
  Shape out;
  for (int k = 0; k < x.dim(); ++k)
    if (k != d) out.push_back(x.shape()[k]);
    else if (keep) out.push_back(1);
  Tensor y = empty(out, DType::I64);
  int64_t* yp = y.data<int64_t>();
  const float* xp = x.data<float>();
  parallel_for(outer * inner, std::max<int64_t>(1, kGrain / D), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / inner, i = t % inner;
      const float* p = xp + o * D * inner + i;
      float best = p[0];
      int64_t bi = 0;
      for (int64_t j = 1; j < D && best == best; ++j) {
        const float v = p[j * inner];
        if (v > best || v != v) {
          best = v;
          bi = j;
        }
      }
      yp[t] = bi;
    }
  });
  return {y};
}

// sum_to(g, {shape}): sums a broadcast gradient back to `shape` (NumPy broadcasting rules).
std::vector<Tensor> op_sum_to(const OpArgs& a) {
  const Tensor& g = a.input(0, "g", DType::F32);
  const Shape target = a.attrs.ints("shape");
  MVQ_CHECK_RANGE(target.size() <= g.shape().size(), "sum_to: cannot reduce g of shape ", g.shape_str(), " to ",
                  shape_to_string(target));
  const size_t lead = g.shape().size() - target.size();
  std::vector<bool> mask(g.dim(), false);
  for (size_t d = 0; d < g.shape().size(); ++d) {
    if (d < lead) {
      mask[d] = true;
      continue;
    }
    const int64_t t = target[d - lead];
    MVQ_CHECK_RANGE(t == g.shape()[d] || t == 1, "sum_to: shape ", shape_to_string(target),
                    " does not broadcast to g's shape ", g.shape_str());
    mask[d] = t == 1 && g.shape()[d] != 1;
  }
  Tensor s = reduce_sum_keepdim(g, mask);
  return {s.view(target)};
}

// amax_backward(x, y, gy, {dims, keepdim}) -> gx: gy split evenly among the elements equal to the
// maximum (as torch.amax's gradient).
std::vector<Tensor> op_amax_backward(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  const Tensor y = a.input(1, "y", DType::F32).contiguous();
  const Tensor gy = a.input(2, "gy", DType::F32).contiguous();
  Shape out;
  int64_t n;
  auto mask = parse_dims(a, x, &out, &n);
  MVQ_CHECK_RANGE(y.shape() == out && gy.shape() == out, a.op, ": 'y' and 'gy' must have shape ", shape_to_string(out),
                  ", got ", y.shape_str(), " and ", gy.shape_str());
  Shape keep_shape = x.shape();
  for (int d = 0; d < x.dim(); ++d)
    if (mask[d]) keep_shape[d] = 1;
  const Tensor yb = broadcast_view(a.op, y.view(keep_shape), x.shape());
  const Tensor gb = broadcast_view(a.op, gy.view(keep_shape), x.shape());
  // Tie mask and its count per output.
  Tensor eq = empty(x.shape());
  {
    NdIter it = NdIter::make(x.shape(), {eq.strides(), x.strides(), yb.strides()});
    float* ep = eq.data<float>();
    const float *xp = x.data<float>(), *yp = yb.data<float>();
    const int64_t sy = it.inner_stride(2);
    it.for_rows(kGrain, [&](const int64_t* o, int64_t len) {
      for (int64_t i = 0; i < len; ++i) ep[o[0] + i] = xp[o[1] + i] == yp[o[2] + i * sy] ? 1.0f : 0.0f;
    });
  }
  const Tensor cnt = reduce_sum_keepdim(eq, mask);
  const Tensor cb = broadcast_view(a.op, cnt, x.shape());
  Tensor gx = empty(x.shape());
  NdIter it = NdIter::make(x.shape(), {gx.strides(), eq.strides(), gb.strides(), cb.strides()});
  float* gp = gx.data<float>();
  const float *ep = eq.data<float>(), *gyp = gb.data<float>(), *cp = cb.data<float>();
  const int64_t sg = it.inner_stride(2), sc = it.inner_stride(3);
  it.for_rows(kGrain, [&](const int64_t* o, int64_t len) {
    for (int64_t i = 0; i < len; ++i)
      gp[o[0] + i] = ep[o[1] + i] != 0.0f ? gyp[o[2] + i * sg] / cp[o[3] + i * sc] : 0.0f;
  });
  return {gx};
}

}  // namespace

Tensor reduce_sum_keepdim(const Tensor& x, const std::vector<bool>& reduce) {
  const Tensor xc = x.contiguous();
  Shape out = xc.shape();
  for (size_t d = 0; d < out.size(); ++d)
    if (reduce[d]) out[d] = 1;
  return to_tensor(reduce_dense(xc, reduce, Red::Sum), out);
}

}  // namespace cpu

MVQ_REGISTER_OP("sum", Device::CPU, cpu::op_sum);
MVQ_OP_ATTRS("sum", "dims", "keepdim");
MVQ_REGISTER_OP("mean", Device::CPU, cpu::op_mean);
MVQ_OP_ATTRS("mean", "dims", "keepdim");
MVQ_REGISTER_OP("var", Device::CPU, cpu::op_var);
MVQ_OP_ATTRS("var", "dims", "keepdim", "unbiased");
MVQ_REGISTER_OP("amax", Device::CPU, cpu::op_amax);
MVQ_OP_ATTRS("amax", "dims", "keepdim");
MVQ_REGISTER_OP("amin", Device::CPU, cpu::op_amax);
MVQ_OP_ATTRS("amin", "dims", "keepdim");
MVQ_REGISTER_OP("argmax", Device::CPU, cpu::op_argmax);
MVQ_OP_ATTRS("argmax", "dim", "keepdim");
MVQ_REGISTER_OP("sum_to", Device::CPU, cpu::op_sum_to);
MVQ_OP_ATTRS("sum_to", "shape");
MVQ_REGISTER_OP("amax_backward", Device::CPU, cpu::op_amax_backward);
MVQ_OP_ATTRS("amax_backward", "dims", "keepdim");

}  // namespace mvq
