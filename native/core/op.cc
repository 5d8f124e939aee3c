#include "op.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>

namespace mvq {

namespace {
std::map<std::string, OpEntry>& registry() {
  static auto* r = new std::map<std::string, OpEntry>();
  return *r;
}
const char* kind_name(const AttrValue& v) {
  switch (v.index()) {
    case 0: return "boolean";
    case 1: return "integer";
    case 2: return "number";
    case 3: return "string";
    case 4: return "integer array";
    default: return "number array";
  }
}
}  // namespace

const AttrValue& Attrs::get(const std::string& k) const {
  note(k);
  auto it = m_.find(k);
  if (it == m_.end()) throw_type("missing required option '", k, "'");
  return it->second;
}

int64_t Attrs::i(const std::string& k) const {
  const AttrValue& v = get(k);
  if (auto p = std::get_if<int64_t>(&v)) return *p;
  if (auto p = std::get_if<bool>(&v)) return *p ? 1 : 0;
  throw_type("option '", k, "' must be an integer, got ", kind_name(v));
}
int64_t Attrs::i(const std::string& k, int64_t d) const { return has(k) ? i(k) : d; }

double Attrs::f(const std::string& k) const {
  const AttrValue& v = get(k);
  if (auto p = std::get_if<double>(&v)) return *p;
  if (auto p = std::get_if<int64_t>(&v)) return static_cast<double>(*p);
  throw_type("option '", k, "' must be a number, got ", kind_name(v));
}
double Attrs::f(const std::string& k, double d) const { return has(k) ? f(k) : d; }

bool Attrs::b(const std::string& k, bool d) const {
  if (!has(k)) return d;
  const AttrValue& v = get(k);
  if (auto p = std::get_if<bool>(&v)) return *p;
  if (auto p = std::get_if<int64_t>(&v)) return *p != 0;
  throw_type("option '", k, "' must be a boolean, got ", kind_name(v));
}

std::string Attrs::s(const std::string& k, const std::string& d) const {
  if (!has(k)) return d;
  const AttrValue& v = get(k);
  if (auto p = std::get_if<std::string>(&v)) return *p;
  throw_type("option '", k, "' must be a string, got ", kind_name(v));
}

std::vector<int64_t> Attrs::ints(const std::string& k) const {
  const AttrValue& v = get(k);
  if (auto p = std::get_if<std::vector<int64_t>>(&v)) return *p;
  if (auto p = std::get_if<int64_t>(&v)) return {*p};
  if (auto p = std::get_if<std::vector<double>>(&v)) {
    if (p->empty()) return {};
  }
  throw_type("option '", k, "' must be an array of integers, got ", kind_name(v));
}
std::vector<int64_t> Attrs::ints(const std::string& k, const std::vector<int64_t>& d) const { return has(k) ? ints(k) : d; }

std::vector<double> Attrs::floats(const std::string& k, const std::vector<double>& d) const {
  if (!has(k)) return d;
  const AttrValue& v = get(k);
  if (auto p = std::get_if<std::vector<double>>(&v)) return *p;
  if (auto p = std::get_if<std::vector<int64_t>>(&v)) return std::vector<double>(p->begin(), p->end());
  if (auto p = std::get_if<double>(&v)) return {*p};
  throw_type("option '", k, "' must be an array of numbers, got ", kind_name(v));
}

const Tensor& OpArgs::input(size_t i, const char* name) const {
  if (i >= in.size() || !in[i].defined()) throw_type(op, ": missing tensor argument '", name, "'");
  return in[i];
}

const Tensor& OpArgs::input(size_t i, const char* name, DType dtype, int rank) const {
  const Tensor& t = input(i, name);
  if (t.dtype() != dtype)
    throw_type(op, ": '", name, "' must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype()), " ", t.shape_str());
  if (rank >= 0 && t.dim() != rank)
    throw_range(op, ": '", name, "' must have ", rank, " dimensions, got shape ", t.shape_str());
  return t;
}

void register_op(const char* name, Device device, OpFn fn) { registry()[name].fn[static_cast<int>(device)] = fn; }

void declare_attrs(const char* name, std::initializer_list<const char*> keys) {
  auto& v = registry()[name].attrs;
  for (const char* k : keys) v.emplace_back(k);
  std::sort(v.begin(), v.end());
}

namespace {
bool declares(const OpEntry& e, const std::string& k) { return std::binary_search(e.attrs.begin(), e.attrs.end(), k); }
std::string known_list(const OpEntry& e) {
  if (e.attrs.empty()) return "it takes no options";
  std::string s = "known: ";
  for (size_t i = 0; i < e.attrs.size(); ++i) s += (i ? ", " : "") + e.attrs[i];
  return s;
}
// MERGEVQ_CHECK_ATTRS=1 (the test suite sets it): after each op, every key it asked for must be
// declared, so a declaration cannot silently fall behind its implementation.
bool audit_attrs() {
  static const bool on = [] {
    const char* v = std::getenv("MERGEVQ_CHECK_ATTRS");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}
}  // namespace

const OpEntry* find_op(const std::string& name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : &it->second;
}

bool supports(const std::string& name, Device device) {
  const OpEntry* e = find_op(name);
  return e && e->fn[static_cast<int>(device)] != nullptr;
}

std::vector<std::string> op_names() {
  std::vector<std::string> v;
  for (auto& kv : registry()) v.push_back(kv.first);
  return v;
}

std::vector<Tensor> run_op(const std::string& name, std::vector<Tensor> inputs, Attrs attrs) {
  const OpEntry* e = find_op(name);
  if (!e) throw_type("unknown op '", name, "'");
  OpArgs a;
  a.op = name;
  a.in = std::move(inputs);
  a.attrs = std::move(attrs);
  for (const auto& kv : a.attrs.all()) {
    if (kv.first != "device" && !declares(*e, kv.first))
      throw_range(name, ": unknown option '", kv.first, "' (", known_list(*e), ")");
  }
  bool have = false;
  for (size_t i = 0; i < a.in.size(); ++i) {
    if (!a.in[i].defined()) continue;
    if (!have) {
      a.device = a.in[i].device();
      have = true;
    } else if (a.in[i].device() != a.device) {
      throw_type(name, ": all tensors must be on one device, input 0 is on ", device_name(a.device), " and input ", i,
                 " on ", device_name(a.in[i].device()));
    }
  }
  if (!have) {
    std::string d = a.attrs.s("device", "cpu");
    if (d == "cuda") a.device = Device::CUDA;
    else if (d != "cpu") throw_type(name, ": option 'device' must be 'cpu' or 'cuda', got '", d, "'");
  }
  OpFn fn = e->fn[static_cast<int>(a.device)];
  if (!fn) {
    std::string why;
    if (!device_available(a.device, &why)) throw_runtime("ERR_NO_DEVICE", why);
    throw_runtime("ERR_UNSUPPORTED", "op '", name, "' has no ", device_name(a.device), " implementation");
  }
  if (!audit_attrs()) return fn(a);
  std::vector<std::string> reads;
  a.attrs.record_reads(&reads);
  std::vector<Tensor> out = fn(a);
  a.attrs.record_reads(nullptr);
  for (const std::string& k : reads) {
    if (k != "device" && !declares(*e, k))
      throw_runtime("ERR_INTERNAL", name, ": reads option '", k, "', which its MVQ_OP_ATTRS declaration lacks");
  }
  return out;
}

}  // namespace mvq
