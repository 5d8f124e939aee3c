// conv2d and conv2d_backward (NCHW, weights [O, C/groups, KH, KW]).
//
// Forward is an implicit GEMM per (image, group): Y[Og, Ho*Wo] = W[Og, Cg*KH*KW] * col, where the
// im2col matrix `col` is never materialized: sgemm packs it panel by panel straight from the image
// (Im2colB). 1x1 stride-1 unpadded convolutions are plain GEMMs on the image. 3x3 stride-1 pad-1
// convolutions (groups = 1, rows of >= 10 pixels) use a direct register-tiled kernel. Depthwise
// convolutions (one input channel per output) use a direct kernel.
//
// Backward: gx for stride 1 is the forward convolution of gy with the flipped, transposed kernel;
// otherwise gx = col2im(W^T gy) over bounded column tiles. gw = gy * col^T accumulated over column
// tiles of an explicit im2col (at most about 8 MB of scratch at a time).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../core/op.h"
#include "../core/parallel.h"
#include "gemm.h"

namespace mvq {
namespace {

struct Geom {
  int64_t B, C, H, W;  // input (C = all channels)
  int64_t O, KH, KW;   // weights
  int64_t groups, Cg, Og;
  int64_t sh, sw, ph, pw;
  int64_t Ho, Wo;
  int64_t K() const { return Cg * KH * KW; }
  int64_t N() const { return Ho * Wo; }
};

// Output columns [lo, hi) of one output row for which input column ow*s - p + kw lies in [0, W).
inline void valid_cols(int64_t W, int64_t Wo, int64_t s, int64_t p, int64_t kw, int64_t* lo, int64_t* hi) {
  const int64_t a = p - kw;  // need ow*s >= a
  *lo = a <= 0 ? 0 : (a + s - 1) / s;
  const int64_t b = W - 1 + p - kw;  // need ow*s <= b
  *hi = b < 0 ? 0 : std::min<int64_t>(Wo, b / s + 1);
  if (*lo > *hi) *lo = *hi;
}

// Input columns iw0 .. iw0+7 of one row of width W (zero outside [0, W)).
inline __m256 edge_chunk(const float* row, int64_t iw0, int64_t W) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i pos = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(iw0)));
  const __m256i valid = _mm256_and_si256(_mm256_cmpgt_epi32(pos, _mm256_set1_epi32(-1)),
                                         _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(W)), pos));
  if (W < 8) {
    alignas(32) float t[8];
    for (int i = 0; i < 8; ++i) t[i] = (iw0 + i >= 0 && iw0 + i < W) ? row[iw0 + i] : 0.0f;
    return _mm256_load_ps(t);
  }
  const int64_t base = std::min<int64_t>(std::max<int64_t>(iw0, 0), W - 8);
  const __m256 v = _mm256_loadu_ps(row + base);
  const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(iw0 - base)));
  return _mm256_and_ps(_mm256_permutevar8x32_ps(v, idx), _mm256_castsi256_ps(valid));
}

// The im2col matrix of one image and group, [Cg*KH*KW, Ho*Wo], packed on demand.
class Im2colB final : public BPacker {
 public:
  Im2colB(const float* x, const Geom& g) : x_(x), g_(g) {}
  double cost() const override { return 1.5; }
  void pack(int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    const int64_t H = g_.H, W = g_.W, Wo = g_.Wo, KH = g_.KH, KW = g_.KW;
    const int64_t sh = g_.sh, sw = g_.sw, ph = g_.ph, pw = g_.pw;
    int64_t loh[64], low[64];  // per column of the panel: output row/col, or -1 past the end
    bool fast[8];              // per 8-column chunk: one output row, stride 1 or 2 in w
    for (int64_t jp = 0; jp < nc; jp += nr) {
      float* d = dst + jp * kc;
      const int64_t n = std::min<int64_t>(nr, nc - jp);
      for (int q = 0; q < nr; ++q) {
        if (q < n) {
          const int64_t j = j0 + jp + q;
          loh[q] = j / Wo;
          low[q] = j % Wo;
        } else {
          loh[q] = -1;
          low[q] = 0;
        }
      }
      for (int q = 0; q < nr; q += 8) fast[q / 8] = (sw == 1 || sw == 2) && q + 8 <= n && low[q] + 8 <= Wo;
      int64_t c = k0 / (KH * KW), r = k0 % (KH * KW), kh = r / KW, kw = r % KW;
      for (int64_t k = 0; k < kc; ++k) {
        const float* xc = x_ + c * H * W;
        float* o = d + k * nr;
        for (int q = 0; q < nr; q += 8) {
          if (fast[q / 8]) {
            const int64_t ih = loh[q] * sh - ph + kh;
            if (ih < 0 || ih >= H) {
              _mm256_store_ps(o + q, _mm256_setzero_ps());
              continue;
            }
            const int64_t iw0 = low[q] * sw - pw + kw;
            const float* src = xc + ih * W;
            if (sw == 2) {
              if (iw0 >= 0 && iw0 + 16 <= W) {
                // Even elements of 16 consecutive floats.
                const __m256 lo = _mm256_loadu_ps(src + iw0), hi = _mm256_loadu_ps(src + iw0 + 8);
                const __m256 ev = _mm256_shuffle_ps(lo, hi, 0x88);  // l0 l2 h0 h2 | l4 l6 h4 h6
                _mm256_store_ps(o + q, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8)));
              } else {
                for (int t = 0; t < 8; ++t) {
                  const int64_t iw = iw0 + 2 * t;
                  o[q + t] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
                }
              }
            } else if (iw0 >= 0 && iw0 + 8 <= W) {
              _mm256_store_ps(o + q, _mm256_loadu_ps(src + iw0));
            } else {
              // Part of the chunk falls in the padding: load the 8 in-row floats nearest to it,
              // shift them into place and zero the padding lanes.
              _mm256_store_ps(o + q, edge_chunk(src, iw0, W));
            }
          } else {
            for (int t = q; t < q + 8; ++t) {
              float v = 0.0f;
              if (loh[t] >= 0) {
                const int64_t ih = loh[t] * sh - ph + kh, iw = low[t] * sw - pw + kw;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = xc[ih * W + iw];
              }
              o[t] = v;
            }
          }
        }
        if (++kw == KW) {
          kw = 0;
          if (++kh == KH) {
            kh = 0;
            ++c;
          }
        }
      }
    }
  }

 private:
  const float* x_;
  Geom g_;
};

