// 2D rotary position embedding as LlamaGen's apply_rotary_emb: each head's channels are viewed as
// hd/2 adjacent pairs (x0, x1) = (x[2i], x[2i+1]) and rotated by the angle whose (cos, sin) is
// freqs[n, i]: y0 = x0*cos - x1*sin, y1 = x1*cos + x0*sin. The backward rotates by the negative
// angle. x may have any strides (q/k are often views of a fused qkv projection).
#include "ops_common.h"

namespace mvq {
namespace cpu {
namespace {

Tensor rotate(const OpArgs& a, const char* xname, float sign) {
  const Tensor& x = a.input(0, xname, DType::F32, 4);
  const Tensor freqs = a.input(1, "freqs", DType::F32, 3).contiguous();
  const int64_t B = x.size(0), N = x.size(1), H = x.size(2), hd = x.size(3);
  MVQ_CHECK_RANGE(hd % 2 == 0, a.op, ": head dim of '", xname, "' must be even, got ", x.shape_str());
  MVQ_CHECK_RANGE(freqs.size(0) == N && freqs.size(1) == hd / 2 && freqs.size(2) == 2, a.op,
                  ": 'freqs' must have shape [", N, ", ", hd / 2, ", 2] for '", xname, "' ", x.shape_str(), ", got ",
                  freqs.shape_str());
  Tensor y = empty(x.shape());
  float* yp = y.data<float>();
  const float* xp = x.data<float>();
  const float* fp = freqs.data<float>();
  const Shape& s = x.strides();
  const int64_t P = hd / 2;
  parallel_for(B * N * H, std::max<int64_t>(1, 8192 / std::max<int64_t>(hd, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t h = t % H, n = (t / H) % N, bb = t / (H * N);
      const float* xr = xp + bb * s[0] + n * s[1] + h * s[2];
      const float* f = fp + n * P * 2;
      float* yr = yp + t * hd;
      const int64_t sc = s[3];
      if (sc == 1) {
        for (int64_t i = 0; i < P; ++i) {
          const float c = f[2 * i], sn = sign * f[2 * i + 1];
          const float x0 = xr[2 * i], x1 = xr[2 * i + 1];
          yr[2 * i] = x0 * c - x1 * sn;
          yr[2 * i + 1] = x1 * c + x0 * sn;
        }
      } else {
        for (int64_t i = 0; i < P; ++i) {
          const float c = f[2 * i], sn = sign * f[2 * i + 1];
          const float x0 = xr[2 * i * sc], x1 = xr[(2 * i + 1) * sc];
          yr[2 * i] = x0 * c - x1 * sn;
          yr[2 * i + 1] = x1 * c + x0 * sn;
        }
      }
    }
  });
  return y;
}

// rope(x [B, N, H, hd], freqs [N, hd/2, 2]) -> y [B, N, H, hd].
std::vector<Tensor> op_rope(const OpArgs& a) { return {rotate(a, "x", 1.0f)}; }
// rope_backward(gy, freqs) -> gx: rotation by the negative angle.
std::vector<Tensor> op_rope_backward(const OpArgs& a) { return {rotate(a, "gy", -1.0f)}; }

}  // namespace
}  // namespace cpu

MVQ_REGISTER_OP("rope", Device::CPU, cpu::op_rope);
MVQ_REGISTER_OP("rope_backward", Device::CPU, cpu::op_rope_backward);

}  // namespace mvq
