// The addon's entry point: tensors, op dispatch (sync and async), runtime settings.
#include "addon.h"

#include <cstring>
#include <new>

#include "../core/parallel.h"

namespace mvq_napi {

using mvq::Tensor;

AddonData* data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

Napi::Error make_mvq_error(Napi::Env env, const std::string& code, const std::string& msg) {
  AddonData* d = data(env);
  Napi::Object err;
  if (d && !d->error_ctor.IsEmpty()) {
    err = d->error_ctor.New({Napi::String::New(env, msg), Napi::String::New(env, code)});
  } else {
    err = Napi::Error::New(env, msg).Value();
    err.Set("name", "MergeVQError");
  }
  err.Set("code", code);
  return Napi::Error(env, err);
}

Napi::Error to_js_error(Napi::Env env, const std::exception& e) {
  if (auto me = dynamic_cast<const mvq::Error*>(&e)) {
    switch (me->kind()) {
      case mvq::ErrorKind::Type: {
        auto err = Napi::TypeError::New(env, me->what());
        err.Set("code", me->code());
        return err;
      }
      case mvq::ErrorKind::Range: {
        auto err = Napi::RangeError::New(env, me->what());
        err.Set("code", me->code());
        return err;
      }
      default: return make_mvq_error(env, me->code(), me->what());
    }
  }
  if (dynamic_cast<const std::bad_alloc*>(&e)) return make_mvq_error(env, "ERR_ALLOC", "out of memory");
  return make_mvq_error(env, "ERR_INTERNAL", std::string("internal error: ") + e.what());
}

// ---------------------------------------------------------------- tensors

static mvq::DType parse_dtype(Napi::Value v, const char* what) {
  if (!v.IsString()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a dtype string ('float32', 'float16', 'bfloat16', 'int32', 'int64', 'uint8')");
  mvq::DType dt;
  std::string s = v.As<Napi::String>();
  if (!mvq::dtype_from_name(s, &dt))
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be one of 'float32', 'float16', 'bfloat16', 'int32', 'int64', 'uint8'; got '" + s + "'");
  return dt;
}

static mvq::Shape parse_shape(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsArray()) throw Napi::TypeError::New(env, std::string(what) + " must be an array of non-negative integers");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > 16) throw Napi::RangeError::New(env, std::string(what) + " has more than 16 dimensions");
  mvq::Shape s(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + " must be an array of non-negative integers");
    double d = e.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)) || d > 9.0e15)
      throw Napi::RangeError::New(env, std::string(what) + "[" + std::to_string(i) + "] must be a non-negative integer, got " + e.ToString().Utf8Value());
    s[i] = static_cast<int64_t>(d);
  }
  return s;
}

static mvq::Device parse_device(Napi::Value v, const char* what) {
  if (v.IsUndefined()) return mvq::Device::CPU;
  std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "cpu") return mvq::Device::CPU;
  if (s == "cuda") return mvq::Device::CUDA;
  throw Napi::TypeError::New(v.Env(), std::string(what) + " must be 'cpu' or 'cuda'");
}

Napi::Function JsTensor::Init(Napi::Env env) {
  return DefineClass(env, "Tensor",
                     {InstanceAccessor<&JsTensor::Shape>("shape"), InstanceAccessor<&JsTensor::Strides>("strides"),
                      InstanceAccessor<&JsTensor::DType>("dtype"), InstanceAccessor<&JsTensor::Device>("device"),
                      InstanceAccessor<&JsTensor::Numel>("numel"), InstanceAccessor<&JsTensor::IsContiguous>("isContiguous"),
                      InstanceAccessor<&JsTensor::StorageId>("storageId"),
                      InstanceAccessor<&JsTensor::Disposed>("disposed"), InstanceMethod<&JsTensor::Dispose>("dispose"),
                      InstanceMethod<&JsTensor::Read>("read"), InstanceMethod<&JsTensor::To>("to"),
                      InstanceMethod<&JsTensor::View>("view"), InstanceMethod<&JsTensor::Permute>("permute"),
                      InstanceMethod<&JsTensor::Narrow>("narrow"), InstanceMethod<&JsTensor::Select>("select"),
                      InstanceMethod<&JsTensor::Contiguous>("contiguous")});
}