bool is_pointwise(const Geom& g) {
  return g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}
bool is_depthwise(const Geom& g) { return g.Cg == 1 && g.groups > 1; }

// Depthwise kernels work on a zero-padded copy of one input plane, [(H + 2ph) x (W + 2pw)], so
// every tap is a plain strided loop over whole output rows with no bounds checks.
struct Padded {
  int64_t Hp, Wp;
  std::vector<float> buf;
  explicit Padded(const Geom& g) : Hp(g.H + 2 * g.ph), Wp(g.W + 2 * g.pw) {
    // Rows read by the last output row may stop short of the padded height; size for the reads.
    buf.assign(static_cast<size_t>(Hp * Wp + 16), 0.0f);
  }
  void load(const Geom& g, const float* plane) {
    for (int64_t h = 0; h < g.H; ++h) std::memcpy(&buf[(h + g.ph) * Wp + g.pw], plane + h * g.W, sizeof(float) * g.W);
  }
  float* at(int64_t h, int64_t w) { return buf.data() + h * Wp + w; }
};

// Direct depthwise forward: y[b, o] = bias[o] + sum_{kh,kw} w[o, 0, kh, kw] x[b, o / Og, ...].
void depthwise_forward(const Geom& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t HW = g.H * g.W, N = g.N();
  parallel_for(g.B * g.C, 1, [&](int64_t b0, int64_t e0) {
    Padded xp(g);
    for (int64_t bc = b0; bc < e0; ++bc) {
      const int64_t b = bc / g.C, c = bc % g.C;
      xp.load(g, x + bc * HW);
      for (int64_t m = 0; m < g.Og; ++m) {
        const int64_t o = c * g.Og + m;
        const float* wo = w + o * g.KH * g.KW;
        float* yp = y + (b * g.O + o) * N;
        const float bv = bias ? bias[o] : 0.0f;
        if (g.sw == 1 && g.KH == 3 && g.KW == 3) {
          // 3x3: the 9 weights stay in registers and four 8-wide output chunks (anywhere in the
          // plane) accumulate at once, so the 9-FMA dependency chains overlap. The last group
          // repeats its final chunk, which rewrites the same values.
          __m256 wv[9];
          for (int t = 0; t < 9; ++t) wv[t] = _mm256_set1_ps(wo[t]);
          const int64_t cw = (g.Wo + 7) / 8, nch = g.Ho * cw, Wp = xp.Wp;
          for (int64_t i = 0; i < nch; i += 4) {
            const float* src[4];
            float* dst[4];
            int64_t cnt[4];
            __m256 acc[4];
            for (int j = 0; j < 4; ++j) {
              const int64_t id = std::min(i + j, nch - 1), oh = id / cw, ow = (id % cw) * 8;
              src[j] = xp.at(oh * g.sh, ow);
              dst[j] = yp + oh * g.Wo + ow;
              cnt[j] = std::min<int64_t>(8, g.Wo - ow);
              acc[j] = _mm256_set1_ps(bv);
            }
            for (int kh = 0; kh < 3; ++kh)
              for (int kw = 0; kw < 3; ++kw) {
                const __m256 wk = wv[kh * 3 + kw];
                for (int j = 0; j < 4; ++j)
                  acc[j] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(src[j] + kh * Wp + kw), acc[j]);
              }
            for (int j = 0; j < 4; ++j) {
              if (cnt[j] == 8) {
                _mm256_storeu_ps(dst[j], acc[j]);
              } else {
                alignas(32) float t[8];
                _mm256_store_ps(t, acc[j]);
                for (int64_t q = 0; q < cnt[j]; ++q) dst[j][q] = t[q];
              }
            }
          }
          continue;
        }
        if (g.sw == 1) {
          // Each 8-wide output chunk accumulates all taps in a register and is stored once.
          // Loads past the row end stay inside the padded buffer and land in unused lanes.
          for (int64_t oh = 0; oh < g.Ho; ++oh) {
            float* yr = yp + oh * g.Wo;
            for (int64_t ow = 0; ow < g.Wo; ow += 8) {
              __m256 acc = _mm256_set1_ps(bv);
              for (int64_t kh = 0; kh < g.KH; ++kh) {
                const float* xr = xp.at(oh * g.sh + kh, ow);
                for (int64_t kw = 0; kw < g.KW; ++kw)
                  acc = _mm256_fmadd_ps(_mm256_set1_ps(wo[kh * g.KW + kw]), _mm256_loadu_ps(xr + kw), acc);
              }
              if (ow + 8 <= g.Wo) {
                _mm256_storeu_ps(yr + ow, acc);
              } else {
                alignas(32) float t[8];
                _mm256_store_ps(t, acc);
                for (int64_t i = 0; i < g.Wo - ow; ++i) yr[ow + i] = t[i];
              }
            }
          }
          continue;
        }
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          float* yr = yp + oh * g.Wo;
          for (int64_t ow = 0; ow < g.Wo; ++ow) yr[ow] = bv;
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              const float wv = wo[kh * g.KW + kw];
              const float* xr = xp.at(oh * g.sh + kh, kw);
              if (g.sw == 1) {
                for (int64_t ow = 0; ow < g.Wo; ++ow) yr[ow] += wv * xr[ow];
              } else {
                for (int64_t ow = 0; ow < g.Wo; ++ow) yr[ow] += wv * xr[ow * g.sw];
              }
            }
          }
        }
      }
    }
  });
}

