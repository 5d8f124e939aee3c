// CUDA backend runtime: device memory hooks for the core and the device-presence check.
// Without a driver or GPU, cudaGetDeviceCount fails (e.g. error 35, insufficient driver) and the
// backend reports itself unavailable with that reason; nothing here aborts.
#include <cuda_runtime.h>

#include <string>

#include "../core/tensor.h"
#include "common.cuh"

namespace mvq {
namespace cuda {

bool available(std::string* why) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why)
      *why = std::string("device 'cuda' is not available: cudaGetDeviceCount failed with ") + cudaGetErrorName(e) + " (" +
             std::to_string(static_cast<int>(e)) + "): " + cudaGetErrorString(e);
    return false;
  }
  if (count <= 0) {
    if (why) *why = "device 'cuda' is not available: no CUDA GPU found";
    return false;
  }
  return true;
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
}

void free_(void* p) { cudaFree(p); }

void copy(void* dst, const void* src, size_t bytes, int kind) {
  cudaMemcpyKind k = kind == 0 ? cudaMemcpyHostToDevice : kind == 1 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
  check(cudaMemcpy(dst, src, bytes, k), "cudaMemcpy");
}

void fill(void* dst, unsigned char byte, size_t bytes) { check(cudaMemset(dst, byte, bytes), "cudaMemset"); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw_runtime("ERR_CUDA", what, " failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  }
}

void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
  check(cudaDeviceSynchronize(), kernel);
}

namespace {
struct Install {
  Install() {
    DeviceHooks h;
    h.alloc = alloc;
    h.free = free_;
    h.copy = copy;
    h.fill = fill;
    h.available = available;
    set_device_hooks(Device::CUDA, h);
  }
} install_hooks;
}  // namespace

}  // namespace cuda
}  // namespace mvq
