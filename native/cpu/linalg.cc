// matmul, linear and their backward ops on top of sgemm (gemm.h).
#include <algorithm>
#include <cstring>

#include "../core/op.h"
#include "../core/parallel.h"
#include "gemm.h"

namespace mvq {
namespace {

// A matrix operand for sgemm: the logical matrix is op(stored) with op = transpose when `trans`.
struct Mat {
  const float* p = nullptr;
  bool trans = false;
  int64_t ld = 1;
};

// Describes the last two dims (R x C, strides s0, s1) of a tensor as an sgemm operand whose logical
// matrix is the stored one (transposed when `t`). False when neither dim is unit-stride.
bool mat_of(int64_t R, int64_t C, int64_t s0, int64_t s1, bool t, bool* trans, int64_t* ld) {
  if (C == 1) s1 = 1;
  if (R == 1) s0 = std::max<int64_t>(C, 1);
  if (s1 == 1 && s0 >= std::max<int64_t>(C, 1)) {
    *trans = t;
    *ld = s0;
    return true;
  }
  if (s0 == 1 && s1 >= std::max<int64_t>(R, 1)) {
    *trans = !t;
    *ld = s1;
    return true;
  }
  return false;
}

std::string dims_str(const Shape& s, size_t n) { return shape_to_string(Shape(s.begin(), s.begin() + n)); }

// Broadcasts batch shapes (numpy rules); false when they do not broadcast.
bool broadcast_batch(const Shape& a, const Shape& b, Shape* out) {
  const size_t n = std::max(a.size(), b.size());
  out->assign(n, 1);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1) return false;
    (*out)[i] = da == 1 ? db : da;
  }
  return true;
}

// Element offsets, for every index of the broadcast batch shape `bs`, of the matching matrix of a
// tensor whose batch dims are `shape`/`strides` (the leading dims, right-aligned to bs).
std::vector<int64_t> batch_offsets(const Shape& bs, const Shape& shape, const Shape& strides) {
  int64_t n = shape_numel(bs);
  std::vector<int64_t> off(static_cast<size_t>(n), 0);
  const size_t nd = bs.size(), k = shape.size();
  std::vector<int64_t> idx(nd, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t o = 0;
    for (size_t d = 0; d < k; ++d) {
      const size_t bd = d + (nd - k);
      if (shape[d] != 1) o += idx[bd] * strides[d];
    }
    off[static_cast<size_t>(i)] = o;
    for (size_t d = nd; d-- > 0;) {
      if (++idx[d] < bs[d]) break;
      idx[d] = 0;
    }
  }
  return off;
}

// Runs count GEMMs C_i = alpha * op(A_i) op(B_i) + beta * C_i; C_i must be distinct.
void run_batch(int64_t count, int64_t M, int64_t N, int64_t K, float alpha, const Mat& A, const std::vector<int64_t>& oa,
               const Mat& B, const std::vector<int64_t>& ob, float beta, float* C, int64_t ldc, int64_t stride_c) {
  const double flops = 2.0 * M * N * K;
  if (count >= num_threads() && num_threads() > 1 && flops < 64e6) {
    parallel_tasks(count, [&](int64_t i, int) {
      sgemm_st(A.trans, B.trans, M, N, K, alpha, A.p + oa[i], A.ld, B.p + ob[i], B.ld, beta, C + i * stride_c, ldc);
    });
    return;
  }
  for (int64_t i = 0; i < count; ++i)
    sgemm(A.trans, B.trans, M, N, K, alpha, A.p + oa[i], A.ld, B.p + ob[i], B.ld, beta, C + i * stride_c, ldc);
}

// True when the batch dims (strides st, shape sh, leading nb dims) of a matrix with row stride
// `row_stride` and R rows stack into one matrix of rows with that same row stride.
bool rows_stack(const Shape& sh, const Shape& st, size_t nb, int64_t R, int64_t row_stride) {
  int64_t expect = R * row_stride;
  for (size_t d = nb; d-- > 0;) {
    if (sh[d] == 1) continue;
    if (st[d] != expect) return false;
    expect *= sh[d];
  }
  return true;
}

