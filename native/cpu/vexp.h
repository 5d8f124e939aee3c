// The CPU's vector expf: 8 float lanes, accurate to about 1 ulp, with the float limits of expf
// (results underflowing into denormals round once, below -103.97 they are 0, above 88.72 +inf,
// NaN stays NaN). Used by the nn families (nn_common.h) and the fused attention.
#pragma once
#include <immintrin.h>

#include <cmath>

#if defined(__AVX2__) && defined(__FMA__)
#define MVQ_NN_AVX2 1
#endif

namespace mvq {
namespace nn {

#ifdef MVQ_NN_AVX2
// exp(x) for 8 floats. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then the Cephes degree-7
// polynomial (max relative error ~1.2e-7 on the reduced range); 2^n is applied in two halves so
// results that underflow into denormals round once and large inputs overflow to +inf. NaN stays NaN.
inline __m256 vexp(__m256 x) {
  // Inputs whose result is 0 (below -103.97, -inf included) are evaluated at 0 instead: clamped to
  // -104 they would go through a denormal product (a slow microcode assist per lane, which masked
  // -inf scores in attention hit all the time). min returns its 2nd operand on NaN, so NaN stays.
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-103.972084f), _CMP_LT_OQ);
  __m256 xc = _mm256_blendv_ps(_mm256_min_ps(_mm256_set1_ps(88.8f), x), _mm256_setzero_ps(), under);
  __m256 nf = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(0.693145751953125f), xc);
  r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i n = _mm256_cvtps_epi32(nf);
  __m256i n1 = _mm256_srai_epi32(n, 1);
  __m256i n2 = _mm256_sub_epi32(n, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  // Exact limits: above ~88.72 the float result is +inf, below -103.97 it is 0.
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.7228394f), _CMP_GT_OQ));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), under);
  return y;
}
#endif

}  // namespace nn
}  // namespace mvq
