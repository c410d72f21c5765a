#include "core/error.h"

namespace kite {

namespace {
std::string compose(const std::string& source, const std::string& field, const std::string& message) {
  std::string out;
  if (!source.empty()) out += source + ": ";
  if (!field.empty()) out += field + ": ";
  out += message;
  return out;
}
}  // namespace

Error::Error(std::string source, std::string field, std::string message)
    : std::runtime_error(compose(source, field, message)), source_(std::move(source)), field_(std::move(field)) {}

Error::Error(std::string message) : std::runtime_error(std::move(message)) {}

void check_failed(const char* file, int line, const char* cond, const std::string& msg) {
  throw std::logic_error(fmt::format("internal error at {}:{}: check '{}' failed: {}", file, line, cond, msg));
}

}  // namespace kite