struct MatmulDims {
  int64_t M, N, K;
  Shape bs;
};

MatmulDims matmul_dims(const char* op, const Tensor& a, const Tensor& b, bool ta, bool tb) {
  MVQ_CHECK_TYPE(a.dim() >= 2, op, ": 'a' must be float32 [..., M, K] (rank >= 2), got ", a.shape_str());
  MVQ_CHECK_TYPE(b.dim() >= 2, op, ": 'b' must be float32 [..., K, N] (rank >= 2), got ", b.shape_str());
  const int64_t ar = a.size(-2), ac = a.size(-1), br = b.size(-2), bc = b.size(-1);
  MatmulDims d;
  d.M = ta ? ac : ar;
  d.K = ta ? ar : ac;
  const int64_t kb = tb ? bc : br;
  d.N = tb ? br : bc;
  MVQ_CHECK_RANGE(d.K == kb, op, ": inner dims differ: op(a) is ", d.M, " x ", d.K, " (a ", a.shape_str(),
                  ta ? ", trans_a" : "", "), op(b) is ", kb, " x ", d.N, " (b ", b.shape_str(), tb ? ", trans_b" : "",
                  ")");
  MVQ_CHECK_RANGE(broadcast_batch(Shape(a.shape().begin(), a.shape().end() - 2),
                                  Shape(b.shape().begin(), b.shape().end() - 2), &d.bs),
                  op, ": batch dims of 'a' ", dims_str(a.shape(), a.dim() - 2), " and 'b' ",
                  dims_str(b.shape(), b.dim() - 2), " do not broadcast");
  return d;
}

// Operand view of the last two dims of t (copying to contiguous when no dim is unit-stride).
Mat operand(Tensor* t, bool logical_trans) {
  Mat m;
  const int64_t R = t->size(-2), C = t->size(-1);
  if (!mat_of(R, C, t->strides()[t->dim() - 2], t->strides()[t->dim() - 1], logical_trans, &m.trans, &m.ld)) {
    *t = t->contiguous();
    mat_of(R, C, C, 1, logical_trans, &m.trans, &m.ld);
  }
  m.p = t->data<float>();
  return m;
}

// matmul(a [..., M, K], b [..., K, N], {trans_a, trans_b, alpha}) -> alpha * op(a) op(b) [..., M, N].
std::vector<Tensor> op_matmul(const OpArgs& args) {
  Tensor a = args.input(0, "a", DType::F32);
  Tensor b = args.input(1, "b", DType::F32);
  const bool ta = args.attrs.b("trans_a", false), tb = args.attrs.b("trans_b", false);
  const float alpha = static_cast<float>(args.attrs.f("alpha", 1.0));
  const MatmulDims d = matmul_dims("matmul", a, b, ta, tb);
  Shape ys = d.bs;
  ys.push_back(d.M);
  ys.push_back(d.N);
  Tensor y = empty(ys);
  const int64_t count = shape_numel(d.bs);
  if (y.numel() == 0) return {y};
  const Mat A = operand(&a, ta), B = operand(&b, tb);
  const size_t nba = a.dim() - 2, nbb = b.dim() - 2;
  const Shape abs(a.shape().begin(), a.shape().end() - 2), ast(a.strides().begin(), a.strides().end() - 2);
  const Shape bbs(b.shape().begin(), b.shape().end() - 2), bst(b.strides().begin(), b.strides().end() - 2);
  // b shared by the whole batch and a's rows stack: one GEMM over batch*M rows.
  if (count > 1 && shape_numel(bbs) == 1 && !A.trans && shape_numel(abs) == count &&
      rows_stack(abs, ast, nba, d.M, A.ld)) {
    sgemm(false, B.trans, count * d.M, d.N, d.K, alpha, A.p, A.ld, B.p, B.ld, 0.0f, y.data<float>(), d.N);
    return {y};
  }
  const std::vector<int64_t> oa = batch_offsets(d.bs, abs, ast), ob = batch_offsets(d.bs, bbs, bst);
  (void)nbb;
  run_batch(count, d.M, d.N, d.K, alpha, A, oa, B, ob, 0.0f, y.data<float>(), d.N, d.M * d.N);
  return {y};
}

