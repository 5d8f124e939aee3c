// Host-side argument checks for the attention ops, shared by the CPU and CUDA implementations so
// both accept and reject exactly the same calls. Fills an AttnParams (pointers + strides).
#pragma once
#include <cmath>

#include "../core/op.h"
#include "online_softmax.h"

namespace mvq {

// Inputs: 0 q [B,H,N,hd], 1 k [B,H,M,hd], 2 v [B,H,M,hd], 3 key_bias f32 [B,M]?, 4 keep u8 [B,M]?.
// Attrs: scale (default 1/sqrt(hd)), causal, q_offset (>= 0), window (>= 0, default 2),
// kv_len (in [0, M], default M).
inline AttnParams parse_attention_args(const OpArgs& a, const char* op) {
  const Tensor& q = a.input(0, "q", DType::F32, 4);
  const Tensor& k = a.input(1, "k", DType::F32, 4);
  const Tensor& v = a.input(2, "v", DType::F32, 4);
  AttnParams p;
  p.B = q.size(0);
  p.H = q.size(1);
  p.N = q.size(2);
  p.hd = q.size(3);
  p.M = k.size(2);
  MVQ_CHECK_TYPE(k.size(0) == p.B && k.size(1) == p.H && k.size(3) == p.hd, op, ": 'k' must be float32 [B, H, M, hd] = [", p.B,
                 ", ", p.H, ", M, ", p.hd, "] to match q ", q.shape_str(), ", got ", k.shape_str());
  MVQ_CHECK_TYPE(v.shape() == k.shape(), op, ": 'v' must have the shape of k ", k.shape_str(), ", got ", v.shape_str());
  MVQ_CHECK_RANGE(p.hd > 0, op, ": head dim of 'q' must be positive, got ", q.shape_str());
  p.q = q.data<float>();
  p.k = k.data<float>();
  p.v = v.data<float>();
  for (int d = 0; d < 4; ++d) {
    p.qs[d] = q.strides()[d];
    p.ks[d] = k.strides()[d];
    p.vs[d] = v.strides()[d];
  }
  if (a.has_input(3)) {
    const Tensor& kb = a.input(3, "key_bias", DType::F32, 2);
    MVQ_CHECK_TYPE(kb.size(0) == p.B && kb.size(1) == p.M, op, ": 'key_bias' must be float32 [B, M] = [", p.B, ", ", p.M,
                   "], got ", kb.shape_str());
    p.bias = kb.data<float>();
    p.bs[0] = kb.strides()[0];
    p.bs[1] = kb.strides()[1];
  }
  if (a.has_input(4)) {
    const Tensor& kp = a.input(4, "keep", DType::U8, 2);
    MVQ_CHECK_TYPE(kp.size(0) == p.B && kp.size(1) == p.M, op, ": 'keep' must be uint8 [B, M] = [", p.B, ", ", p.M, "], got ",
                   kp.shape_str());
    p.keep = kp.data<uint8_t>();
    p.kps[0] = kp.strides()[0];
    p.kps[1] = kp.strides()[1];
  }
  double scale = a.attrs.f("scale", 1.0 / std::sqrt(static_cast<double>(p.hd)));
  MVQ_CHECK_RANGE(std::isfinite(scale), op, ": option 'scale' must be a finite number, got ", scale);
  p.scale = static_cast<float>(scale);
  p.causal = a.attrs.b("causal", false);
  p.q_offset = a.attrs.i("q_offset", 0);
  MVQ_CHECK_RANGE(p.q_offset >= 0, op, ": option 'q_offset' must be an integer >= 0, got ", p.q_offset);
  p.window = a.attrs.i("window", 2);
  MVQ_CHECK_RANGE(p.window >= 0, op, ": option 'window' must be an integer >= 0, got ", p.window);
  p.kv_len = a.attrs.i("kv_len", p.M);
  MVQ_CHECK_RANGE(p.kv_len >= 0 && p.kv_len <= p.M, op, ": option 'kv_len' must be an integer in [0, ", p.M, "], got ", p.kv_len);
  return p;
}

// Backward extra inputs: 5 o [B,H,N,hd], 6 lse f32 [B,H,N], 7 go [B,H,N,hd]. All may be strided.
struct AttnGradInputs {
  const float* o;
  int64_t os[4];
  const float* lse;
  int64_t ls[3];
  const float* go;
  int64_t gs[4];
};

inline AttnGradInputs parse_attention_grad_args(const OpArgs& a, const AttnParams& p, const char* op) {
  const Tensor& o = a.input(5, "o", DType::F32, 4);
  const Tensor& lse = a.input(6, "lse", DType::F32, 3);
  const Tensor& go = a.input(7, "go", DType::F32, 4);
  const Shape qshape = {p.B, p.H, p.N, p.hd};
  MVQ_CHECK_TYPE(o.shape() == qshape, op, ": 'o' must be float32 ", shape_to_string(qshape), ", got ", o.shape_str());
  MVQ_CHECK_TYPE(go.shape() == qshape, op, ": 'go' must be float32 ", shape_to_string(qshape), ", got ", go.shape_str());
  const Shape lshape = {p.B, p.H, p.N};
  MVQ_CHECK_TYPE(lse.shape() == lshape, op, ": 'lse' must be float32 ", shape_to_string(lshape), ", got ", lse.shape_str());
  AttnGradInputs g;
  g.o = o.data<float>();
  g.lse = lse.data<float>();
  g.go = go.data<float>();
  for (int d = 0; d < 4; ++d) {
    g.os[d] = o.strides()[d];
    g.gs[d] = go.strides()[d];
  }
  for (int d = 0; d < 3; ++d) g.ls[d] = lse.strides()[d];
  return g;
}

}  // namespace mvq