// ---- Direct 3x3 stride-1 pad-1 forward (groups = 1) ----
//
// A 6-output-channel x 16-pixel register tile accumulates over input channels and the 9 taps,
// reading 16 consecutive pixels of a zero-padded copy of the input rows (unaligned loads shifted
// by the tap) and broadcasting the weights straight from w[O, C, 3, 3] (six rows at a constant
// stride). No im2col panel is packed: a band of padded rows of 64 channels stays in L2, and either
// each 16-pixel tile of it (64 channels x 3 rows) is reused from L1 by every output-channel block,
// or (when the weights outweigh the band) each block's weights are reused by every tile.

// The k loop in assembly for the same reason as the sgemm kernel (15 live ymm registers).
#define MVQ_D3(AO, B0, B1)                                \
  "vmovups " B0 ", %%ymm0\n\t"                            \
  "vmovups " B1 ", %%ymm1\n\t"                            \
  "vbroadcastss " #AO "(%[a0]), %%ymm2\n\t"               \
  "vfmadd231ps %%ymm0, %%ymm2, %%ymm4\n\t"                \
  "vfmadd231ps %%ymm1, %%ymm2, %%ymm5\n\t"                \
  "vbroadcastss " #AO "(%[a0],%[ws],1), %%ymm3\n\t"       \
  "vfmadd231ps %%ymm0, %%ymm3, %%ymm6\n\t"                \
  "vfmadd231ps %%ymm1, %%ymm3, %%ymm7\n\t"                \
  "vbroadcastss " #AO "(%[a0],%[ws],2), %%ymm2\n\t"       \
  "vfmadd231ps %%ymm0, %%ymm2, %%ymm8\n\t"                \
  "vfmadd231ps %%ymm1, %%ymm2, %%ymm9\n\t"                \
  "vbroadcastss " #AO "(%[a3]), %%ymm3\n\t"               \
  "vfmadd231ps %%ymm0, %%ymm3, %%ymm10\n\t"               \
  "vfmadd231ps %%ymm1, %%ymm3, %%ymm11\n\t"               \
  "vbroadcastss " #AO "(%[a3],%[ws],1), %%ymm2\n\t"       \
  "vfmadd231ps %%ymm0, %%ymm2, %%ymm12\n\t"               \
  "vfmadd231ps %%ymm1, %%ymm2, %%ymm13\n\t"               \
  "vbroadcastss " #AO "(%[a3],%[ws],2), %%ymm3\n\t"       \
  "vfmadd231ps %%ymm0, %%ymm3, %%ymm14\n\t"               \
  "vfmadd231ps %%ymm1, %%ymm3, %%ymm15\n\t"

// t[6][16] = sum over cc channels and 9 taps of w rows (a, row stride ws floats; a points at
// [row 0][channel 0][tap 0]) times the padded input (b at [channel 0][row oh][col ow], row stride
// rs floats, channel stride ps floats).
void direct3x3_6x16(int64_t cc, const float* a, int64_t ws, const float* b, int64_t rs, int64_t ps, float* t) {
  const float* a3 = a + 3 * ws;
  int64_t wsb = ws * 4, rsb = rs * 4, psb = ps * 4;
  asm volatile(
      "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
      "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
      "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
      "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
      "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
      "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
      "vxorps %%ymm12, %%ymm12, %%ymm12\n\t"
      "vxorps %%ymm13, %%ymm13, %%ymm13\n\t"
      "vxorps %%ymm14, %%ymm14, %%ymm14\n\t"
      "vxorps %%ymm15, %%ymm15, %%ymm15\n\t"
      ".p2align 5\n\t"
      "1:\n\t"
      MVQ_D3(0, "0(%[b])", "32(%[b])")
      MVQ_D3(4, "4(%[b])", "36(%[b])")
      MVQ_D3(8, "8(%[b])", "40(%[b])")
      MVQ_D3(12, "0(%[b],%[rs],1)", "32(%[b],%[rs],1)")
      MVQ_D3(16, "4(%[b],%[rs],1)", "36(%[b],%[rs],1)")
      MVQ_D3(20, "8(%[b],%[rs],1)", "40(%[b],%[rs],1)")
      MVQ_D3(24, "0(%[b],%[rs],2)", "32(%[b],%[rs],2)")
      MVQ_D3(28, "4(%[b],%[rs],2)", "36(%[b],%[rs],2)")
      MVQ_D3(32, "8(%[b],%[rs],2)", "40(%[b],%[rs],2)")
      "add $36, %[a0]\n\t"
      "add $36, %[a3]\n\t"
      "add %[ps], %[b]\n\t"
      "dec %[cc]\n\t"
      "jnz 1b\n\t"
      "vmovaps %%ymm4, 0(%[t])\n\t"
      "vmovaps %%ymm5, 32(%[t])\n\t"
      "vmovaps %%ymm6, 64(%[t])\n\t"
      "vmovaps %%ymm7, 96(%[t])\n\t"
      "vmovaps %%ymm8, 128(%[t])\n\t"
      "vmovaps %%ymm9, 160(%[t])\n\t"
      "vmovaps %%ymm10, 192(%[t])\n\t"
      "vmovaps %%ymm11, 224(%[t])\n\t"
      "vmovaps %%ymm12, 256(%[t])\n\t"
      "vmovaps %%ymm13, 288(%[t])\n\t"
      "vmovaps %%ymm14, 320(%[t])\n\t"
      "vmovaps %%ymm15, 352(%[t])\n\t"
      : [a0] "+r"(a), [a3] "+r"(a3), [b] "+r"(b), [cc] "+r"(cc)
      : [ws] "r"(wsb), [rs] "r"(rsb), [ps] "r"(psb), [t] "r"(t)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "memory", "cc");
}
#undef MVQ_D3

