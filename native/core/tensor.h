// Tensor: a typed, strided view of reference-counted storage on one device.
//
// Storage is 64-byte aligned. A Tensor is cheap to copy (it shares the storage), which is how an
// async job keeps the data it reads alive while JS may drop its handle.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "error.h"

namespace mvq {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, I64 = 4, U8 = 5 };
enum class Device : int { CPU = 0, CUDA = 1 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool dtype_from_name(const std::string& name, DType* out);
const char* device_name(Device d);

using Shape = std::vector<int64_t>;

// Raw allocation on one device. Frees itself; never throws from the destructor.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;     // requested
  size_t capacity = 0;  // allocated (>= bytes); CPU blocks return to the allocation cache by it
  Device device = Device::CPU;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

// When on, every new CPU allocation is filled with a NaN pattern (f32 NaN bytes 0xFFC0FFC0...),
// so tests see any element a kernel forgot to write. Off by default.
void set_poison(bool on);
bool poison();

// Allocates `bytes` (rounded up to 64) on `device`. Throws MergeVQError ERR_ALLOC on failure.
// CPU blocks of 256 KiB and more are recycled through a cache (fresh pages from the OS cost a page
// fault per 4 KiB on first touch, which dominated memory-bound ops); the cache holds at most
// MERGEVQ_CPU_CACHE_MB (default 2048) and reuses a block only when it wastes under 1/8 of it.
std::shared_ptr<Storage> allocate(size_t bytes, Device device);
// Frees every cached CPU block (e.g. before a memory measurement). Returns the bytes released.
size_t release_cpu_cache();

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> st, DType dtype, Shape shape, Shape strides, int64_t offset)
      : st_(std::move(st)), dtype_(dtype), shape_(std::move(shape)), strides_(std::move(strides)), offset_(offset) {}

  bool defined() const { return st_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return st_ ? st_->device : Device::CPU; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t offset() const { return offset_; }         // in elements
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const { return shape_[d < 0 ? d + dim() : d]; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return st_; }

  void* raw() const { return static_cast<char*>(st_->ptr) + offset_ * static_cast<int64_t>(dtype_size(dtype_)); }
  template <class T>
  T* data() const { return static_cast<T*>(raw()); }

  // Same storage, new shape; requires a contiguous tensor. One -1 entry is inferred.
  Tensor view(Shape shape) const;
  // Dense copy (same device) if not contiguous, else *this.
  Tensor contiguous() const;
  // Strided view with dims permuted.
  Tensor permute(const std::vector<int>& dims) const;
  // Strided view of [start, start + length) along dim.
  Tensor narrow(int dim, int64_t start, int64_t length) const;
  // Strided view at `index` along dim, with that dim removed.
  Tensor select(int dim, int64_t index) const;
  std::string shape_str() const;

 private:
  std::shared_ptr<Storage> st_;
  DType dtype_ = DType::F32;
  Shape shape_, strides_;
  int64_t offset_ = 0;
};

Shape contiguous_strides(const Shape& shape);
int64_t shape_numel(const Shape& shape);  // throws RangeError on negative or overflowing sizes
std::string shape_to_string(const Shape& shape);

// New dense tensor, uninitialized (or poisoned, see set_poison).
Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
// Dense copy of src onto `device` (also converts layout to contiguous).
Tensor to_device(const Tensor& src, Device device);

// Backend hooks for non-CPU storage (set by the CUDA backend when it is compiled in).
struct DeviceHooks {
  void* (*alloc)(size_t bytes) = nullptr;  // returns nullptr on failure
  void (*free)(void* p) = nullptr;
  // kind: 0 host->device, 1 device->host, 2 device->device. Throws mvq::Error on failure.
  void (*copy)(void* dst, const void* src, size_t bytes, int kind) = nullptr;
  void (*fill)(void* dst, unsigned char byte, size_t bytes) = nullptr;
  bool (*available)(std::string* why) = nullptr;
};
void set_device_hooks(Device d, const DeviceHooks& h);
const DeviceHooks* device_hooks(Device d);
// True when a working device of that kind is present; *why says why not.
bool device_available(Device d, std::string* why);

}  // namespace mvq
