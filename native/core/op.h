// Op registry: every op has a name, a CPU implementation and, where written, a CUDA one.
//
// An op takes a list of input tensors and a set of named attributes and returns its outputs as
// new tensors (ops never write into their inputs unless documented as in-place, e.g. optimizer
// steps). Implementations validate their own arguments with MVQ_CHECK_TYPE / MVQ_CHECK_RANGE and
// name the argument in the message: "gemm: a must be float32 [M, K], got int32 [3, 4]".
//
// Adding an op: write the kernel in native/cpu/<family>.cc (and native/cuda/<family>.cu), and
// register it at the bottom of that file with MVQ_REGISTER_OP.
#pragma once
#include <initializer_list>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "tensor.h"

namespace mvq {

using AttrValue = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>>;

class Attrs {
 public:
  void set(const std::string& k, AttrValue v) { m_[k] = std::move(v); }
  bool has(const std::string& k) const {
    note(k);
    return m_.count(k) != 0;
  }
  int64_t i(const std::string& k) const;
  int64_t i(const std::string& k, int64_t dflt) const;
  double f(const std::string& k) const;
  double f(const std::string& k, double dflt) const;
  bool b(const std::string& k, bool dflt) const;
  std::string s(const std::string& k, const std::string& dflt) const;
  std::vector<int64_t> ints(const std::string& k) const;
  std::vector<int64_t> ints(const std::string& k, const std::vector<int64_t>& dflt) const;
  std::vector<double> floats(const std::string& k, const std::vector<double>& dflt) const;
  const std::map<std::string, AttrValue>& all() const { return m_; }
  // Audit support (MERGEVQ_CHECK_ATTRS=1): every key the op asks for is appended to `sink`.
  void record_reads(std::vector<std::string>* sink) const { sink_ = sink; }

 private:
  const AttrValue& get(const std::string& k) const;
  void note(const std::string& k) const {
    if (sink_) sink_->push_back(k);
  }
  std::map<std::string, AttrValue> m_;
  mutable std::vector<std::string>* sink_ = nullptr;
};

struct OpArgs {
  std::string op;
  std::vector<Tensor> in;
  Attrs attrs;
  Device device = Device::CPU;

  // Input i, checked: defined, dtype, and rank (rank < 0 = any). Messages name the op and `name`.
  const Tensor& input(size_t i, const char* name) const;
  const Tensor& input(size_t i, const char* name, DType dtype, int rank = -1) const;
  bool has_input(size_t i) const { return i < in.size() && in[i].defined(); }
};

using OpFn = std::vector<Tensor> (*)(const OpArgs&);

struct OpEntry {
  OpFn fn[2] = {nullptr, nullptr};  // indexed by Device
  // The option keys the op reads (declared with MVQ_OP_ATTRS; none when not declared). run_op
  // refuses any other key (besides "device") before the op runs.
  std::vector<std::string> attrs;
};

void register_op(const char* name, Device device, OpFn fn);
void declare_attrs(const char* name, std::initializer_list<const char*> keys);
const OpEntry* find_op(const std::string& name);
bool supports(const std::string& name, Device device);
std::vector<std::string> op_names();

// Dispatches to the implementation for the inputs' device (all defined inputs must share one;
// with no tensor inputs, attrs "device" picks it). Throws TypeError for an unknown op or mixed devices.
std::vector<Tensor> run_op(const std::string& name, std::vector<Tensor> inputs, Attrs attrs);

struct OpRegistrar {
  OpRegistrar(const char* name, Device device, OpFn fn) { register_op(name, device, fn); }
};
struct OpAttrsRegistrar {
  OpAttrsRegistrar(const char* name, std::initializer_list<const char*> keys) { declare_attrs(name, keys); }
};

}  // namespace mvq

#define MVQ_CONCAT_(a, b) a##b
#define MVQ_CONCAT(a, b) MVQ_CONCAT_(a, b)
#define MVQ_REGISTER_OP(name, device, fn) \
  static ::mvq::OpRegistrar MVQ_CONCAT(mvq_op_registrar_, __COUNTER__)(name, device, fn)
// The option keys op `name` accepts (once per op, beside its CPU registration), e.g.
// MVQ_OP_ATTRS("softmax", "dim"). An op without a declaration accepts no options.
#define MVQ_OP_ATTRS(name, ...) \
  static ::mvq::OpAttrsRegistrar MVQ_CONCAT(mvq_op_attrs_, __COUNTER__)(name, {__VA_ARGS__})
