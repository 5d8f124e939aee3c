#include "tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>

namespace mvq {

namespace {
std::atomic<bool> g_poison{false};
DeviceHooks g_hooks[2];
}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 1;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::U8: return "uint8";
  }
  return "?";
}

bool dtype_from_name(const std::string& n, DType* out) {
  static const std::pair<const char*, DType> names[] = {
      {"float32", DType::F32}, {"float16", DType::F16}, {"bfloat16", DType::BF16},
      {"int32", DType::I32},   {"int64", DType::I64},   {"uint8", DType::U8}};
  for (auto& p : names)
    if (n == p.first) {
      *out = p.second;
      return true;
    }
  return false;
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

void set_poison(bool on) { g_poison.store(on); }
bool poison() { return g_poison.load(); }

namespace {
// Recycles large CPU blocks by size (best fit within 1/8 waste), up to a byte limit.
class CpuCache {
 public:
  static constexpr size_t kMin = 256 << 10;
  void* take(size_t cap, size_t* got) {
    if (cap < kMin) return nullptr;
    std::lock_guard<std::mutex> lk(m_);
    auto it = free_.lower_bound(cap);
    if (it == free_.end() || it->first > cap + cap / 8) return nullptr;
    void* p = it->second;
    *got = it->first;
    cached_ -= it->first;
    free_.erase(it);
    return p;
  }
  // Returns true when the block was kept.
  bool give(void* p, size_t cap) {
    if (cap < kMin) return false;
    std::lock_guard<std::mutex> lk(m_);
    if (cached_ + cap > limit()) return false;
    free_.emplace(cap, p);
    cached_ += cap;
    return true;
  }
  size_t clear() {
    std::lock_guard<std::mutex> lk(m_);
    size_t n = cached_;
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
    return n;
  }

 private:
  static size_t limit() {
    static const size_t lim = [] {
      const char* e = std::getenv("MERGEVQ_CPU_CACHE_MB");
      long mb = e ? std::strtol(e, nullptr, 10) : 2048;
      return static_cast<size_t>(mb < 0 ? 0 : mb) << 20;
    }();
    return lim;
  }
  std::mutex m_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};
CpuCache& cpu_cache() {
  static CpuCache* c = new CpuCache();  // never destroyed: storages may be freed during exit
  return *c;
}
}  // namespace

size_t release_cpu_cache() { return cpu_cache().clear(); }

Storage::~Storage() {
  if (!ptr) return;
  if (device == Device::CPU) {
    if (!cpu_cache().give(ptr, capacity)) std::free(ptr);
  } else if (g_hooks[static_cast<int>(device)].free) {
    g_hooks[static_cast<int>(device)].free(ptr);
  }
}

std::shared_ptr<Storage> allocate(size_t bytes, Device device) {
  auto st = std::make_shared<Storage>();
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  if (rounded < bytes) throw_runtime("ERR_ALLOC", "allocation of ", bytes, " bytes overflows");
  st->device = device;
  st->bytes = bytes;
  st->capacity = rounded;
  if (device == Device::CPU) {
    size_t got = 0;
    st->ptr = cpu_cache().take(rounded, &got);
    if (st->ptr) {
      st->capacity = got;
    } else {
      st->ptr = std::aligned_alloc(64, rounded);
      if (!st->ptr) {
        cpu_cache().clear();  // give cached blocks back and try once more
        st->ptr = std::aligned_alloc(64, rounded);
      }
      if (!st->ptr) throw_runtime("ERR_ALLOC", "out of memory allocating ", bytes, " bytes on cpu");
    }
    if (g_poison.load()) std::memset(st->ptr, 0xFF, rounded);  // 0xFFFFFFFF is a NaN in f32
  } else {
    std::string why;
    if (!device_available(device, &why)) throw_runtime("ERR_NO_DEVICE", why);
    auto& h = g_hooks[static_cast<int>(device)];
    st->ptr = h.alloc(rounded);
    if (!st->ptr) throw_runtime("ERR_ALLOC", "out of memory allocating ", bytes, " bytes on ", device_name(device));
    if (g_poison.load() && h.fill) h.fill(st->ptr, 0xFF, rounded);
  }
  return st;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) throw_range("tensor size must be >= 0, got shape ", shape_to_string(shape));
    if (s != 0 && n > std::numeric_limits<int64_t>::max() / 16 / s)
      throw_range("tensor shape ", shape_to_string(shape), " has too many elements");
    n *= s;
  }
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != s) return false;
    s *= shape_[i];
  }
  return true;
}

std::string Tensor::shape_str() const { return shape_to_string(shape_); }

Tensor Tensor::view(Shape shape) const {
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw_range("view: only one dimension may be -1, got ", shape_to_string(shape));
      infer = static_cast<int>(i);
    } else {
      if (shape[i] < 0) throw_range("view: invalid shape ", shape_to_string(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel() % known) throw_range("view: cannot view ", shape_str(), " as ", shape_to_string(shape));
    shape[infer] = numel() / known;
  }
  if (shape_numel(shape) != numel()) throw_range("view: cannot view ", shape_str(), " as ", shape_to_string(shape));
  if (!is_contiguous()) throw_range("view: tensor of shape ", shape_str(), " is not contiguous");
  return Tensor(st_, dtype_, shape, contiguous_strides(shape), offset_);
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  if (static_cast<int>(dims.size()) != dim()) throw_range("permute: expected ", dim(), " dims");
  Shape sh(dims.size()), st(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int d = dims[i] < 0 ? dims[i] + dim() : dims[i];
    if (d < 0 || d >= dim() || seen[d]) throw_range("permute: invalid dims");
    seen[d] = true;
    sh[i] = shape_[d];
    st[i] = strides_[d];
  }
  return Tensor(st_, dtype_, sh, st, offset_);
}

