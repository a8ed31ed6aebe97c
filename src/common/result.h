// Result<T>: the error-or-value type every Tartarus component returns.
// Exceptions never cross a component boundary; failures travel as Error values
// that carry a code (for programs) and a message with context (for people).
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace tartarus {

enum class ErrorCode {
  kInvalidArgument,     // bad input from a user, file or peer
  kNotFound,            // a named thing does not exist
  kAlreadyExists,       //
  kPermissionDenied,    //
  kFailedPrecondition,  // the host or state is not ready (missing binary, no KVM, ...)
  kResourceExhausted,   // a bound was hit (frame size, concurrency, disk)
  kTimeout,             //
  kCancelled,           //
  kProtocol,            // the peer broke the wire protocol
  kIo,                  // an OS call failed
  kInternal,            // a bug in Tartarus
};

std::string_view ErrorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;

  // Prefixes context: Error{.., "no such file"}.Context("reading x") -> "reading x: no such file".
  [[nodiscard]] Error Context(std::string_view what) const {
    return Error{code, std::string(what) + ": " + message};
  }
};

template <class T>
class [[nodiscard]] Result : public std::expected<T, Error> {
 public:
  using std::expected<T, Error>::expected;
  Result(std::expected<T, Error> other) : std::expected<T, Error>(std::move(other)) {}
};

using Status = Result<void>;

inline std::unexpected<Error> Fail(ErrorCode code, std::string message) {
  return std::unexpected<Error>(Error{code, std::move(message)});
}
inline std::unexpected<Error> Fail(Error error) { return std::unexpected<Error>(std::move(error)); }

// An Error for a failed OS call: "what: strerror(err)"; the code follows errno.
Error ErrnoError(std::string_view what, int err = errno);
inline std::unexpected<Error> FailErrno(std::string_view what, int err = errno) {
  return std::unexpected<Error>(ErrnoError(what, err));
}

inline Status Ok() { return {}; }

}  // namespace tartarus

// Propagates an error from a Result-returning expression; otherwise yields its value.
#define TRY(expr)                                                   \
  ({                                                                \
    auto&& try_result_ = (expr);                                    \
    if (!try_result_) return ::tartarus::Fail(try_result_.error()); \
    std::move(try_result_).value();                                 \
  })