bool use_direct3x3(const Geom& g) {
  if (!(g.KH == 3 && g.KW == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && g.groups == 1)) return false;
  // Tiles are 16 pixels of one output row: skip widths that would waste much of the last tile.
  const int64_t w16 = (g.Wo + 15) / 16 * 16;
  return g.Wo * 10 >= w16 * 6;
}

void direct3x3_forward(const Geom& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t C = g.C, H = g.H, W = g.W, O = g.O, Ho = g.Ho, Wo = g.Wo, K = C * 9;
  const int64_t Wp = (Wo + 15) / 16 * 16 + 8;          // padded row: column iw at index iw + 1
  const int64_t CC = std::min<int64_t>(C, 64);  // channels per chunk
  // Band rows: the padded input band (cc channels) within ~384 KB and the band's output (which later
  // channel chunks add to) within ~256 KB, so both stay in L2.
  const int64_t rows_fit =
      std::min<int64_t>((int64_t(384) << 10) / (4 * CC * Wp) - 2, (int64_t(256) << 10) / (4 * O * Wo));
  const int T = num_threads();
  // Output rows per band: as many as fit the budget, then evened out so the bands split equally
  // over the threads (a short last band would leave one thread idle).
  // With a batch of at least two images per thread the tasks span the whole batch instead: one
  // parallel region per call rather than a join per image (on a shared machine a descheduled
  // thread then stalls only its own tasks), each image's bands as large as fit, no channel split.
  const bool flat = T > 1 && g.B >= 2 * T;
  int64_t R = std::max<int64_t>(1, std::min<int64_t>(Ho, rows_fit));
  int64_t nbands = (Ho + R - 1) / R;
  if (nbands >= T && !flat) nbands = (nbands + T - 1) / T * T;
  R = (Ho + nbands - 1) / nbands;
  nbands = (Ho + R - 1) / R;
  const int64_t oblocks = (O + 5) / 6;
  // Split the output channels too when there are too few bands to keep the threads busy.
  int64_t ogroups = 1;
  while (!flat && nbands * ogroups < 2 * T && ogroups * 2 <= oblocks) ogroups *= 2;
  const int64_t ob_per = (oblocks + ogroups - 1) / ogroups;
  // The last, partial block of output channels reads zero-padded copies of its weight rows.
  std::vector<float> wtail;
  const int64_t otail = O % 6;
  if (otail) {
    wtail.assign(static_cast<size_t>(6 * K), 0.0f);
    std::memcpy(wtail.data(), w + (O - otail) * K, sizeof(float) * otail * K);
  }
  const int64_t ps = (R + 2) * Wp;
  // One task: output rows of band `task / ogroups`, channel group `task % ogroups`, of image bi.
  auto work = [&](int64_t bi, int64_t task) {
    const float* xb = x + bi * C * H * W;
    float* yb = y + bi * O * Ho * Wo;
    {
      const int64_t band = task / ogroups, og = task % ogroups;
      const int64_t r0 = band * R, r1 = std::min(Ho, r0 + R);
      const int64_t ob0 = og * ob_per, ob1 = std::min(oblocks, ob0 + ob_per);
      if (ob0 >= ob1) return;
      thread_local std::vector<float> buf;
      if (buf.size() < static_cast<size_t>(CC * ps + 16)) buf.assign(static_cast<size_t>(CC * ps + 16), 0.0f);
      alignas(32) float t[6 * 16];
      for (int64_t c0 = 0; c0 < C; c0 += CC) {
        const int64_t cc = std::min(CC, C - c0);
        // Padded rows r0 - 1 .. r1 of channels c0 .. c0 + cc.
        for (int64_t c = 0; c < cc; ++c) {
          for (int64_t lr = 0; lr < r1 - r0 + 2; ++lr) {
            float* d = buf.data() + c * ps + lr * Wp;
            const int64_t ih = r0 - 1 + lr;
            if (ih < 0 || ih >= H) {
              std::memset(d, 0, sizeof(float) * Wp);
              continue;
            }
            d[0] = 0.0f;
            std::memcpy(d + 1, xb + ((c0 + c) * H + ih) * W, sizeof(float) * W);
            std::memset(d + 1 + W, 0, sizeof(float) * (Wp - 1 - W));
          }
        }
        const bool first = c0 == 0;
        auto tile = [&](int64_t oh, int64_t ow, int64_t ob) {
          const float* brow = buf.data() + (oh - r0) * Wp;
          const int n = static_cast<int>(std::min<int64_t>(16, Wo - ow));
          const int64_t o0 = ob * 6, m = std::min<int64_t>(6, O - o0);
          const float* wa = (m < 6 ? wtail.data() : w + o0 * K) + c0 * 9;
          direct3x3_6x16(cc, wa, K, brow + ow, Wp, ps, t);
          for (int i = 0; i < m; ++i) {
            float* yr = yb + ((o0 + i) * Ho + oh) * Wo + ow;
            const float* s = t + i * 16;
            if (n == 16) {
              __m256 v0 = _mm256_load_ps(s), v1 = _mm256_load_ps(s + 8);
              if (first) {
                const __m256 bv = _mm256_set1_ps(bias ? bias[o0 + i] : 0.0f);
                v0 = _mm256_add_ps(v0, bv);
                v1 = _mm256_add_ps(v1, bv);
              } else {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(yr));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(yr + 8));
              }
              _mm256_storeu_ps(yr, v0);
              _mm256_storeu_ps(yr + 8, v1);
            } else {
              const float bv = first ? (bias ? bias[o0 + i] : 0.0f) : 0.0f;
              for (int j = 0; j < n; ++j) yr[j] = s[j] + (first ? bv : yr[j]);
            }
          }
        };
        // Loop order: when this task's weights for the chunk outweigh its input band, each 6-row
        // weight block stays in L1 across all pixel tiles of the band; otherwise each input tile
        // stays in L1 across all output-channel blocks.
        const bool ob_outer = (ob1 - ob0) * 6 * cc * 9 > cc * (r1 - r0 + 2) * Wp;
        if (ob_outer) {
          for (int64_t ob = ob0; ob < ob1; ++ob)
            for (int64_t oh = r0; oh < r1; ++oh)
              for (int64_t ow = 0; ow < Wo; ow += 16) tile(oh, ow, ob);
        } else {
          for (int64_t oh = r0; oh < r1; ++oh)
            for (int64_t ow = 0; ow < Wo; ow += 16)
              for (int64_t ob = ob0; ob < ob1; ++ob) tile(oh, ow, ob);
        }
      }
    }
  };
  const int64_t per_image = nbands * ogroups;
  if (flat) {
    parallel_tasks(g.B * per_image, [&](int64_t t, int) { work(t / per_image, t % per_image); });
  } else {
    for (int64_t bi = 0; bi < g.B; ++bi) parallel_tasks(per_image, [&](int64_t t, int) { work(bi, t); });
  }
}