// new Tensor(data: ArrayBufferView, shape: number[], dtype: string, device?: 'cpu'|'cuda')
// Copies `data`; its byte length must equal numel(shape) * dtype size.
// new Tensor(null, shape, dtype, device) allocates without initializing (poisoned in poison mode).
JsTensor::JsTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsTensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() == 1 && info[0].IsExternal()) {
    t_ = *info[0].As<Napi::External<Tensor>>().Data();
    account(env);
    return;
  }
  guarded(env, [&] {
    mvq::Shape shape = parse_shape(info[1], "shape");
    mvq::DType dt = parse_dtype(info[2], "dtype");
    mvq::Device dev = parse_device(info[3], "device");
    int64_t n = mvq::shape_numel(shape);
    size_t bytes = static_cast<size_t>(n) * mvq::dtype_size(dt);
    if (info[0].IsNull() || info[0].IsUndefined()) {
      t_ = mvq::empty(shape, dt, dev);
      return 0;
    }
    if (!info[0].IsTypedArray() && !info[0].IsDataView())
      throw Napi::TypeError::New(env, "data must be a TypedArray or DataView (or null to allocate)");
    const uint8_t* src;
    size_t len;
    if (info[0].IsTypedArray()) {
      auto ta = info[0].As<Napi::TypedArray>();
      src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      len = ta.ByteLength();
    } else {
      auto dv = info[0].As<Napi::DataView>();
      src = static_cast<const uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
      len = dv.ByteLength();
    }
    if (len != bytes)
      throw Napi::RangeError::New(env, "data has " + std::to_string(len) + " bytes but shape " + mvq::shape_to_string(shape) + " of " +
                                           mvq::dtype_name(dt) + " needs " + std::to_string(bytes));
    Tensor host = mvq::empty(shape, dt, mvq::Device::CPU);
    if (bytes) std::memcpy(host.raw(), src, bytes);
    t_ = dev == mvq::Device::CPU ? host : mvq::to_device(host, dev);
    return 0;
  });
  account(env);
}

void JsTensor::account(Napi::Env env) {
  accounted_ = t_.defined() && t_.device() == mvq::Device::CPU ? static_cast<int64_t>(t_.nbytes()) : 0;
  if (accounted_) Napi::MemoryManagement::AdjustExternalMemory(env, accounted_);
}

void JsTensor::Finalize(Napi::Env env) {
  if (accounted_) Napi::MemoryManagement::AdjustExternalMemory(env, -accounted_);
  accounted_ = 0;
}

const Tensor& JsTensor::live(Napi::Env env) const {
  if (!t_.defined()) throw make_mvq_error(env, "ERR_DISPOSED", "tensor was disposed");
  return t_;
}

// dispose(): drops this handle's reference to the storage now (the memory is freed once no view
// or running job holds it). Later use of the handle throws.
Napi::Value JsTensor::Dispose(const Napi::CallbackInfo& info) {
  Finalize(info.Env());
  t_ = Tensor();
  return info.Env().Undefined();
}
Napi::Value JsTensor::Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !t_.defined()); }

Napi::Object JsTensor::Wrap(Napi::Env env, Tensor t) {
  Tensor tmp = std::move(t);
  return data(env)->tensor_ctor.New({Napi::External<Tensor>::New(env, &tmp)});
}

static Napi::Array shape_array(Napi::Env env, const mvq::Shape& s) {
  Napi::Array a = Napi::Array::New(env, s.size());
  for (size_t i = 0; i < s.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(s[i])));
  return a;
}

