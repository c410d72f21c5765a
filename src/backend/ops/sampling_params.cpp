// The messages of SamplingParams::validate (the header stays free of fmt so
// that nvcc can compile it). No parameter is named here.
#include "backend/ops/sampling_params.h"

#include "core/error.h"

namespace kite::detail {

void invalid_sampling_param(const std::string& source, const char* field, float value, const char* expected) {
  fail(source, field, "{} is invalid; expected {}", value, expected);
}

void invalid_sampling_param(const std::string& source, const char* field, int32_t value, const char* expected) {
  fail(source, field, "{} is invalid; expected {}", value, expected);
}

}  // namespace kite::detail
