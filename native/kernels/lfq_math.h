// LFQ bit math shared by the CPU and CUDA backends.
//
// The reference's entropy loss takes logits 2 z.c over all 2^d codes c in {-1,+1}^d and
// p = softmax(logits / T). That softmax factorizes over bits:
//   p(c) = prod_j sigma(a_j c_j),  a_j = 4 z_j / T,
// so each bit is an independent Bernoulli with p1_j = sigma(a_j) = P(c_j = +1). Everything below
// is in double: a_j is large (|a| ~ 400 |z| at T = 0.01) and the tails matter for the entropy.
#pragma once
#include <cmath>
#include <cstdint>

#ifndef MVQ_HD
#include "hd.h"
#endif

namespace mvq {
namespace lfq {

// Probability tables drop entries below this (they would become fp32 denormals in the products;
// their total effect on the loss is below 2^d * 12 * 1e-18).
constexpr double kTableFloor = 1e-18;
// The reference's epsilon inside log(pbar + eps).
constexpr double kLogEps = 1e-5;

// P(c_j = +1) = sigma(a), computed without overflow.
MVQ_HD double sigmoid(double a) {
  if (a >= 0) return 1.0 / (1.0 + exp(-a));
  const double e = exp(a);
  return e / (1.0 + e);
}

// Binary entropy of sigma(a) in nats: log1p(exp(-|a|)) + |a| sigma(-|a|).
MVQ_HD double binary_entropy(double a) {
  const double m = fabs(a);
  const double e = exp(-m);
  return log1p(e) + m * e / (1.0 + e);
}

// d/da of binary_entropy(a) = -a sigma(a) sigma(-a).
MVQ_HD double binary_entropy_grad(double a) {
  const double p1 = sigmoid(a);
  return -a * p1 * (1.0 - p1);
}

// d/dpbar of -pbar log(pbar + eps).
MVQ_HD double codebook_entropy_grad(double pbar) { return -(log(pbar + kLogEps) + pbar / (pbar + kLogEps)); }

// -pbar log(pbar + eps).
MVQ_HD double codebook_entropy_term(double pbar) { return -pbar * log(pbar + kLogEps); }

}  // namespace lfq
}  // namespace mvq
