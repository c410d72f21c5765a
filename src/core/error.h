#pragma once
// Errors raised on bad user input (files, flags, requests). Every message
// names the file (or other source), the field and what was expected, so a
// user can fix it from one line. Internal invariant breaks use KITE_CHECK.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kite {

class Error : public std::runtime_error {
 public:
  // source: a path, "--flag", "request" ...; field: the key/offset/tensor
  // name that is wrong; message: what was found and what was expected.
  Error(std::string source, std::string field, std::string message);
  explicit Error(std::string message);

  const std::string& source() const { return source_; }
  const std::string& field() const { return field_; }

 private:
  std::string source_;
  std::string field_;
};

// Throws kite::Error(source, field, formatted message).
template <typename... Args>
[[noreturn]] void fail(std::string source, std::string field, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(std::move(source), std::move(field), fmt::format(f, std::forward<Args>(args)...));
}

[[noreturn]] void check_failed(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace kite

// Internal invariant (a bug if it fires, not a user error).
#define KITE_CHECK(cond, ...)                                                               \
  do {                                                                                      \
    if (!(cond)) ::kite::check_failed(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__)); \
  } while (0)