// Explicit im2col of columns [n0, n0 + nt) into dst [K, nt].
void im2col_tile(const Geom& g, const float* xb, int64_t n0, int64_t nt, float* dst) {
  const int64_t K = g.K();
  // Stride 1 over whole images with rows of a multiple of 8 columns (at least 8 input columns).
  const bool fast = g.sh == 1 && g.sw == 1 && n0 == 0 && nt == g.N() && g.Wo % 8 == 0 && g.W >= 8;
  parallel_for(K, 8, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k) {
      const int64_t c = k / (g.KH * g.KW), r = k % (g.KH * g.KW), kh = r / g.KW, kw = r % g.KW;
      const float* xc = xb + c * g.H * g.W;
      float* o = dst + k * nt;
      if (fast) {
        // Whole rows of 8-float chunks: each chunk is one masked, shifted vector load.
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          float* orow = o + oh * g.Wo;
          const int64_t ih = oh - g.ph + kh;
          if (ih < 0 || ih >= g.H) {
            for (int64_t ow = 0; ow < g.Wo; ow += 8) _mm256_storeu_ps(orow + ow, _mm256_setzero_ps());
            continue;
          }
          const float* xr = xc + ih * g.W;
          for (int64_t ow = 0; ow < g.Wo; ow += 8) {
            const int64_t iw0 = ow - g.pw + kw;
            _mm256_storeu_ps(orow + ow, iw0 >= 0 && iw0 + 8 <= g.W ? _mm256_loadu_ps(xr + iw0) : edge_chunk(xr, iw0, g.W));
          }
        }
        continue;
      }
      int64_t lo, hi;
      valid_cols(g.W, g.Wo, g.sw, g.pw, kw, &lo, &hi);
      int64_t n = n0;
      while (n < n0 + nt) {
        const int64_t oh = n / g.Wo, ow0 = n % g.Wo;
        const int64_t ow1 = std::min<int64_t>(g.Wo, ow0 + (n0 + nt - n));
        float* orow = o + (n - n0) - ow0;  // orow[ow] is column (oh, ow)
        const int64_t ih = oh * g.sh - g.ph + kh;
        if (ih < 0 || ih >= g.H) {
          std::fill(orow + ow0, orow + ow1, 0.0f);
        } else {
          const float* xr = xc + ih * g.W - g.pw + kw;
          const int64_t a = std::max(ow0, lo), e = std::min(ow1, hi);
          for (int64_t ow = ow0; ow < std::min(a, ow1); ++ow) orow[ow] = 0.0f;
          if (g.sw == 1) {
            for (int64_t ow = a; ow < e; ++ow) orow[ow] = xr[ow];
          } else {
            for (int64_t ow = a; ow < e; ++ow) orow[ow] = xr[ow * g.sw];
          }
          for (int64_t ow = std::max(std::max(e, a), ow0); ow < ow1; ++ow) orow[ow] = 0.0f;
        }
        n += ow1 - ow0;
      }
    }
  });
}