Napi::Value JsTensor::Shape(const Napi::CallbackInfo& info) { return shape_array(info.Env(), live(info.Env()).shape()); }
Napi::Value JsTensor::Strides(const Napi::CallbackInfo& info) { return shape_array(info.Env(), live(info.Env()).strides()); }
Napi::Value JsTensor::DType(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), mvq::dtype_name(live(info.Env()).dtype())); }
Napi::Value JsTensor::Device(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), mvq::device_name(live(info.Env()).device())); }
Napi::Value JsTensor::Numel(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(live(info.Env()).numel())); }
Napi::Value JsTensor::IsContiguous(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), live(info.Env()).is_contiguous()); }
Napi::Value JsTensor::StorageId(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(live(info.Env()).storage().get()) & 0xFFFFFFFFFFFFull));
}

// read(): a fresh ArrayBuffer holding the tensor's elements in dense row-major order.
Napi::Value JsTensor::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  return guarded(env, [&]() -> Napi::Value {
    Tensor c = t_.device() == mvq::Device::CPU ? t_.contiguous() : mvq::to_device(t_, mvq::Device::CPU);
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, c.nbytes());
    if (c.nbytes()) std::memcpy(buf.Data(), c.raw(), c.nbytes());
    return buf;
  });
}

Napi::Value JsTensor::To(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  mvq::Device dev = parse_device(info[0], "device");
  return guarded(env, [&]() -> Napi::Value {
    if (dev == t_.device()) return info.This();
    return Wrap(env, mvq::to_device(t_, dev));
  });
}

Napi::Value JsTensor::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "shape must be an array of integers (one may be -1)");
  Napi::Array a = info[0].As<Napi::Array>();
  mvq::Shape s(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) throw Napi::TypeError::New(env, "shape must be an array of integers (one may be -1)");
    s[i] = e.As<Napi::Number>().Int64Value();
  }
  return guarded(env, [&]() -> Napi::Value { return Wrap(env, t_.view(s)); });
}

Napi::Value JsTensor::Permute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "dims must be an array of integers");
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<int> d(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) d[i] = a.Get(i).As<Napi::Number>().Int32Value();
  return guarded(env, [&]() -> Napi::Value { return Wrap(env, t_.permute(d)); });
}

static int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an integer");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d))) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an integer");
  return static_cast<int64_t>(d);
}

Napi::Value JsTensor::Narrow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  int64_t d = int_arg(info, 0, "dim"), start = int_arg(info, 1, "start"), len = int_arg(info, 2, "length");
  return guarded(env, [&]() -> Napi::Value { return Wrap(env, t_.narrow(static_cast<int>(d), start, len)); });
}

Napi::Value JsTensor::Select(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  int64_t d = int_arg(info, 0, "dim"), index = int_arg(info, 1, "index");
  return guarded(env, [&]() -> Napi::Value { return Wrap(env, t_.select(static_cast<int>(d), index)); });
}

Napi::Value JsTensor::Contiguous(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  return guarded(env, [&]() -> Napi::Value {
    Tensor c = t_.contiguous();
    if (c.storage() == t_.storage()) return info.This();
    return Wrap(env, c);
  });
}

const Tensor& unwrap_tensor(Napi::Value v, const std::string& what) {
  Napi::Env env = v.Env();
  AddonData* d = data(env);
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(d->tensor_ctor.Value()))
    throw Napi::TypeError::New(env, what + " must be a mergevq Tensor");
  const Tensor& t = JsTensor::Unwrap(v.As<Napi::Object>())->tensor();
  if (!t.defined()) throw make_mvq_error(env, "ERR_DISPOSED", what + " was disposed (dispose() ran before this call used it)");
  return t;
}