// Gradient of one operand: out[slot(i)] (+)= alpha * op(X_i) op(Y_i) over the broadcast batch,
// summing over the batch indices that broadcast onto one slot of `out` (shape oshape).
void grad_batched(const Shape& bs, const Shape& oshape, int64_t M, int64_t N, int64_t K, float alpha, const Mat& X,
                  const std::vector<int64_t>& ox, const Mat& Y, const std::vector<int64_t>& oy, Tensor* out) {
  const int64_t count = shape_numel(bs);
  const Shape obs(oshape.begin(), oshape.end() - 2);
  const Shape ost = contiguous_strides(oshape);
  const Shape obst(ost.begin(), ost.end() - 2);
  float* o = out->data<float>();
  if (shape_numel(obs) == count) {
    run_batch(count, M, N, K, alpha, X, ox, Y, oy, 0.0f, o, N, M * N);
    return;
  }
  std::fill(o, o + out->numel(), 0.0f);
  const std::vector<int64_t> oo = batch_offsets(bs, obs, obst);
  for (int64_t i = 0; i < count; ++i)
    sgemm(X.trans, Y.trans, M, N, K, alpha, X.p + ox[i], X.ld, Y.p + oy[i], Y.ld, 1.0f, o + oo[i], N);
}

Mat flip(Mat m) {
  m.trans = !m.trans;
  return m;
}

// matmul_backward(a, b, gy, {trans_a, trans_b, alpha}) -> [ga, gb], shaped like a and b.
std::vector<Tensor> op_matmul_backward(const OpArgs& args) {
  Tensor a = args.input(0, "a", DType::F32).contiguous();
  Tensor b = args.input(1, "b", DType::F32).contiguous();
  Tensor gy = args.input(2, "gy", DType::F32).contiguous();
  const bool ta = args.attrs.b("trans_a", false), tb = args.attrs.b("trans_b", false);
  const float alpha = static_cast<float>(args.attrs.f("alpha", 1.0));
  const MatmulDims d = matmul_dims("matmul_backward", a, b, ta, tb);
  Shape ys = d.bs;
  ys.push_back(d.M);
  ys.push_back(d.N);
  MVQ_CHECK_RANGE(gy.shape() == ys, "matmul_backward: 'gy' must be float32 ", shape_to_string(ys), ", got ",
                  gy.shape_str());
  Tensor ga = empty(a.shape()), gb = empty(b.shape());
  const int64_t M = d.M, N = d.N, K = d.K, count = shape_numel(d.bs);
  if (ga.numel() == 0 && gb.numel() == 0) return {ga, gb};
  if (count == 0 || M == 0 || N == 0) {
    std::fill(ga.data<float>(), ga.data<float>() + ga.numel(), 0.0f);
    std::fill(gb.data<float>(), gb.data<float>() + gb.numel(), 0.0f);
    return {ga, gb};
  }
  const Mat A = operand(&a, ta), B = operand(&b, tb), G = operand(&gy, false);
  const Shape abs(a.shape().begin(), a.shape().end() - 2), bbs(b.shape().begin(), b.shape().end() - 2);
  const Shape ast = contiguous_strides(a.shape()), bst = contiguous_strides(b.shape());
  const std::vector<int64_t> oa = batch_offsets(d.bs, abs, Shape(ast.begin(), ast.end() - 2));
  const std::vector<int64_t> ob = batch_offsets(d.bs, bbs, Shape(bst.begin(), bst.end() - 2));
  std::vector<int64_t> og(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) og[i] = i * M * N;
  const bool b_shared = shape_numel(bbs) == 1 && count > 1 && shape_numel(abs) == count;
  const bool a_shared = shape_numel(abs) == 1 && count > 1 && shape_numel(bbs) == count;
  // ga: gA = alpha gy B^T [M, K]; with trans_a, ga = gA^T = alpha B gy^T [K, M].
  if (ga.numel()) {
    if (!ta && b_shared) {
      sgemm(false, !B.trans, count * M, K, N, alpha, G.p, N, B.p, B.ld, 0.0f, ga.data<float>(), K);
    } else if (!ta) {
      grad_batched(d.bs, a.shape(), M, K, N, alpha, G, og, flip(B), ob, &ga);
    } else {
      grad_batched(d.bs, a.shape(), K, M, N, alpha, B, ob, flip(G), og, &ga);
    }
  }
  // gb: gB = alpha A^T gy [K, N]; with trans_b, gb = gB^T = alpha gy^T A [N, K].
  if (gb.numel()) {
    if (b_shared && !A.trans) {
      // Stacked rows of A ([count*M, K]) and gy ([count*M, N]).
      if (!tb)
        sgemm(true, false, K, N, count * M, alpha, A.p, A.ld, G.p, N, 0.0f, gb.data<float>(), N);
      else
        sgemm(true, false, N, K, count * M, alpha, G.p, N, A.p, A.ld, 0.0f, gb.data<float>(), K);
    } else if (!tb) {
      grad_batched(d.bs, b.shape(), K, N, M, alpha, flip(A), oa, G, og, &gb);
    } else {
      grad_batched(d.bs, b.shape(), N, K, M, alpha, flip(G), og, A, oa, &gb);
    }
  }
  (void)a_shared;
  return {ga, gb};
}