// Forward on raw dense buffers (used by conv2d and by the stride-1 input gradient).
void conv_forward_raw(const Geom& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t N = g.N(), K = g.K();
  if (g.B * g.O * N == 0) return;
  if (is_depthwise(g)) {
    depthwise_forward(g, x, w, bias, y);
    return;
  }
  if (use_direct3x3(g)) {
    direct3x3_forward(g, x, w, bias, y);
    return;
  }
  float beta = 0.0f;
  if (bias) {
    parallel_for(g.B * g.O, 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) std::fill(y + i * N, y + (i + 1) * N, bias[i % g.O]);
    });
    beta = 1.0f;
  }
  const int64_t count = g.B * g.groups;
  const double flops = 2.0 * g.Og * N * K;
  const bool outer = count >= num_threads() && num_threads() > 1 && flops < 32e6;
  // Strides above 2 (patch embeddings) gather element by element in the implicit packer; when the
  // whole im2col matrix is small, build it once with strided row copies and run a plain GEMM.
  const bool explicit_col = g.sw > 2 && K * N <= (int64_t(4) << 20) && !is_pointwise(g);
  std::vector<float> colbuf;
  if (explicit_col && !outer) colbuf.resize(static_cast<size_t>(K * N));
  auto one = [&](int64_t t, bool par) {
    const int64_t b = t / g.groups, gi = t % g.groups;
    const float* xb = x + (b * g.C + gi * g.Cg) * g.H * g.W;
    const float* wg = w + gi * g.Og * K;
    float* yb = y + (b * g.O + gi * g.Og) * N;
    if (explicit_col && par) {
      im2col_tile(g, xb, 0, N, colbuf.data());
      sgemm(false, false, g.Og, N, K, 1.0f, wg, K, colbuf.data(), N, beta, yb, N);
    } else if (is_pointwise(g)) {
      if (par)
        sgemm(false, false, g.Og, N, K, 1.0f, wg, K, xb, N, beta, yb, N);
      else
        sgemm_st(false, false, g.Og, N, K, 1.0f, wg, K, xb, N, beta, yb, N);
    } else {
      Im2colB pb(xb, g);
      sgemm_packed_b(false, g.Og, N, K, 1.0f, wg, K, pb, beta, yb, N, par);
    }
  };
  if (outer) {
    parallel_tasks(count, [&](int64_t t, int) { one(t, false); });
  } else {
    for (int64_t t = 0; t < count; ++t) one(t, true);
  }
}

// gx[b, channels of group] += col2im(gcol [K, nt]) for columns [n0, n0 + nt).
void col2im_tile(const Geom& g, const float* gcol, int64_t n0, int64_t nt, float* gxb) {
  parallel_for(g.Cg, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      float* gc = gxb + c * g.H * g.W;
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const float* src = gcol + ((c * g.KH + kh) * g.KW + kw) * nt;
          int64_t lo, hi;
          valid_cols(g.W, g.Wo, g.sw, g.pw, kw, &lo, &hi);
          int64_t n = n0;
          while (n < n0 + nt) {
            const int64_t oh = n / g.Wo, ow0 = n % g.Wo;
            const int64_t ow1 = std::min<int64_t>(g.Wo, ow0 + (n0 + nt - n));
            const float* srow = src + (n - n0) - ow0;
            const int64_t ih = oh * g.sh - g.ph + kh;
            if (ih >= 0 && ih < g.H) {
              float* xr = gc + ih * g.W - g.pw + kw;
              const int64_t a = std::max(ow0, lo), e = std::min(ow1, hi);
              for (int64_t ow = a; ow < e; ++ow) xr[ow * g.sw] += srow[ow];
            }
            n += ow1 - ow0;
          }
        }
      }
    }
  });
}

int64_t tile_cols(const Geom& g) {
  const int64_t want = (int64_t(2) << 20) / std::max<int64_t>(g.K(), 1);  // ~8 MB of floats
  return std::max<int64_t>(std::min<int64_t>(g.N(), std::max<int64_t>(want, 256)), 1);
}

std::vector<int64_t> pair_attr(const OpArgs& a, const char* op, const char* k, int64_t dflt, int64_t min) {
  std::vector<int64_t> v = a.attrs.ints(k, {dflt});
  MVQ_CHECK_TYPE(v.size() == 1 || v.size() == 2, op, ": option '", k, "' must be an integer or [h, w], got ",
                 v.size(), " values");
  if (v.size() == 1) v.push_back(v[0]);
  MVQ_CHECK_RANGE(v[0] >= min && v[1] >= min, op, ": option '", k, "' must be >= ", min, ", got [", v[0], ", ",
                  v[1], "]");
  return v;
}

Geom make_geom(const OpArgs& a, const char* op, const Tensor& x, const Tensor& w) {
  MVQ_CHECK_TYPE(x.dim() == 4, op, ": 'x' must be float32 [B, C, H, W], got ", x.shape_str());
  MVQ_CHECK_TYPE(w.dim() == 4, op, ": 'w' must be float32 [O, C/groups, kh, kw], got ", w.shape_str());
  Geom g;
  g.B = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.O = w.size(0);
  g.KH = w.size(2);
  g.KW = w.size(3);
  g.groups = a.attrs.i("groups", 1);
  MVQ_CHECK_RANGE(g.groups >= 1, op, ": option 'groups' must be >= 1, got ", g.groups);
  MVQ_CHECK_RANGE(g.C % g.groups == 0 && g.O % g.groups == 0, op, ": option 'groups' (", g.groups,
                  ") must divide the input channels (", g.C, ") and output channels (", g.O, ")");
  g.Cg = g.C / g.groups;
  g.Og = g.O / g.groups;
  MVQ_CHECK_RANGE(w.size(1) == g.Cg, op, ": 'w' must be float32 [", g.O, ", ", g.Cg, ", kh, kw] for ", g.C,
                  " input channels and groups = ", g.groups, ", got ", w.shape_str());
  MVQ_CHECK_RANGE(g.KH >= 1 && g.KW >= 1, op, ": 'w' kernel size must be >= 1, got ", w.shape_str());
  const std::vector<int64_t> s = pair_attr(a, op, "stride", 1, 1), p = pair_attr(a, op, "padding", 0, 0);
  g.sh = s[0];
  g.sw = s[1];
  g.ph = p[0];
  g.pw = p[1];
  const int64_t eh = g.H + 2 * g.ph - g.KH, ew = g.W + 2 * g.pw - g.KW;
  MVQ_CHECK_RANGE(eh >= 0 && ew >= 0, op, ": kernel ", g.KH, "x", g.KW, " is larger than the padded input ",
                  g.H + 2 * g.ph, "x", g.W + 2 * g.pw);
  g.Ho = eh / g.sh + 1;
  g.Wo = ew / g.sw + 1;
  return g;
}