mvq::Attrs to_attrs(Napi::Value v) {
  mvq::Attrs a;
  if (v.IsUndefined() || v.IsNull()) return a;
  Napi::Env env = v.Env();
  if (!v.IsObject() || v.IsArray()) throw Napi::TypeError::New(env, "options must be a plain object");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).ToString();
    Napi::Value x = o.Get(k);
    if (x.IsUndefined()) continue;
    if (x.IsBoolean()) {
      a.set(k, x.As<Napi::Boolean>().Value());
    } else if (x.IsNumber()) {
      double d = x.As<Napi::Number>().DoubleValue();
      if (d == static_cast<double>(static_cast<int64_t>(d)) && d > -9.0e15 && d < 9.0e15) a.set(k, static_cast<int64_t>(d));
      else a.set(k, d);
    } else if (x.IsBigInt()) {
      bool lossless;
      a.set(k, x.As<Napi::BigInt>().Int64Value(&lossless));
    } else if (x.IsString()) {
      a.set(k, x.As<Napi::String>().Utf8Value());
    } else if (x.IsArray()) {
      Napi::Array arr = x.As<Napi::Array>();
      std::vector<double> ds(arr.Length());
      bool all_int = true;
      for (uint32_t j = 0; j < arr.Length(); ++j) {
        Napi::Value e = arr.Get(j);
        if (!e.IsNumber()) throw Napi::TypeError::New(env, "option '" + k + "' must be an array of numbers");
        ds[j] = e.As<Napi::Number>().DoubleValue();
        if (ds[j] != static_cast<double>(static_cast<int64_t>(ds[j]))) all_int = false;
      }
      if (all_int) a.set(k, std::vector<int64_t>(ds.begin(), ds.end()));
      else a.set(k, ds);
    } else {
      throw Napi::TypeError::New(env, "option '" + k + "' must be a boolean, number, string or array of numbers");
    }
  }
  return a;
}

// ---------------------------------------------------------------- op dispatch

struct OpCall {
  std::string name;
  std::vector<Tensor> inputs;
  mvq::Attrs attrs;
};

static OpCall parse_call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "op name must be a string");
  OpCall c;
  c.name = info[0].As<Napi::String>().Utf8Value();
  if (!info[1].IsArray()) throw Napi::TypeError::New(env, c.name + ": inputs must be an array of tensors");
  Napi::Array arr = info[1].As<Napi::Array>();
  c.inputs.resize(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value v = arr.Get(i);
    if (v.IsNull() || v.IsUndefined()) continue;  // optional input
    c.inputs[i] = unwrap_tensor(v, c.name + ": input " + std::to_string(i));
  }
  c.attrs = to_attrs(info[2]);
  return c;
}

static Napi::Array wrap_all(Napi::Env env, std::vector<Tensor>& out) {
  Napi::Array a = Napi::Array::New(env, out.size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i].defined()) a.Set(static_cast<uint32_t>(i), JsTensor::Wrap(env, out[i]));
    else a.Set(static_cast<uint32_t>(i), env.Null());
  }
  return a;
}

// runOp(name, inputs, attrs): Tensor[]
static Napi::Value RunOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpCall c = parse_call(info);
  return guarded(env, [&]() -> Napi::Value {
    auto out = mvq::run_op(c.name, std::move(c.inputs), std::move(c.attrs));
    return wrap_all(env, out);
  });
}

