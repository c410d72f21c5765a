#pragma once
// The parameters of one request's sampling distribution, from the request
// (server JSON, CLI flags, generation_config.json) down to the op: the engine
// and generate() put them in each ops::SampleRow as they are, the CPU kernel
// reads them there and the CUDA kernel reads them in its SampleRowArgs (a
// plain copy of this struct). Validation lives here, once.
//
// Adding a sampling parameter touches 4 files:
//   1. this one: the field (its default is "off") and its check in validate();
//      greedy() / has_penalties() when it changes what they mean;
//   2. backend/cpu/sample_math.cpp: the CPU math (the reference);
//   3. backend/cuda/sample.cu: the CUDA kernel (its SampleRowArgs carries this
//      struct whole, so the args and their packing do not change);
//   4. server/openai_protocol.cpp: the request's JSON field (parse_sampling).
// Plus a case in tests/backend/sample_test.cpp (CPU against a float64
// reference; cuda_sample_test.cpp compares CUDA with the CPU on the GPU
// machine) and, when the CLI should take it, a flag in
// tools/kite/cmd_generate.cpp.
//
// Kept nvcc-compilable (the CUDA kernel args embed it): standard headers
// only, no fmt; the messages are formatted in sampling_params.cpp.
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

namespace kite {

namespace detail {
// Throw kite::Error(source, field, "<value> is invalid; expected <expected>").
[[noreturn]] void invalid_sampling_param(const std::string& source, const char* field, float value,
                                         const char* expected);
[[noreturn]] void invalid_sampling_param(const std::string& source, const char* field, int32_t value,
                                         const char* expected);
}  // namespace detail

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int32_t top_k = 0;                // 0 or -1 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off; keep tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // HF/CTRL style over prompt and output tokens; 1 = off
  float presence_penalty = 0.0f;    // OpenAI style over output tokens
  float frequency_penalty = 0.0f;   // OpenAI style over output tokens
  std::optional<uint64_t> seed;     // unseeded requests draw a seed from the system (not read by the ops)

  // Throws kite::Error(source, field, ...) naming the OpenAI field when a
  // value is out of range.
  void validate(const std::string& source) const;
  bool greedy() const { return temperature == 0.0f; }
  // Whether the penalty tokens of a row (prompt and output ids) change its logits.
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

inline void SamplingParams::validate(const std::string& source) const {
  using detail::invalid_sampling_param;
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    invalid_sampling_param(source, "temperature", temperature, "a value >= 0 (0 = greedy)");
  if (top_k < -1) invalid_sampling_param(source, "top_k", top_k, "-1 or 0 (off) or a positive count");
  if (!(top_p > 0.0f && top_p <= 1.0f)) invalid_sampling_param(source, "top_p", top_p, "a value in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) invalid_sampling_param(source, "min_p", min_p, "a value in [0, 1]");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    invalid_sampling_param(source, "repetition_penalty", repetition_penalty, "a value > 0 (1 = off)");
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    invalid_sampling_param(source, "presence_penalty", presence_penalty, "a value in [-2, 2]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    invalid_sampling_param(source, "frequency_penalty", frequency_penalty, "a value in [-2, 2]");
}

}  // namespace kite