// conv2d(x [B, C, H, W], w [O, C/groups, kh, kw], bias? [O], {stride, padding, groups}) -> y.
std::vector<Tensor> op_conv2d(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  const Tensor w = a.input(1, "w", DType::F32).contiguous();
  const Geom g = make_geom(a, "conv2d", x, w);
  Tensor bias;
  if (a.has_input(2)) {
    bias = a.input(2, "bias", DType::F32).contiguous();
    MVQ_CHECK_RANGE(bias.dim() == 1 && bias.size(0) == g.O, "conv2d: 'bias' must be float32 [", g.O, "], got ",
                    bias.shape_str());
  }
  Tensor y = empty({g.B, g.O, g.Ho, g.Wo});
  conv_forward_raw(g, x.data<float>(), w.data<float>(), bias.defined() ? bias.data<float>() : nullptr,
                   y.data<float>());
  return {y};
}

void depthwise_backward(const Geom& g, const float* x, const float* w, const float* gy, float* gx, float* gw) {
  const int64_t HW = g.H * g.W, N = g.N();
  const bool via_forward = g.Og == 1 && g.sh == 1 && g.sw == 1 && g.ph <= g.KH - 1 && g.pw <= g.KW - 1;
  if (via_forward) {
    // gx = depthwise correlation of gy with the flipped kernel and padding k - 1 - p.
    std::vector<float> wf(static_cast<size_t>(g.O * g.KH * g.KW));
    for (int64_t o = 0; o < g.O; ++o)
      for (int64_t i = 0; i < g.KH; ++i)
        for (int64_t j = 0; j < g.KW; ++j)
          wf[(o * g.KH + i) * g.KW + j] = w[(o * g.KH + (g.KH - 1 - i)) * g.KW + (g.KW - 1 - j)];
    Geom t = g;
    t.H = g.Ho;
    t.W = g.Wo;
    t.ph = g.KH - 1 - g.ph;
    t.pw = g.KW - 1 - g.pw;
    t.Ho = g.H;
    t.Wo = g.W;
    depthwise_forward(t, gy, wf.data(), nullptr, gx);
  }
  if (!via_forward)
  // gx: per (b, c), scatter the Og output planes of channel c into a padded plane, then crop.
  parallel_for(g.B * g.C, 1, [&](int64_t b0, int64_t e0) {
    Padded gp(g);
    for (int64_t bc = b0; bc < e0; ++bc) {
      const int64_t b = bc / g.C, c = bc % g.C;
      std::fill(gp.buf.begin(), gp.buf.end(), 0.0f);
      for (int64_t m = 0; m < g.Og; ++m) {
        const int64_t o = c * g.Og + m;
        const float* gyo = gy + (b * g.O + o) * N;
        const float* wo = w + o * g.KH * g.KW;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const float* gr = gyo + oh * g.Wo;
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              const float wv = wo[kh * g.KW + kw];
              float* xr = gp.at(oh * g.sh + kh, kw);
              if (g.sw == 1) {
                for (int64_t ow = 0; ow < g.Wo; ++ow) xr[ow] += wv * gr[ow];
              } else {
                for (int64_t ow = 0; ow < g.Wo; ++ow) xr[ow * g.sw] += wv * gr[ow];
              }
            }
          }
        }
      }
      float* gc = gx + bc * HW;
      for (int64_t h = 0; h < g.H; ++h) std::memcpy(gc + h * g.W, gp.at(h + g.ph, g.pw), sizeof(float) * g.W);
    }
  });
  // gw: per input channel (so each padded plane is built once per image), all its outputs.
  parallel_for(g.C, 1, [&](int64_t cb, int64_t ce) {
    Padded xp(g);
    const int64_t T = g.KH * g.KW;
    std::vector<double> acc(static_cast<size_t>(g.Og * T));
    for (int64_t c = cb; c < ce; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t b = 0; b < g.B; ++b) {
        xp.load(g, x + (b * g.C + c) * HW);
        for (int64_t m = 0; m < g.Og; ++m) {
          const float* gyo = gy + (b * g.O + c * g.Og + m) * N;
          for (int64_t kh = 0; kh < g.KH; ++kh)
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              double sum = 0.0;
              for (int64_t oh = 0; oh < g.Ho; ++oh) {
                const float* gr = gyo + oh * g.Wo;
                const float* xr = xp.at(oh * g.sh + kh, kw);
                float s = 0.0f;
                if (g.sw == 1) {
                  for (int64_t ow = 0; ow < g.Wo; ++ow) s += gr[ow] * xr[ow];
                } else {
                  for (int64_t ow = 0; ow < g.Wo; ++ow) s += gr[ow] * xr[ow * g.sw];
                }
                sum += s;
              }
              acc[m * T + kh * g.KW + kw] += sum;
            }
        }
      }
      for (int64_t m = 0; m < g.Og; ++m)
        for (int64_t t = 0; t < T; ++t) gw[(c * g.Og + m) * T + t] = static_cast<float>(acc[m * T + t]);
    }
  });
}

