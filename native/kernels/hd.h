// MVQ_HD marks inline helpers that both backends compile: host+device under nvcc, plain inline
// in the C++ build. Small integer helpers every backend uses live here too.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MVQ_HD __host__ __device__ __forceinline__
#else
#define MVQ_HD inline
#endif

namespace mvq {

// v rounded up to a multiple of m (v >= 0, m > 0), e.g. a table width padded to 16 lanes.
MVQ_HD constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace mvq
