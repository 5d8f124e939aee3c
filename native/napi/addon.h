// Shared pieces of the N-API layer: per-environment state, tensor wrapping and error conversion.
#pragma once
#include <napi.h>

#include "../core/op.h"
#include "../core/tensor.h"

namespace mvq_napi {

// Per-environment addon state (one per main thread or worker_thread), freed with the environment.
struct AddonData {
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference error_ctor;  // JS MergeVQError class, set by lib/native.ts
};

class JsTensor : public Napi::ObjectWrap<JsTensor> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit JsTensor(const Napi::CallbackInfo& info);
  static Napi::Object Wrap(Napi::Env env, mvq::Tensor t);
  const mvq::Tensor& tensor() const { return t_; }
  void Finalize(Napi::Env env) override;

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value Strides(const Napi::CallbackInfo& info);
  Napi::Value DType(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value Numel(const Napi::CallbackInfo& info);
  Napi::Value IsContiguous(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Permute(const Napi::CallbackInfo& info);
  Napi::Value Narrow(const Napi::CallbackInfo& info);
  Napi::Value Select(const Napi::CallbackInfo& info);
  Napi::Value Contiguous(const Napi::CallbackInfo& info);
  Napi::Value StorageId(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  // Tells V8 how much native memory this handle keeps alive, so garbage collection runs often
  // enough for large tensors to be freed (and recycled by the allocation cache) promptly.
  void account(Napi::Env env);
  const mvq::Tensor& live(Napi::Env env) const;
  mvq::Tensor t_;
  int64_t accounted_ = 0;
};

// Converts a core error (or any C++ exception) into the right JS error object.
Napi::Error to_js_error(Napi::Env env, const std::exception& e);
Napi::Error make_mvq_error(Napi::Env env, const std::string& code, const std::string& msg);
AddonData* data(Napi::Env env);

// Reads a JS value that must be a native tensor; names `what` in the TypeError.
const mvq::Tensor& unwrap_tensor(Napi::Value v, const std::string& what);
mvq::Attrs to_attrs(Napi::Value v);

// Runs body, turning any C++ exception into a thrown JS error.
template <class F>
auto guarded(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw to_js_error(env, e);
  } catch (...) {
    throw make_mvq_error(env, "ERR_INTERNAL", "unknown native exception");
  }
}

}  // namespace mvq_napi