// conv2d_backward(x, w, gy, {stride, padding, groups, has_bias}) -> [gx, gw, gbias or null].
std::vector<Tensor> op_conv2d_backward(const OpArgs& a) {
  const Tensor x = a.input(0, "x", DType::F32).contiguous();
  const Tensor w = a.input(1, "w", DType::F32).contiguous();
  const Tensor gyt = a.input(2, "gy", DType::F32).contiguous();
  const Geom g = make_geom(a, "conv2d_backward", x, w);
  const Shape ys{g.B, g.O, g.Ho, g.Wo};
  MVQ_CHECK_RANGE(gyt.shape() == ys, "conv2d_backward: 'gy' must be float32 ", shape_to_string(ys), ", got ",
                  gyt.shape_str());
  Tensor gx = empty(x.shape()), gw = empty(w.shape());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* gy = gyt.data<float>();
  float* gxp = gx.data<float>();
  float* gwp = gw.data<float>();
  const int64_t N = g.N(), K = g.K(), HW = g.H * g.W;
  Tensor gb;
  if (a.attrs.b("has_bias", false)) {
    gb = empty({g.O});
    float* o = gb.data<float>();
    parallel_for(g.O, 1, [&](int64_t ob, int64_t oe) {
      for (int64_t oc = ob; oc < oe; ++oc) {
        double acc = 0.0;
        for (int64_t b = 0; b < g.B; ++b) {
          const float* p = gy + (b * g.O + oc) * N;
          float s = 0.0f;
          for (int64_t i = 0; i < N; ++i) s += p[i];
          acc += s;
        }
        o[oc] = static_cast<float>(acc);
      }
    });
  }
  if (gx.numel() + gw.numel() == 0) return {gx, gw, gb};
  if (g.B * N == 0) {
    std::fill(gxp, gxp + gx.numel(), 0.0f);
    std::fill(gwp, gwp + gw.numel(), 0.0f);
    return {gx, gw, gb};
  }
  if (is_depthwise(g)) {
    depthwise_backward(g, xp, wp, gy, gxp, gwp);
    return {gx, gw, gb};
  }
  // ---- gx ----
  if (g.sh == 1 && g.sw == 1 && g.ph <= g.KH - 1 && g.pw <= g.KW - 1) {
    // Correlation of gy with the flipped kernel, channels swapped within each group.
    std::vector<float> wt(static_cast<size_t>(w.numel()));
    for (int64_t gi = 0; gi < g.groups; ++gi)
      for (int64_t o = 0; o < g.Og; ++o)
        for (int64_t c = 0; c < g.Cg; ++c)
          for (int64_t i = 0; i < g.KH; ++i)
            for (int64_t j = 0; j < g.KW; ++j)
              wt[(((gi * g.Cg + c) * g.Og + o) * g.KH + i) * g.KW + j] =
                  wp[(((gi * g.Og + o) * g.Cg + c) * g.KH + (g.KH - 1 - i)) * g.KW + (g.KW - 1 - j)];
    Geom t;
    t.B = g.B;
    t.C = g.O;
    t.H = g.Ho;
    t.W = g.Wo;
    t.O = g.C;
    t.KH = g.KH;
    t.KW = g.KW;
    t.groups = g.groups;
    t.Cg = g.Og;
    t.Og = g.Cg;
    t.sh = t.sw = 1;
    t.ph = g.KH - 1 - g.ph;
    t.pw = g.KW - 1 - g.pw;
    t.Ho = g.H;
    t.Wo = g.W;
    conv_forward_raw(t, gy, wt.data(), nullptr, gxp);
  } else {
    std::fill(gxp, gxp + gx.numel(), 0.0f);
    const int64_t nt = tile_cols(g);
    std::vector<float> gcol(static_cast<size_t>(K * nt));
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const float* gyb = gy + (b * g.O + gi * g.Og) * N;
        const float* wg = wp + gi * g.Og * K;
        float* gxb = gxp + (b * g.C + gi * g.Cg) * HW;
        for (int64_t n0 = 0; n0 < N; n0 += nt) {
          const int64_t n = std::min(nt, N - n0);
          sgemm(true, false, K, n, g.Og, 1.0f, wg, K, gyb + n0, N, 0.0f, gcol.data(), n);
          col2im_tile(g, gcol.data(), n0, n, gxb);
        }
      }
  }
  // ---- gw ----
  {
    const int64_t nt = tile_cols(g);
    std::vector<float> col;
    if (!is_pointwise(g)) col.resize(static_cast<size_t>(K * nt));
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      float* gwg = gwp + gi * g.Og * K;
      bool first = true;
      for (int64_t b = 0; b < g.B; ++b) {
        const float* gyb = gy + (b * g.O + gi * g.Og) * N;
        const float* xb = xp + (b * g.C + gi * g.Cg) * HW;
        if (is_pointwise(g)) {
          sgemm(false, true, g.Og, K, N, 1.0f, gyb, N, xb, N, first ? 0.0f : 1.0f, gwg, K);
          first = false;
          continue;
        }
        for (int64_t n0 = 0; n0 < N; n0 += nt) {
          const int64_t n = std::min(nt, N - n0);
          im2col_tile(g, xb, n0, n, col.data());
          sgemm(false, true, g.Og, K, n, 1.0f, gyb + n0, N, col.data(), n, first ? 0.0f : 1.0f, gwg, K);
          first = false;
        }
      }
    }
  }
  return {gx, gw, gb};
}

}  // namespace

MVQ_REGISTER_OP("conv2d", Device::CPU, op_conv2d);
MVQ_OP_ATTRS("conv2d", "groups", "padding", "stride");
MVQ_REGISTER_OP("conv2d_backward", Device::CPU, op_conv2d_backward);
MVQ_OP_ATTRS("conv2d_backward", "groups", "has_bias", "padding", "stride");

}  // namespace mvq
