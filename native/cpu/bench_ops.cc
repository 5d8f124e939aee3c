// Machine measurements used by bench/: the fp32 FMA peak of this machine, measured in the run.
#include <immintrin.h>

#include <atomic>
#include <chrono>

#include "../core/op.h"
#include "../core/parallel.h"

namespace mvq {
namespace {

// Runs `iters` rounds of 12 independent 8-wide FMA chains per thread (enough to cover the FMA
// latency on two pipes) and returns [gflops, seconds].
std::vector<Tensor> op_fma_peak(const OpArgs& a) {
  const int64_t iters = a.attrs.i("iters", 20000000);
  const int threads = static_cast<int>(a.attrs.i("threads", num_threads()));
  MVQ_CHECK_RANGE(iters >= 1 && threads >= 1, "fma_peak: iters and threads must be >= 1");
  const int saved = num_threads();
  set_num_threads(threads);
  std::atomic<float> sink{0};
  auto t0 = std::chrono::steady_clock::now();
  parallel_tasks(threads, [&](int64_t, int) {
    __m256 acc[12];
    for (int k = 0; k < 12; ++k) acc[k] = _mm256_set1_ps(0.001f * k);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int64_t i = 0; i < iters; ++i)
      for (int k = 0; k < 12; ++k) acc[k] = _mm256_fmadd_ps(acc[k], m, c);
    __m256 s = acc[0];
    for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, acc[k]);
    float buf[8];
    _mm256_storeu_ps(buf, s);
    sink.store(sink.load() + buf[0]);
  });
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  set_num_threads(saved);
  Tensor out = empty({3});
  out.data<float>()[0] = static_cast<float>(2.0 * 8 * 12 * static_cast<double>(iters) * threads / sec / 1e9);
  out.data<float>()[1] = static_cast<float>(sec);
  out.data<float>()[2] = sink.load() * 0.0f;
  return {out};
}

}  // namespace

MVQ_REGISTER_OP("fma_peak", Device::CPU, op_fma_peak);
MVQ_OP_ATTRS("fma_peak", "iters", "threads");

}  // namespace mvq