Tensor Tensor::narrow(int d, int64_t start, int64_t length) const {
  if (d < 0) d += dim();
  if (d < 0 || d >= dim()) throw_range("narrow: dim ", d, " out of range for shape ", shape_str());
  if (start < 0 || length < 0 || start + length > shape_[d])
    throw_range("narrow: [", start, ", ", start + length, ") out of range for dim ", d, " of shape ", shape_str());
  Shape sh = shape_;
  sh[d] = length;
  return Tensor(st_, dtype_, sh, strides_, offset_ + start * strides_[d]);
}

Tensor Tensor::select(int d, int64_t index) const {
  if (d < 0) d += dim();
  if (d < 0 || d >= dim()) throw_range("select: dim ", d, " out of range for shape ", shape_str());
  if (index < 0) index += shape_[d];
  if (index < 0 || index >= shape_[d]) throw_range("select: index ", index, " out of range for dim ", d, " of shape ", shape_str());
  Shape sh = shape_, st = strides_;
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return Tensor(st_, dtype_, sh, st, offset_ + index * strides_[d]);
}

namespace {
// Copies a strided CPU tensor into dense memory, element size `es`.
void gather_strided(const Tensor& src, char* dst) {
  const size_t es = dtype_size(src.dtype());
  const int nd = src.dim();
  const int64_t n = src.numel();
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  const char* base = static_cast<const char*>(src.raw());
  // Innermost dim copied in a loop; others walked with a counter.
  const int64_t inner = nd ? src.shape()[nd - 1] : 1;
  const int64_t istride = nd ? src.strides()[nd - 1] : 1;
  for (int64_t done = 0; done < n; done += inner) {
    int64_t off = 0;
    for (int d = 0; d < nd - 1; ++d) off += idx[d] * src.strides()[d];
    const char* p = base + off * static_cast<int64_t>(es);
    if (istride == 1) {
      std::memcpy(dst, p, inner * es);
    } else {
      for (int64_t i = 0; i < inner; ++i) std::memcpy(dst + i * es, p + i * istride * static_cast<int64_t>(es), es);
    }
    dst += inner * es;
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < src.shape()[d]) break;
      idx[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  if (device() != Device::CPU) throw_runtime("ERR_UNSUPPORTED", "contiguous(): strided copies are only supported on cpu");
  Tensor out = empty(shape_, dtype_, Device::CPU);
  gather_strided(*this, static_cast<char*>(out.raw()));
  return out;
}

Tensor empty(const Shape& shape, DType dtype, Device device) {
  int64_t n = shape_numel(shape);
  auto st = allocate(static_cast<size_t>(n) * dtype_size(dtype), device);
  return Tensor(st, dtype, shape, contiguous_strides(shape), 0);
}

Tensor zeros(const Shape& shape, DType dtype, Device device) {
  int64_t n = shape_numel(shape);
  auto st = allocate(static_cast<size_t>(n) * dtype_size(dtype), device);
  if (device == Device::CPU) {
    std::memset(st->ptr, 0, st->bytes);
  } else {
    g_hooks[static_cast<int>(device)].fill(st->ptr, 0, st->bytes);
  }
  return Tensor(st, dtype, shape, contiguous_strides(shape), 0);
}

Tensor to_device(const Tensor& src, Device device) {
  if (src.device() == Device::CPU && device == Device::CPU) {
    Tensor c = src.contiguous();
    if (c.storage() != src.storage()) return c;
    Tensor out = empty(src.shape(), src.dtype(), device);
    std::memcpy(out.raw(), c.raw(), c.nbytes());
    return out;
  }
  Tensor c = src.device() == Device::CPU ? src.contiguous() : src;
  if (!c.is_contiguous()) throw_runtime("ERR_UNSUPPORTED", "to_device: source on ", device_name(src.device()), " must be contiguous");
  Tensor out = empty(src.shape(), src.dtype(), device);
  const Device other = device == Device::CPU ? src.device() : device;
  auto& h = g_hooks[static_cast<int>(other)];
  int kind = src.device() == Device::CPU ? 0 : (device == Device::CPU ? 1 : 2);
  if (c.nbytes()) h.copy(out.raw(), c.raw(), c.nbytes(), kind);
  return out;
}

void set_device_hooks(Device d, const DeviceHooks& h) { g_hooks[static_cast<int>(d)] = h; }
const DeviceHooks* device_hooks(Device d) { return g_hooks[static_cast<int>(d)].alloc ? &g_hooks[static_cast<int>(d)] : nullptr; }

bool device_available(Device d, std::string* why) {
  if (d == Device::CPU) return true;
  auto& h = g_hooks[static_cast<int>(d)];
  if (!h.available) {
    if (why) *why = "device 'cuda' is not available: this build of mergevq has no CUDA backend (build it with `npm run build:cuda` where nvcc is installed)";
    return false;
  }
  return h.available(why);
}

}  // namespace mvq