// Rows view of x [..., K]: a row-major [rows, K] matrix with row stride *ld (copying when the
// leading dims do not collapse to one stride).
const float* rows_of(Tensor* x, int64_t* ld) {
  const int nd = x->dim();
  const int64_t K = x->size(-1);
  const Shape& st = x->strides();
  bool ok = K == 1 || st[nd - 1] == 1;
  int64_t rs = K;
  if (ok && nd >= 2) {
    // find the innermost non-unit leading dim's stride; all leading dims must stack on it.
    int64_t inner = -1;
    for (int d = nd - 2; d >= 0; --d)
      if (x->size(d) != 1) {
        inner = st[d];
        break;
      }
    if (inner >= 0) {
      rs = inner;
      ok = rs >= K && rows_stack(Shape(x->shape().begin(), x->shape().end() - 1),
                                 Shape(st.begin(), st.end() - 1), nd - 1, 1, rs);
    }
  }
  if (!ok) {
    *x = x->contiguous();
    rs = K;
  }
  *ld = std::max<int64_t>(rs, 1);
  return x->data<float>();
}

void check_linear(const char* op, const Tensor& x, const Tensor& w) {
  MVQ_CHECK_TYPE(x.dim() >= 1, op, ": 'x' must be float32 [..., K], got a scalar");
  MVQ_CHECK_TYPE(w.dim() == 2, op, ": 'w' must be float32 [N, K], got ", w.shape_str());
  MVQ_CHECK_RANGE(w.size(1) == x.size(-1), op, ": 'w' must be float32 [N, ", x.size(-1), "] to match 'x' ",
                  x.shape_str(), ", got ", w.shape_str());
}

// linear(x [..., K], w [N, K], bias? [N]) -> x w^T + bias [..., N].
std::vector<Tensor> op_linear(const OpArgs& args) {
  Tensor x = args.input(0, "x", DType::F32);
  Tensor w = args.input(1, "w", DType::F32);
  check_linear("linear", x, w);
  const int64_t K = x.size(-1), N = w.size(0), rows = x.numel() / std::max<int64_t>(K, 1);
  Shape ys = x.shape();
  ys.back() = N;
  Tensor y = empty(ys);
  const int64_t R = K == 0 ? shape_numel(Shape(x.shape().begin(), x.shape().end() - 1)) : rows;
  float* yp = y.data<float>();
  float beta = 0.0f;
  if (args.has_input(2)) {
    Tensor bias = args.input(2, "bias", DType::F32, 1).contiguous();
    MVQ_CHECK_RANGE(bias.size(0) == N, "linear: 'bias' must be float32 [", N, "], got ", bias.shape_str());
    const float* bp = bias.data<float>();
    parallel_for(R, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) std::memcpy(yp + i * N, bp, sizeof(float) * N);
    });
    beta = 1.0f;
  }
  if (y.numel() == 0) return {y};
  int64_t lda;
  const float* xp = rows_of(&x, &lda);
  Mat W = operand(&w, true);
  sgemm(false, W.trans, R, N, K, 1.0f, xp, lda, W.p, W.ld, beta, yp, N);
  return {y};
}

