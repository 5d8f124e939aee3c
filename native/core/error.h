// Errors raised by the core and the kernels. The N-API layer turns them into JS errors:
// kind Type -> TypeError, Range -> RangeError, Runtime -> MergeVQError with `code`.
// Nothing in native/ may abort or exit; every failure is one of these.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace mvq {

enum class ErrorKind { Type, Range, Runtime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string code, const std::string& msg)
      : std::runtime_error(msg), kind_(kind), code_(std::move(code)) {}
  ErrorKind kind() const { return kind_; }
  const std::string& code() const { return code_; }

 private:
  ErrorKind kind_;
  std::string code_;
};

namespace detail {
inline void cat(std::ostringstream&) {}
template <class T, class... R>
void cat(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  cat(os, rest...);
}
template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  cat(os, a...);
  return os.str();
}
}  // namespace detail

template <class... A>
[[noreturn]] void throw_type(const A&... a) {
  throw Error(ErrorKind::Type, "ERR_INVALID_ARG_TYPE", detail::str(a...));
}
template <class... A>
[[noreturn]] void throw_range(const A&... a) {
  throw Error(ErrorKind::Range, "ERR_OUT_OF_RANGE", detail::str(a...));
}
template <class... A>
[[noreturn]] void throw_runtime(const char* code, const A&... a) {
  throw Error(ErrorKind::Runtime, code, detail::str(a...));
}

}  // namespace mvq

// One-line argument checks. The message should name the argument and the expected value.
#define MVQ_CHECK_TYPE(cond, ...) \
  do {                            \
    if (!(cond)) ::mvq::throw_type(__VA_ARGS__); \
  } while (0)
#define MVQ_CHECK_RANGE(cond, ...) \
  do {                             \
    if (!(cond)) ::mvq::throw_range(__VA_ARGS__); \
  } while (0)
