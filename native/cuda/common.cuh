// Helpers shared by the CUDA kernels: error checks that throw mvq::Error (never abort).
#pragma once
#include <cuda_runtime.h>

#include "../core/error.h"

namespace mvq {
namespace cuda {
// Throws MergeVQError ERR_CUDA naming `what` when e is not cudaSuccess.
void check(cudaError_t e, const char* what);
// Checks the last launch and waits for it; throws MergeVQError ERR_CUDA on failure.
void check_launch(const char* kernel);
}  // namespace cuda
}  // namespace mvq