// linear_backward(x, w, gy, {has_bias}) -> [gx, gw, gbias or null].
std::vector<Tensor> op_linear_backward(const OpArgs& args) {
  Tensor x = args.input(0, "x", DType::F32);
  Tensor w = args.input(1, "w", DType::F32);
  Tensor gy = args.input(2, "gy", DType::F32);
  check_linear("linear_backward", x, w);
  const int64_t K = x.size(-1), N = w.size(0);
  Shape ys = x.shape();
  ys.back() = N;
  MVQ_CHECK_RANGE(gy.shape() == ys, "linear_backward: 'gy' must be float32 ", shape_to_string(ys), ", got ",
                  gy.shape_str());
  const int64_t R = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Tensor gx = empty(x.shape()), gw = empty(w.shape());
  int64_t ldx, ldg;
  const float* xp = rows_of(&x, &ldx);
  const float* gp = rows_of(&gy, &ldg);
  Mat W = operand(&w, false);
  // gx [R, K] = gy [R, N] w [N, K]
  sgemm(false, W.trans, R, K, N, 1.0f, gp, ldg, W.p, W.ld, 0.0f, gx.data<float>(), K);
  // gw [N, K] = gy^T [N, R] x [R, K]
  sgemm(true, false, N, K, R, 1.0f, gp, ldg, xp, ldx, 0.0f, gw.data<float>(), K);
  Tensor gb;
  if (args.attrs.b("has_bias", false)) {
    gb = empty({N});
    float* o = gb.data<float>();
    parallel_for(N, 64, [&](int64_t b, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(e - b), 0.0);
      for (int64_t i = 0; i < R; ++i) {
        const float* g = gp + i * ldg;
        for (int64_t j = b; j < e; ++j) acc[j - b] += g[j];
      }
      for (int64_t j = b; j < e; ++j) o[j] = static_cast<float>(acc[j - b]);
    });
  }
  return {gx, gw, gb};
}

// gemm_kernel() -> int32 [2]: [nr, avx512] of the sgemm micro-kernel in use (16/0 = AVX2/FMA,
// 32/1 = AVX-512), for benchmarks and for tests of the MERGEVQ_SIMD override.
std::vector<Tensor> op_gemm_kernel(const OpArgs&) {
  Tensor t = empty({2}, DType::I32);
  const bool avx512 = std::strcmp(sgemm_kernel_name(), "avx512") == 0;
  t.data<int32_t>()[0] = avx512 ? 32 : 16;
  t.data<int32_t>()[1] = avx512 ? 1 : 0;
  return {t};
}

}  // namespace

MVQ_REGISTER_OP("gemm_kernel", Device::CPU, op_gemm_kernel);
MVQ_REGISTER_OP("matmul", Device::CPU, op_matmul);
MVQ_OP_ATTRS("matmul", "alpha", "trans_a", "trans_b");
MVQ_REGISTER_OP("matmul_backward", Device::CPU, op_matmul_backward);
MVQ_OP_ATTRS("matmul_backward", "alpha", "trans_a", "trans_b");
MVQ_REGISTER_OP("linear", Device::CPU, op_linear);
MVQ_REGISTER_OP("linear_backward", Device::CPU, op_linear_backward);
MVQ_OP_ATTRS("linear_backward", "has_bias");

}  // namespace mvq