// One op on the libuv pool. The inputs are held by value (shared storage), so JS dropping its
// handles while the job runs cannot free the memory under it.
class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, OpCall call)
      : Napi::AsyncWorker(env, "mergevq.op"), call_(std::move(call)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      out_ = mvq::run_op(call_.name, std::move(call_.inputs), std::move(call_.attrs));
    } catch (const mvq::Error& e) {
      kind_ = e.kind();
      code_ = e.code();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = "ERR_ALLOC";
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = "ERR_INTERNAL";
      SetError(std::string("internal error: ") + e.what());
    } catch (...) {
      code_ = "ERR_INTERNAL";
      SetError("unknown native exception");
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(wrap_all(env, out_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    Napi::Env env = Env();
    mvq::Error me(kind_, code_, e.Message());
    deferred_.Reject(to_js_error(env, me).Value());
  }

 private:
  OpCall call_;
  std::vector<Tensor> out_;
  mvq::ErrorKind kind_ = mvq::ErrorKind::Runtime;
  std::string code_ = "ERR_INTERNAL";
  Napi::Promise::Deferred deferred_;
};

// runOpAsync(name, inputs, attrs): Promise<Tensor[]>
static Napi::Value RunOpAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpCall c = parse_call(info);
  if (!mvq::find_op(c.name)) throw Napi::TypeError::New(env, "unknown op '" + c.name + "'");
  auto* w = new OpWorker(env, std::move(c));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// ---------------------------------------------------------------- runtime settings

static Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "setNumThreads: n must be an integer >= 1");
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (!(n >= 1 && n <= 1024) || n != static_cast<int>(n)) throw Napi::RangeError::New(env, "setNumThreads: n must be an integer in [1, 1024]");
  mvq::set_num_threads(static_cast<int>(n));
  return env.Undefined();
}
static Napi::Value GetNumThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), mvq::num_threads()); }
static Napi::Value SetPoison(const Napi::CallbackInfo& info) {
  mvq::set_poison(info[0].ToBoolean().Value());
  return info.Env().Undefined();
}
static Napi::Value Supports(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "supports: op must be a string");
  mvq::Device d = parse_device(info[1], "device");
  return Napi::Boolean::New(env, mvq::supports(info[0].As<Napi::String>(), d));
}
static Napi::Value ListOps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto names = mvq::op_names();
  Napi::Array a = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); ++i) a.Set(static_cast<uint32_t>(i), names[i]);
  return a;
}
// The option keys an op accepts (its MVQ_OP_ATTRS declaration); TypeError for an unknown op.
static Napi::Value OpAttrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "opAttrs: op must be a string");
  const mvq::OpEntry* e = mvq::find_op(info[0].As<Napi::String>());
  if (!e) throw Napi::TypeError::New(env, "opAttrs: unknown op '" + info[0].As<Napi::String>().Utf8Value() + "'");
  Napi::Array a = Napi::Array::New(env, e->attrs.size());
  for (size_t i = 0; i < e->attrs.size(); ++i) a.Set(static_cast<uint32_t>(i), e->attrs[i]);
  return a;
}
static Napi::Value DeviceAvailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  mvq::Device d = parse_device(info[0], "device");
  std::string why;
  bool ok = mvq::device_available(d, &why);
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", ok);
  o.Set("reason", ok ? env.Null() : Napi::String::New(env, why));
  return o;
}
static Napi::Value ReleaseCpuCache(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(mvq::release_cpu_cache()));
}
static Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorClass: expected a constructor");
  data(info.Env())->error_ctor = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}
static Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cuda", mvq::device_hooks(mvq::Device::CUDA) != nullptr);
#if defined(__AVX512F__)
  o.Set("simd", "avx512");
#elif defined(__AVX2__)
  o.Set("simd", "avx2");
#else
  o.Set("simd", "scalar");
#endif
  o.Set("threads", mvq::num_threads());
  return o;
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* d = new AddonData();
  env.SetInstanceData<AddonData>(d);  // deleted with the environment
  Napi::Function tensor = JsTensor::Init(env);
  d->tensor_ctor = Napi::Persistent(tensor);
  exports.Set("Tensor", tensor);
  exports.Set("runOp", Napi::Function::New(env, RunOp, "runOp"));
  exports.Set("runOpAsync", Napi::Function::New(env, RunOpAsync, "runOpAsync"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads, "getNumThreads"));
  exports.Set("setPoison", Napi::Function::New(env, SetPoison, "setPoison"));
  exports.Set("supports", Napi::Function::New(env, Supports, "supports"));
  exports.Set("listOps", Napi::Function::New(env, ListOps, "listOps"));
  exports.Set("opAttrs", Napi::Function::New(env, OpAttrs, "opAttrs"));
  exports.Set("deviceAvailable", Napi::Function::New(env, DeviceAvailable, "deviceAvailable"));
  exports.Set("releaseCpuCache", Napi::Function::New(env, ReleaseCpuCache, "releaseCpuCache"));
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  return exports;
}

}  // namespace mvq_napi

static Napi::Object InitAll(Napi::Env env, Napi::Object exports) { return mvq_napi::Init(env, exports); }
NODE_API_MODULE(mergevq, InitAll)
