// MVQ_HD marks inline helpers that both backends compile: host+device under nvcc, plain inline
// in the C++ build.
#pragma once

#if defined(__CUDACC__)
#define MVQ_HD __host__ __device__ __forceinline__
#else
#define MVQ_HD inline
#endif
